//! Changed-block tracking against the real test guest under QEMU/TCG: cuts must give
//! exactly the disk as it was at the cut, bit for bit, and never lose a change.

mod common;

use anyhow::Result;
use common::{files_equal, Lab};
use lifeboat_hypervisor::{Cut, CutKind, Hypervisor, HypervisorError, TrackingStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_incremental_cut_rebuilds_the_disk() -> Result<()> {
    let mut lab = Lab::boot("cbt-chain").await?;
    assert_eq!(
        lab.driver.tracking_status(&lab.vm).await?,
        TrackingStatus::NotTracking
    );
    lab.write_random("a", 0, 32).await?;

    let image = lab.path("replica.raw");
    let full = lab.driver.begin_full_cut(&lab.vm).await?;
    assert_eq!(full.kind(), CutKind::Full);
    let full_stats = lab.apply(&full, &image).await?;
    full.commit().await?;
    assert!(matches!(
        lab.driver.tracking_status(&lab.vm).await?,
        TrackingStatus::Tracking { .. }
    ));

    // New data, and a partial overwrite of old data.
    lab.write_random("b", 0, 16).await?;
    lab.write_random("a", 5, 3).await?;

    let (inc_stats, same) = lab.sync_paused_and_compare(&image).await?;
    assert!(same, "replica differs from the live disk at the cut");
    lab.driver.resume(&lab.vm).await?;

    // The incremental cut carries the changes (>= 19 blocks of 64 KiB), not the disk.
    assert!(inc_stats.bytes >= 19 * 65536, "{inc_stats:?}");
    assert!(
        inc_stats.bytes < full_stats.bytes / 2,
        "full {full_stats:?} inc {inc_stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_stays_frozen_while_the_guest_overwrites() -> Result<()> {
    let mut lab = Lab::boot("cbt-frozen").await?;
    lab.write_random("a", 0, 64).await?;
    let image = lab.path("replica.raw");
    lab.cut_into(CutKind::Full, &image).await?;
    lab.write_random("a", 10, 20).await?;

    // The disk at the moment of the cut, read while the VM is paused.
    lab.driver.pause(&lab.vm).await?;
    let at_cut = lab.path("at-cut.raw");
    lab.snapshot_live(&at_cut)?;
    let inc = lab.driver.begin_incremental_cut(&lab.vm).await?;
    lab.driver.resume(&lab.vm).await?;
    // Overwrite the very blocks the cut is about to read, and more.
    lab.write_random("a", 0, 64).await?;
    lab.write_random("c", 0, 32).await?;
    lab.apply(&inc, &image).await?;
    inc.commit().await?;
    assert!(
        files_equal(&image, &at_cut)?,
        "the cut saw writes made after it began"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_cut_loses_no_change() -> Result<()> {
    let mut lab = Lab::boot("cbt-abort").await?;
    let image = lab.path("replica.raw");
    lab.cut_into(CutKind::Full, &image).await?;

    lab.write_random("lost", 0, 16).await?;
    let first = lab.driver.begin_incremental_cut(&lab.vm).await?;
    let generation = first.generation();
    first.abort().await?;
    assert!(matches!(
        lab.driver.tracking_status(&lab.vm).await?,
        TrackingStatus::Tracking { generation: g, .. } if g == generation + 1
    ));

    lab.write_random("later", 0, 4).await?;
    let (stats, same) = lab.sync_paused_and_compare(&image).await?;
    assert!(stats.bytes >= 20 * 65536, "{stats:?}");
    assert!(same, "the aborted cut's changes were lost");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_survives_a_qemu_restart_but_not_a_kill() -> Result<()> {
    let mut lab = Lab::boot("cbt-restart").await?;
    let image = lab.path("replica.raw");
    lab.cut_into(CutKind::Full, &image).await?;
    lab.write_random("before", 0, 8).await?;

    // Orderly stop: QEMU saves the bitmap in the qcow2 file.
    let outcome = lab
        .driver
        .shutdown(&lab.vm, std::time::Duration::from_secs(60))
        .await?;
    assert_eq!(
        outcome,
        lifeboat_hypervisor::ShutdownOutcome::GuestPoweredOff
    );
    let offline = lab.driver.tracking_status(&lab.vm).await?;
    // The same disk defined on another host (a copy) carries the bitmap, but nobody there
    // recorded what it covers: it must not be trusted.
    {
        let copy = lab.path("copied.qcow2");
        std::fs::copy(&lab.disk, &copy)?;
        let mut config = lifeboat_hypervisor::QemuConfig::new(lab.path("other-host"));
        config.accel = lifeboat_hypervisor::Accel::Tcg;
        let other = lifeboat_hypervisor::QemuDriver::new(config)?;
        let spec = lifeboat_hypervisor::VmSpec::parse(
            &format!(
                "name = \"copy\"\nmemory_mib = 64\n[[disks]]\nname = \"vda\"\npath = \"{}\"\nformat = \"qcow2\"\n",
                copy.display()
            ),
            std::path::Path::new("copy"),
        )?;
        let vm = spec.name.clone();
        other.define(spec).await?;
        let status = other.tracking_status(&vm).await?;
        assert!(
            matches!(status, TrackingStatus::NeedsFullResync { .. }),
            "{status:?}"
        );
    }
    assert!(
        matches!(offline, TrackingStatus::Tracking { .. }),
        "{offline:?}"
    );
    lab.start().await?;
    lab.write_random("after", 0, 8).await?;

    let (_, same) = lab.sync_paused_and_compare(&image).await?;
    assert!(same, "changes across the restart were lost");
    lab.driver.resume(&lab.vm).await?;

    // Pulling the plug leaves the bitmap marked in use: tracking must say so.
    lab.driver.kill(&lab.vm).await?;
    let status = lab.driver.tracking_status(&lab.vm).await?;
    assert!(
        matches!(status, TrackingStatus::NeedsFullResync { .. }),
        "{status:?}"
    );
    lab.start().await?;
    let err = lab
        .driver
        .begin_incremental_cut(&lab.vm)
        .await
        .err()
        .expect("must refuse");
    assert!(
        matches!(err, HypervisorError::NeedsFullResync { .. }),
        "{err}"
    );
    lab.driver.reset_tracking(&lab.vm).await?;
    lab.driver.pause(&lab.vm).await?;
    lab.cut_into(CutKind::Full, &image).await?;
    assert!(lab.equals_live(&image)?);
    Ok(())
}
