//! The VM lifecycle under the QEMU driver with the real guest: inventory, start, state,
//! orderly and forced shutdown, reattaching from a new driver, and start-up errors.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use common::Lab;
use lifeboat_hypervisor::{
    Accel, Cut, Hypervisor, HypervisorError, QemuConfig, QemuDriver, ShutdownOutcome, VmSpec,
    VmState,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_state_and_orderly_shutdown() -> Result<()> {
    let mut lab = Lab::boot("life-basic").await?;
    assert_eq!(lab.driver.state(&lab.vm).await?, VmState::Running);

    let vms = lab.driver.list().await?;
    assert_eq!(vms.len(), 1);
    let vm = &vms[0];
    assert_eq!(vm.state, VmState::Running);
    assert!(vm.uuid.is_some(), "define fills in a uuid");
    assert_eq!(vm.disks[0].virtual_size, 64 << 20);
    assert!(vm.disks[0].allocated_size > 0);

    // The guest's HTTP server answers through the NIC's forwarded port.
    lab.sh("echo served > /data/hello.txt && sync").await?;
    let body =
        lifeboat_testkit::wait_http(lab.http_port, "/hello.txt", Duration::from_secs(60)).await?;
    assert_eq!(body, b"served\n");

    let err = lab
        .driver
        .start(&lab.vm)
        .await
        .expect_err("already running");
    assert!(err.to_string().contains("already started"), "{err}");
    let err = lab.driver.undefine(&lab.vm).await.expect_err("running");
    assert!(err.to_string().contains("stop it"), "{err}");

    let outcome = lab
        .driver
        .shutdown(&lab.vm, Duration::from_secs(60))
        .await?;
    assert_eq!(outcome, ShutdownOutcome::GuestPoweredOff);
    assert_eq!(lab.driver.state(&lab.vm).await?, VmState::Stopped);
    assert_eq!(
        lab.driver.shutdown(&lab.vm, Duration::from_secs(1)).await?,
        ShutdownOutcome::AlreadyStopped
    );

    // The orderly shutdown unmounted /data: the next boot counts 2.
    lab.start().await?;
    assert_eq!(lab.sh("cat /data/boot-count").await?.trim(), "2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_ignores_the_power_button_is_stopped_by_force() -> Result<()> {
    let mut lab = Lab::boot("life-force").await?;
    lab.sh("killall acpid; true").await?;
    let outcome = lab.driver.shutdown(&lab.vm, Duration::from_secs(3)).await?;
    assert_eq!(outcome, ShutdownOutcome::Forced);
    assert_eq!(lab.driver.state(&lab.vm).await?, VmState::Stopped);
    Ok(())
}

/// A QEMU held for a final cut (`-S`: its CPUs never ran) cannot answer the power
/// button: it is told to quit at once, not after the whole timeout (every planned move
/// used to wait and log "guest did not power off" about it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_vm_is_told_to_quit_without_waiting_for_the_power_button() -> Result<()> {
    let lab = Lab::boot("life-held").await?;
    let outcome = lab
        .driver
        .shutdown(&lab.vm, Duration::from_secs(60))
        .await?;
    assert_eq!(outcome, ShutdownOutcome::GuestPoweredOff);
    lab.driver.start_held(&lab.vm).await?;
    assert!(lab.driver.state(&lab.vm).await?.held());
    let t = std::time::Instant::now();
    let outcome = lab
        .driver
        .shutdown(&lab.vm, Duration::from_secs(60))
        .await?;
    assert_eq!(outcome, ShutdownOutcome::Forced);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "a held QEMU took {:?} to go",
        t.elapsed()
    );
    assert_eq!(lab.driver.state(&lab.vm).await?, VmState::Stopped);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_driver_reattaches_to_running_vms() -> Result<()> {
    let lab = Lab::boot("life-attach").await?;
    let full = lab.driver.begin_full_cut(&lab.vm).await?;
    full.commit().await?;

    // As if the agent restarted: a fresh driver over the same home.
    let mut config = QemuConfig::new(lab.tmp.path().join("home"));
    config.accel = Accel::Tcg;
    let again = QemuDriver::new(config)?;
    assert_eq!(again.state(&lab.vm).await?, VmState::Running);
    let inc = again.begin_incremental_cut(&lab.vm).await?;
    inc.commit().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failures_carry_qemus_message() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("lb").tempdir_in("/tmp")?;
    let mut config = QemuConfig::new(tmp.path().join("home"));
    config.accel = Accel::Tcg;
    let driver = QemuDriver::new(config)?;
    let spec = VmSpec::parse(
        r#"
name = "broken"
memory_mib = 64
[[disks]]
name = "vda"
path = "/nonexistent/disk.qcow2"
format = "qcow2"
"#,
        Path::new("test"),
    )?;
    let vm = spec.name.clone();
    driver.define(spec.clone()).await?;
    assert!(matches!(
        driver.define(spec).await,
        Err(HypervisorError::AlreadyDefined(_))
    ));
    let err = driver
        .start(&vm)
        .await
        .expect_err("the disk does not exist");
    let msg = err.to_string();
    assert!(
        msg.contains("failed to start") && msg.contains("/nonexistent/disk.qcow2"),
        "{msg}"
    );
    assert_eq!(driver.state(&vm).await?, VmState::Stopped);
    driver.undefine(&vm).await?;
    let unknown = driver.state(&vm).await.expect_err("undefined");
    assert!(matches!(unknown, HypervisorError::UnknownVm(_)));
    Ok(())
}
