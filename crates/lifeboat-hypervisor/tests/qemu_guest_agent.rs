//! Freezing a guest through its qemu-guest-agent (app-consistent cuts): a frozen guest's
//! writes wait until the thaw; without an agent answering, the freeze says so in time
//! and leaves nothing to thaw.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::Lab;
use lifeboat_hypervisor::Hypervisor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_freezes_and_thaws_and_a_guest_without_agent_is_named() -> Result<()> {
    let mut lab = Lab::boot("qga").await?;
    let limit = Duration::from_secs(20);
    // qemu-ga may still be starting right after boot: it answers within the limit.
    let frozen = lab.driver.freeze_guest(&lab.vm, limit).await?;
    assert!(
        frozen.is_some_and(|n| n >= 1),
        "froze {frozen:?} filesystems"
    );
    // While frozen, a write to /data blocks: the shell does not finish it.
    let write = lab.sh("echo frozen > /data/f && sync");
    let blocked = tokio::time::timeout(Duration::from_secs(3), write).await;
    assert!(blocked.is_err(), "a write finished on a frozen filesystem");
    lab.driver.thaw_guest(&lab.vm, limit).await?;
    // Thawed: writes go through again (the blocked one first).
    lab.sh("echo thawed > /data/t && sync").await?;
    assert_eq!(lab.sh("cat /data/t").await?.trim(), "thawed");
    // Thawing again is a no-op.
    lab.driver.thaw_guest(&lab.vm, limit).await?;

    // The guest agent dies while the guest is frozen: the thaw fails, says what to check,
    // and keeps the marker, so every later look tries again; once qemu-ga runs again (it
    // remembers the freeze in its state directory) the thaw goes through.
    let frozen = lab.driver.freeze_guest(&lab.vm, limit).await?;
    assert!(frozen.is_some());
    // SIGKILL: a frozen qemu-ga ignores SIGTERM.
    lab.sh("killall -9 qemu-ga; sleep 0.5; true").await?;
    let err = lab
        .driver
        .thaw_guest(&lab.vm, Duration::from_secs(3))
        .await
        .expect_err("a thaw without an agent must fail");
    assert!(err.to_string().contains("may still be frozen"), "{err}");
    assert!(lab
        .driver
        .thaw_guest(&lab.vm, Duration::from_secs(3))
        .await
        .is_err());
    // Started again as the guest's init does.
    lab.sh("for p in /sys/class/virtio-ports/*; do \
           [ \"$(cat $p/name)\" = org.qemu.guest_agent.0 ] && \
           /usr/sbin/qemu-ga -d -m virtio-serial -p /dev/${p##*/} -t /var/run; \
         done; true")
        .await?;
    lab.driver.thaw_guest(&lab.vm, limit).await?;
    lab.sh("echo again > /data/a && sync").await?;

    // No agent: the freeze gives up within its limit, and the guest is not frozen.
    lab.sh("killall qemu-ga; sleep 0.5; true").await?;
    let started = Instant::now();
    let frozen = lab
        .driver
        .freeze_guest(&lab.vm, Duration::from_secs(3))
        .await?;
    assert!(frozen.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    lab.sh("echo free > /data/g && sync").await?;
    Ok(())
}
