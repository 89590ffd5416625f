//! A hung guest agent never stalls a libvirt domain or its sync: with the guest's
//! qemu-ga stopped (SIGSTOP: connected, never answering), the libvirt driver's freeze
//! gives up within its limit and the cut goes on crash-consistent, at once; the guest
//! keeps running and writing; once the agent answers again, freeze and thaw work.

mod common;

use std::time::{Duration, Instant};

use common::libvirt::SourceDomain;
use lifeboat_hypervisor::libvirt::{LibvirtConfig, LibvirtDriver};
use lifeboat_hypervisor::{Cut, Hypervisor, VmName};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_guest_agent_stalls_neither_the_domain_nor_the_cut() {
    let source = SourceDomain::start("lvg", false).await;
    let mut console = source.console;
    let home = tempfile::tempdir().unwrap();
    let mut config = LibvirtConfig::new(home.path());
    config.work_root = home.path().join("work");
    let driver = LibvirtDriver::new(config).unwrap();
    let vm = VmName::new(&source.name).unwrap();
    let limit = Duration::from_secs(3);

    // A healthy agent freezes and thaws.
    let frozen = driver.freeze_guest(&vm, limit).await.unwrap();
    assert!(frozen.is_some_and(|n| n >= 1), "{frozen:?}");
    driver.thaw_guest(&vm, limit).await.unwrap();

    let out = console
        .run(
            "kill -STOP $(pidof qemu-ga) && echo stopped",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(out.contains("stopped"), "{out}");
    let t = Instant::now();
    let frozen = driver.freeze_guest(&vm, limit).await.unwrap();
    let waited = t.elapsed();
    assert_eq!(frozen, None, "a hung agent freezes nothing");
    assert!(
        waited < limit + Duration::from_secs(2),
        "freeze waited {waited:?}"
    );
    // The cut is not held up by the agent's pending command.
    let t = Instant::now();
    let cut = driver.begin_full_cut(&vm).await.unwrap();
    assert!(!cut.disks().is_empty());
    cut.abort().await.unwrap();
    let cut_took = t.elapsed();
    assert!(
        cut_took < Duration::from_secs(20),
        "the cut waited {cut_took:?}"
    );
    // The guest runs and writes on.
    let out = console
        .run(
            "echo alive > /data/alive && sync && cat /data/alive",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(out.trim(), "alive");
    // Thawing is bounded too while the agent hangs.
    let t = Instant::now();
    let _ = driver.thaw_guest(&vm, limit).await;
    assert!(t.elapsed() < limit + Duration::from_secs(2));

    // The agent answers again: a late freeze, if it landed, is thawed; freezing works.
    console
        .run(
            "kill -CONT $(pidof qemu-ga); echo resumed",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while driver.thaw_guest(&vm, limit).await.is_err() {
        assert!(Instant::now() < deadline, "thaw never succeeded");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = console
        .run(
            "echo again > /data/alive && sync && cat /data/alive",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        out.trim(),
        "again",
        "the guest's filesystem is not left frozen"
    );
    eprintln!("hung agent: freeze gave up after {waited:?}; the cut took {cut_took:?}");
}
