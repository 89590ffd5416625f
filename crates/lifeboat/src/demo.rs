//! `lifeboat demo`: what works today, on the test guest. It boots the guest under the QEMU
//! driver, starts tracking with a full cut, writes in the guest, then takes an incremental
//! cut and shows exactly which extents changed — and proves the replica built from the two
//! cuts equals the guest's disk, bit for bit.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lifeboat_hypervisor::serial_console::SerialConsole;
use lifeboat_hypervisor::{CutKind, Hypervisor, QemuDriver, VmName, VmSpec, VmState};

use crate::cbt_cmd::{print_cut, take_cut};
use crate::cli::DemoArgs;
use crate::output::{bytes, Output};

const VM: &str = "demo";

fn step(n: u32, what: &str) {
    println!("\n[{n}/6] {what}");
}

/// The demo guest's spec: one qcow2 disk, its web server forwarded to `port`.
pub fn demo_spec(name: &str, disk: &Path, port: u16) -> Result<VmSpec> {
    Ok(VmSpec::parse(
        &format!(
            r#"
name = "{name}"
memory_mib = 256
vcpus = 1
[[disks]]
name = "vda"
path = "{}"
format = "qcow2"
[[nics]]
mac = "52:54:00:4c:42:01"
network = "user"
host_forwards = [{{ host_port = {port}, guest_port = 80 }}]
"#,
            disk.display()
        ),
        Path::new("demo spec"),
    )?)
}

/// Starts the demo guest and waits until its shell answers.
pub async fn boot_and_wait(driver: &QemuDriver, vm: &VmName) -> Result<SerialConsole> {
    driver.start(vm).await?;
    let mut console =
        SerialConsole::connect(&driver.serial_socket(vm)?, Duration::from_secs(60)).await?;
    console
        .wait_ready(Duration::from_secs(240))
        .await
        .context("the demo guest did not boot")?;
    Ok(console)
}

/// The binary as the operator can run it: its path when it is not on PATH.
pub fn exe_for_operator() -> String {
    std::env::current_exe()
        .ok()
        .filter(|p| {
            let on_path = std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("lifeboat") == *p));
            !on_path
        })
        .map(|p| {
            let cwd = std::env::current_dir().unwrap_or_default();
            let rel = p.strip_prefix(&cwd).map(|r| format!("./{}", r.display()));
            rel.unwrap_or_else(|_| p.display().to_string())
        })
        .unwrap_or_else(|| "lifeboat".to_string())
}

pub async fn run(driver: &QemuDriver, out: Output, args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let vm = VmName::new(VM).map_err(anyhow::Error::msg)?;
    let dir = driver.config().home.join("demo");
    crate::server_cmd::private_dir(&dir)?;

    step(
        1,
        "Preparing the demo guest (built once from Debian packages, then cached)",
    );
    let (builder, image) = crate::demo_guest::image().await?;
    println!("  guest builder: {}", builder.display());
    println!("  guest image: {}", image.display());
    if driver.spec(&vm).await.is_ok() {
        println!("  replacing the previous demo VM");
        driver.kill(&vm).await?;
        driver.undefine(&vm).await?;
    }
    let disk = crate::demo_guest::disk_copy(&image, &dir, "demo.qcow2")?;
    let port = crate::demo_guest::free_tcp_port()?;
    let spec = demo_spec(VM, &disk, port)?;
    driver.define(spec).await?;

    step(2, "Booting it under Lifeboat's QEMU driver");
    let mut console = boot_and_wait(driver, &vm).await?;
    println!(
        "  booted in {:.1} s; its web server is on http://127.0.0.1:{port}/",
        started.elapsed().as_secs_f64()
    );

    step(3, "Starting changed-block tracking with a full cut");
    let replica = dir.join("replica.raw");
    let target = |_: &str| replica.clone();
    let full = take_cut(driver, &vm, CutKind::Full, Some(&target), true).await?;
    println!(
        "  full cut: {} of data (holes skipped) copied to {} in {:.2} s",
        bytes(full.total_bytes()),
        replica.display(),
        full.seconds
    );

    step(4, "Writing in the guest: a note and 2.5 MiB of random data");
    let cmd_timeout = Duration::from_secs(120);
    console
        .run(
            "echo \"hello from the lifeboat demo, written $(date)\" > /data/hello.txt && \
             dd if=/dev/urandom of=/data/blob bs=65536 count=40 2>/dev/null && sync",
            cmd_timeout,
        )
        .await?;

    step(5, "Taking an incremental cut: only what changed");
    let inc = take_cut(driver, &vm, CutKind::Incremental, Some(&target), true).await?;
    if !out.json {
        print_cut(&inc, 20);
    }
    println!(
        "  the cut carried {} of a {} disk ({:.2}%), {} less than the full cut",
        bytes(inc.total_bytes()),
        bytes(inc.disks[0].size),
        100.0 * inc.total_bytes() as f64 / inc.disks[0].size as f64,
        bytes(full.total_bytes().saturating_sub(inc.total_bytes()))
    );

    step(6, "Proving the replica equals the guest's disk");
    // Paused, QEMU has flushed the disk: the image file is what the guest sees.
    driver.pause(&vm).await?;
    let same = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-U", "-f", "raw", "-F", "qcow2"])
        .arg(&replica)
        .arg(&disk)
        .status()?;
    driver.resume(&vm).await?;
    if !same.success() {
        bail!("the replica differs from the live disk — please report this as a bug");
    }
    println!("  qemu-img compare: replica built from the two cuts == live disk, bit for bit");
    let (status, body) =
        crate::demo_guest::http_get(port, "/hello.txt", Duration::from_secs(30)).await?;
    println!(
        "  the guest serves /hello.txt (HTTP {status}): {}",
        String::from_utf8_lossy(&body).trim()
    );

    if args.stop {
        driver.shutdown(&vm, Duration::from_secs(60)).await?;
        println!(
            "\nDemo finished in {:.1} s; the VM is stopped.",
            started.elapsed().as_secs_f64()
        );
    } else {
        let state = driver.state(&vm).await?;
        debug_assert_eq!(state, VmState::Running);
        let home = driver.config().home.display().to_string();
        let h = if home == "/var/lib/lifeboat" {
            String::new()
        } else {
            format!(" --home {home}")
        };
        let exe = exe_for_operator();
        println!(
            "\nDemo finished in {:.1} s. The demo VM is still running; look around:",
            started.elapsed().as_secs_f64()
        );
        println!("  {exe}{h} vm list");
        println!("  {exe}{h} cbt status demo");
        println!("  curl http://127.0.0.1:{port}/hello.txt");
        println!("  {exe}{h} cbt cut demo --apply {}", replica.display());
        println!("  {exe}{h} vm stop demo");
    }
    Ok(())
}
