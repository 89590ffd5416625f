//! What the driver shows other local users, and what it believes about a guest's disks.
//! No guest boots here: a QEMU held at its first instruction (`-S`) is enough to open a
//! cut, and the inventory needs no QEMU at all.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};
use lifeboat_hypervisor::private::exposed;
use lifeboat_hypervisor::{Accel, Cut, Hypervisor, QemuConfig, QemuDriver, VmSpec};

/// The umask most hosts run with; every mode below would be 0644/0755 without the fix.
fn usual_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
}

fn qemu_img(args: &[&str]) -> Result<()> {
    let out = Command::new("qemu-img").args(args).output()?;
    ensure!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn driver(home: &Path) -> Result<QemuDriver> {
    let mut config = QemuConfig::new(home);
    config.accel = Accel::Tcg;
    Ok(QemuDriver::new(config)?)
}

fn spec(name: &str, disk: &Path, format: &str) -> Result<VmSpec> {
    Ok(VmSpec::parse(
        &format!(
            "name = \"{name}\"\nmemory_mib = 64\n[[disks]]\nname = \"vda\"\npath = \"{}\"\nformat = \"{format}\"\n",
            disk.display()
        ),
        Path::new("test"),
    )?)
}

/// An older Lifeboat's home (0755) is tightened, and with a cut open — fleecing image,
/// NBD socket, QMP, serial and guest agent sockets, logs, lock — nothing in it is
/// readable, writable or enterable by group or others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_with_a_cut_open_is_private_to_its_owner() -> Result<()> {
    usual_umask();
    let tmp = tempfile::Builder::new().prefix("lb").tempdir_in("/tmp")?;
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("vms"))?;
    for d in [&home, &home.join("vms")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let disk = tmp.path().join("disk.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &disk.display().to_string(),
        "64M",
    ])?;
    let driver = driver(&home)?;
    let spec = spec("private", &disk, "qcow2")?;
    let vm = spec.name.clone();
    driver.define(spec).await?;
    driver.start_with(&vm, true).await?;
    let cut = driver.begin_full_cut(&vm).await;
    let dir = driver.vm_dir(&vm)?;
    let seen = exposed(&home);
    let files: Vec<String> = std::fs::read_dir(&dir.dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    if let Ok(cut) = cut {
        cut.abort().await?;
    }
    driver.kill(&vm).await?;
    let seen: Vec<String> = seen?
        .iter()
        .map(|(p, mode)| format!("{} {mode:o}", p.display()))
        .collect();
    for f in [
        "fleece-vda.qcow2",
        "nbd.sock",
        "qmp.sock",
        "serial.sock",
        "qga.sock",
    ] {
        ensure!(
            files.iter().any(|n| n == f),
            "no {f} while the cut was open: {files:?}"
        );
    }
    ensure!(seen.is_empty(), "open to group or others: {seen:#?}");
    Ok(())
}

/// A guest owns every byte of its raw disk, the first ones too: a qcow2 header written
/// there must not make the inventory believe the disk is a 1 TiB qcow2 image.
#[tokio::test]
async fn a_raw_disk_with_a_qcow2_header_keeps_its_real_size() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let header = tmp.path().join("header.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &header.display().to_string(),
        "1T",
    ])?;
    let header = std::fs::read(&header)?;
    let disk = tmp.path().join("disk.raw");
    let real_size = 4u64 << 20;
    ensure!((header.len() as u64) < real_size);
    std::fs::write(&disk, &header)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)?
        .set_len(real_size)?;
    let driver = driver(&tmp.path().join("home"))?;
    driver.define(spec("rawdisk", &disk, "raw")?).await?;
    let vms = driver.list().await?;
    let sizes: Vec<u64> = vms[0].disks.iter().map(|d| d.virtual_size).collect();
    ensure!(
        sizes == [real_size],
        "inventory sizes {sizes:?}, the file is {real_size}"
    );
    Ok(())
}
