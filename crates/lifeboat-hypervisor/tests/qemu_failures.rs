//! Cuts that go wrong: QEMU dying mid-cut, a busy or refusing monitor, a process that
//! died with a cut open. Each must end in a clear error within a timeout — never a hang —
//! and must not lose a change.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::Lab;
use lifeboat_hypervisor::qemu::commands::BlockdevAddOverlay;
use lifeboat_hypervisor::qemu::qmp::{Qmp, QmpError};
use lifeboat_hypervisor::{Cut, CutKind, Hypervisor, HypervisorError, TrackingStatus};

/// Generous: the point is "no hang", not speed, and the machine may be busy.
const NO_HANG: Duration = Duration::from_secs(90);

async fn tracked(name: &str) -> Result<Lab> {
    let mut lab = Lab::boot(name).await?;
    lab.cut_into(CutKind::Full, &lab.path("replica.raw"))
        .await?;
    lab.write_random("a", 0, 16).await?;
    Ok(lab)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_dying_mid_cut_is_a_clear_error() -> Result<()> {
    let lab = tracked("fail-die").await?;
    let cut = lab.driver.begin_incremental_cut(&lab.vm).await?;
    lab.driver.kill(&lab.vm).await?;

    let read = tokio::time::timeout(NO_HANG, lab.apply(&cut, &lab.path("replica.raw")))
        .await
        .expect("reading a cut of a dead VM must not hang");
    let err = read
        .expect_err("reading from a dead QEMU must fail")
        .to_string();
    assert!(err.contains("NBD") || err.contains("nbd"), "{err}");

    let abort = tokio::time::timeout(NO_HANG, cut.abort())
        .await
        .expect("abort must not hang");
    assert!(abort.is_err(), "abort cannot reach a dead QEMU");
    let status = lab.driver.tracking_status(&lab.vm).await?;
    assert!(
        matches!(status, TrackingStatus::NeedsFullResync { .. }),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_monitor_times_out() -> Result<()> {
    let lab = Lab::boot_with("fail-busy", |c| c.qmp_timeout = Duration::from_secs(3)).await?;
    let socket = lab.tmp.path().join("home/vms/fail-busy/qmp.sock");
    // Someone else holds the monitor: QEMU serves one client at a time.
    let _holder = Qmp::connect(&socket, Duration::from_secs(10)).await?;
    let started = std::time::Instant::now();
    let err = lab
        .driver
        .state(&lab.vm)
        .await
        .expect_err("must not get the monitor");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(err.to_string().contains("no answer within 3 s"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_names_qemus_reason() -> Result<()> {
    let lab = Lab::boot("fail-refuse").await?;
    let socket = lab.tmp.path().join("home/vms/fail-refuse/qmp.sock");
    let qmp = Qmp::connect(&socket, Duration::from_secs(10)).await?;
    let bad = BlockdevAddOverlay::new(
        "lb-x".into(),
        lab.path("missing.qcow2").display().to_string(),
        "no-such-node".into(),
    );
    match qmp.run(bad).await {
        Err(QmpError::Refused { desc, .. }) => assert!(!desc.is_empty()),
        other => panic!("expected QEMU to refuse, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_that_fails_half_way_leaves_tracking_as_it_was() -> Result<()> {
    let mut lab = tracked("fail-half").await?;
    let before = lab.driver.tracking_status(&lab.vm).await?;
    // A directory where the NBD socket goes: nbd-server-start fails after the bitmaps
    // were already rotated, so the driver must roll them back.
    let sock = lab.tmp.path().join("home/vms/fail-half/nbd.sock");
    std::fs::create_dir_all(sock.join("blocker"))?;
    let err = lab
        .driver
        .begin_incremental_cut(&lab.vm)
        .await
        .err()
        .expect("must fail");
    assert!(
        matches!(&err, HypervisorError::Qmp { command, .. } if command == "nbd-server-start"),
        "{err}"
    );
    let after = lab.driver.tracking_status(&lab.vm).await?;
    match (&before, &after) {
        (
            TrackingStatus::Tracking { generation: a, .. },
            TrackingStatus::Tracking { generation: b, .. },
        ) => {
            assert_eq!(b, &(a + 1), "rollback merges into the new bitmap")
        }
        _ => panic!("before {before:?}, after {after:?}"),
    }
    std::fs::remove_dir_all(&sock)?;

    // Nothing was lost: the next cut still brings the replica to the live disk.
    lab.write_random("b", 0, 2).await?;
    let image = lab.path("replica.raw");
    let (_, same) = lab.sync_paused_and_compare(&image).await?;
    assert!(same);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_dropped_by_a_dead_owner_is_undone_without_loss() -> Result<()> {
    let mut lab = tracked("fail-drop").await?;
    let cut = lab.driver.begin_incremental_cut(&lab.vm).await?;
    // Dropping the cut releases its lock but leaves QEMU mid-cut, exactly as when the
    // owning process dies.
    drop(cut);
    let status = lab.driver.tracking_status(&lab.vm).await?;
    assert!(
        matches!(status, TrackingStatus::CutOpen { .. }),
        "{status:?}"
    );

    lab.write_random("b", 0, 2).await?;
    let image = lab.path("replica.raw");
    let (_, same) = lab.sync_paused_and_compare(&image).await?;
    assert!(same, "changes of the abandoned cut were lost");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cut_of_the_same_vm_is_refused_while_one_is_open() -> Result<()> {
    let lab = tracked("fail-twice").await?;
    let cut = lab.driver.begin_incremental_cut(&lab.vm).await?;
    let err = lab
        .driver
        .begin_incremental_cut(&lab.vm)
        .await
        .err()
        .expect("must refuse");
    assert!(
        err.to_string().contains("another process has a cut"),
        "{err}"
    );
    cut.abort().await?;
    Ok(())
}
