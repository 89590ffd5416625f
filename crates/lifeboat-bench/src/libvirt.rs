//! `lifeboat-bench libvirt`: cuts through libvirt's backup job against the QEMU driver's
//! own, on the same data disk. Each driver runs an idle VM (no guest OS: the firmware
//! finds nothing to boot) whose one disk is a qcow2 image full of data; a full cut is
//! read whole over NBD exactly as a sync reads it (4 MiB pieces, two in flight). Then,
//! on the libvirt domain, incremental cuts after writes of growing size (made through
//! QEMU's `qemu-io` on the live disk): the time to read what changed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use lifeboat_hypervisor::libvirt::{LibvirtConfig, LibvirtDriver};
use lifeboat_hypervisor::{Cut, Hypervisor, QemuConfig, QemuDriver, VmName};
use serde::Serialize;

const PIECE: u64 = 4 << 20;
const IN_FLIGHT: usize = 2;

pub struct Options {
    pub size: u64,
    pub changes: Vec<u64>,
    pub work: PathBuf,
    pub repeat: usize,
}

#[derive(Serialize)]
pub struct FullRow {
    pub driver: &'static str,
    pub seconds: f64,
    pub bytes: u64,
    pub mib_per_s: f64,
}

#[derive(Serialize)]
pub struct IncrementalRow {
    pub changed: u64,
    pub seconds: f64,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct Report {
    pub size: u64,
    pub full: Vec<FullRow>,
    /// libvirt's full-cut throughput as a share of the QEMU driver's.
    pub libvirt_share: f64,
    pub incremental: Vec<IncrementalRow>,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A qcow2 image of `size` bytes, every byte written (a pattern per MiB).
fn data_disk(path: &Path, size: u64) -> Result<()> {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string()))?;
    let mut io = Command::new("qemu-io");
    io.args(["-f", "qcow2"]);
    for (i, off) in (0..size).step_by(64 << 20).enumerate() {
        let len = (size - off).min(64 << 20);
        io.args(["-c", &format!("write -P {} {off} {len}", (i % 250) + 1)]);
    }
    run(io.arg(path))?;
    Ok(())
}

/// Reads every extent a cut reports, as a sync does; the bytes read.
async fn read_cut<C: Cut>(cut: &C) -> Result<u64> {
    let mut total = 0;
    for disk in cut.disks().to_vec() {
        let extents = cut.changed_extents(&disk.name).await?;
        let pieces: Vec<(u64, u32)> = extents
            .iter()
            .flat_map(|e| {
                (e.offset..e.offset + e.length)
                    .step_by(PIECE as usize)
                    .map(move |o| (o, (e.offset + e.length - o).min(PIECE) as u32))
            })
            .collect();
        let name = disk.name.clone();
        let mut reads = futures::stream::iter(pieces)
            .map(|(o, l)| {
                let name = name.clone();
                async move { cut.read(&name, o, l).await }
            })
            .buffered(IN_FLIGHT);
        while let Some(r) = reads.next().await {
            total += r?.len() as u64;
        }
    }
    Ok(total)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run_bench(o: &Options) -> Result<Report> {
    lifeboat_testkit::libvirtd::ensure_libvirtd()?;
    let vm = VmName::new("lbbench").expect("a valid name");
    // The QEMU driver's VM.
    let qemu_home = o.work.join("qemu");
    std::fs::create_dir_all(&qemu_home)?;
    let qemu_disk = qemu_home.join("data.qcow2");
    eprintln!("writing {} MiB of data twice…", o.size >> 20);
    data_disk(&qemu_disk, o.size)?;
    let mut config = QemuConfig::new(&qemu_home);
    config.accel = lifeboat_hypervisor::Accel::Tcg;
    let qemu = QemuDriver::new(config)?;
    let spec = format!(
        "name = \"lbbench\"\nmemory_mib = 64\n[[disks]]\nname = \"vda\"\npath = \"{}\"\nformat = \"qcow2\"\n",
        qemu_disk.display()
    );
    let spec = lifeboat_hypervisor::VmSpec::parse(&spec, Path::new("bench"))?;
    qemu.define(spec).await?;
    qemu.start(&vm).await?;
    // libvirt's domain, in a folder its QEMU user reaches.
    let lv_dir = o.work.join("libvirt");
    std::fs::create_dir_all(&lv_dir)?;
    let lv_disk = lv_dir.join("data.qcow2");
    data_disk(&lv_disk, o.size)?;
    let name = format!("lbbench-{}", std::process::id());
    let _domain = lifeboat_testkit::libvirtd::DefinedDomain::tiny(&name, &lv_disk)?;
    lifeboat_testkit::libvirtd::virsh(&["start", &name])?;
    let mut lv_config = LibvirtConfig::new(&lv_dir.join("state"));
    lv_config.work_root = lv_dir.join("work");
    let libvirt = LibvirtDriver::new(lv_config)?;
    let lv_vm = VmName::new(&name).map_err(anyhow::Error::msg)?;

    let mut q_times = Vec::new();
    let mut l_times = Vec::new();
    let (mut q_bytes, mut l_bytes) = (0, 0);
    for round in 0..o.repeat {
        eprintln!("full cuts, round {} of {}…", round + 1, o.repeat);
        let t = Instant::now();
        let cut = qemu.begin_full_cut(&vm).await?;
        q_bytes = read_cut(&cut).await?;
        q_times.push(t.elapsed().as_secs_f64());
        cut.abort().await?;
        qemu.reset_tracking(&vm).await?;
        let t = Instant::now();
        let cut = libvirt.begin_full_cut(&lv_vm).await?;
        l_bytes = read_cut(&cut).await?;
        l_times.push(t.elapsed().as_secs_f64());
        if round + 1 == o.repeat {
            cut.commit().await?;
        } else {
            cut.abort().await?;
            libvirt.reset_tracking(&lv_vm).await?;
        }
    }
    let _ = qemu.kill(&vm).await;
    let (qs, ls) = (median(q_times), median(l_times));
    let full = vec![
        FullRow {
            driver: "qemu",
            seconds: qs,
            bytes: q_bytes,
            mib_per_s: q_bytes as f64 / qs / f64::from(1 << 20),
        },
        FullRow {
            driver: "libvirt",
            seconds: ls,
            bytes: l_bytes,
            mib_per_s: l_bytes as f64 / ls / f64::from(1 << 20),
        },
    ];
    let libvirt_share = full[1].mib_per_s / full[0].mib_per_s;

    let mut incremental = Vec::new();
    for &changed in &o.changes {
        // Spread over the disk in 1 MiB writes, so it is not one extent.
        let stride = (o.size / (changed >> 20).max(1)).max(1 << 20) & !((1 << 20) - 1);
        let mut off = 0;
        let mut left = changed;
        while left > 0 && off + (1 << 20) <= o.size {
            lifeboat_testkit::libvirtd::write_vda(&name, 0xc3, off, 1 << 20)?;
            left -= 1 << 20;
            off += stride;
        }
        let t = Instant::now();
        let cut = libvirt.begin_incremental_cut(&lv_vm).await?;
        let bytes = read_cut(&cut).await?;
        let seconds = t.elapsed().as_secs_f64();
        cut.commit().await?;
        incremental.push(IncrementalRow {
            changed,
            seconds,
            bytes,
        });
    }
    let _ = libvirt.kill(&lv_vm).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Report {
        size: o.size,
        full,
        libvirt_share,
        incremental,
    })
}

pub fn table(r: &Report) -> String {
    let mut out = format!(
        "full cut of a {} MiB data disk (median)\n{:<10} {:>9} {:>12} {:>10}\n",
        r.size >> 20,
        "driver",
        "seconds",
        "bytes",
        "MiB/s"
    );
    for f in &r.full {
        out += &format!(
            "{:<10} {:>9.2} {:>12} {:>10.0}\n",
            f.driver, f.seconds, f.bytes, f.mib_per_s
        );
    }
    out += &format!(
        "libvirt's backup job reads at {:.0}% of the QEMU driver's rate\n\n\
         incremental cuts through libvirt (after writes in 1 MiB pieces)\n{:>12} {:>9} {:>12}\n",
        r.libvirt_share * 100.0,
        "changed",
        "seconds",
        "bytes read"
    );
    for i in &r.incremental {
        out += &format!("{:>12} {:>9.2} {:>12}\n", i.changed, i.seconds, i.bytes);
    }
    out
}
