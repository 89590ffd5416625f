//! One size of the `cut` benchmark, step by step: make the data disk, boot the VM, full
//! cut, `qemu-img convert` baseline, then rewrites from inside the guest each followed
//! by an incremental cut that is checked against the live disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use lifeboat_hypervisor::apply::apply_to_raw;
use lifeboat_hypervisor::{Cut, CutKind, Hypervisor};
use serde::Serialize;

use crate::datagen::{self, Rng};
use crate::guest::{disk, BenchVm};
use crate::rewrite::Plan;
use crate::tuned::{self, Knobs};

const MIB: f64 = (1u64 << 20) as f64;

pub struct Options {
    pub work_dir: PathBuf,
    pub rewrite_percent: f64,
    pub rewrite_fixed: u64,
    pub probes: Vec<Knobs>,
    /// Full cuts and converts per size; the median of each is reported.
    pub repeat: usize,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timed {
    pub secs: f64,
    pub bytes: u64,
    pub mib_per_s: f64,
}

impl Timed {
    fn new(started: Instant, bytes: u64) -> Timed {
        let secs = started.elapsed().as_secs_f64();
        Timed {
            secs,
            bytes,
            mib_per_s: bytes as f64 / MIB / secs,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CutRun {
    /// begin → apply every disk → commit.
    pub total: Timed,
    /// Only the data disk's `apply_to_raw`.
    pub vdb_apply: Timed,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Incremental {
    /// Bytes the guest was told to write to vdb (disjoint, 64 KiB-aligned).
    pub asked: u64,
    /// How long the guest took to write and sync them (TCG: not a host figure).
    pub guest_write_secs: f64,
    pub cut: CutRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub knobs: Knobs,
    pub vdb_apply: Timed,
    pub breakdown: tuned::Breakdown,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    pub disk_size: u64,
    pub generate_secs: f64,
    /// The median round (by vdb apply time).
    pub full: CutRun,
    pub full_samples: Vec<CutRun>,
    pub convert: Timed,
    pub convert_samples: Vec<Timed>,
    /// Full cut's vdb apply throughput as a percentage of `qemu-img convert`'s.
    pub full_vs_convert_pct: f64,
    pub incremental_percent: Incremental,
    pub incremental_fixed: Incremental,
    pub probes: Vec<Probe>,
}

/// Empties the page cache, so every timed read comes from the disk.
fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("drop the page cache (/proc/sys/vm/drop_caches): run the benchmark as root")
}

fn qemu_img(args: &[&str], paths: &[&Path]) -> Result<std::process::Output> {
    let out = Command::new("qemu-img")
        .args(args)
        .args(paths)
        .output()
        .context("run qemu-img (install qemu-utils)")?;
    Ok(out)
}

pub async fn run_size(size: u64, opts: &Options, seed: u64) -> Result<SizeResult> {
    let dir = opts.work_dir.join(format!("{}m", size >> 20));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let vda = lifeboat_testkit::guest_disk_copy(&dir, "vda.qcow2")?;
    let vdb = dir.join("vdb.qcow2");
    let started = Instant::now();
    datagen::make_qcow2(&vdb, &dir.join("vdb-source.raw"), size, seed)?;
    let generate_secs = started.elapsed().as_secs_f64();
    let (_, allocated) = lifeboat_hypervisor::qemu::driver::image_sizes(
        &vdb,
        lifeboat_hypervisor::DiskFormat::Qcow2,
    )
    .await?;
    ensure!(
        allocated >= size,
        "{} holds only {allocated} of {size} bytes",
        vdb.display()
    );
    eprintln!(
        "[{}] data disk ready in {generate_secs:.1}s; booting",
        label(size)
    );

    let vm_name = format!("bench-{}m", size >> 20);
    let mut vm = BenchVm::boot(&vm_name, &dir.join("home"), &vda, &vdb).await?;
    let result = measure(&mut vm, size, opts, seed, &dir).await;
    let killed = vm.kill().await;
    let result = result?;
    killed?;
    Ok(SizeResult {
        generate_secs,
        ..result
    })
}

async fn measure(
    vm: &mut BenchVm,
    size: u64,
    opts: &Options,
    seed: u64,
    dir: &Path,
) -> Result<SizeResult> {
    let out_vda = dir.join("out-vda.raw");
    let out_vdb = dir.join("out-vdb.raw");

    let mut probes = Vec::new();
    for &knobs in &opts.probes {
        // A probe is a full cut that is aborted: tracking is back where it was.
        drop_caches()?;
        let cut = vm.driver.begin_full_cut(&vm.vm).await?;
        let started = Instant::now();
        let (stats, breakdown) =
            tuned::apply(&cut, &disk("vdb"), &dir.join("probe.raw"), knobs).await?;
        let vdb_apply = Timed::new(started, stats.bytes);
        cut.abort().await?;
        std::fs::remove_file(dir.join("probe.raw"))?;
        eprintln!(
            "[{}] probe {knobs:?}: {:.0} MiB/s; {breakdown:?}",
            label(size),
            vdb_apply.mib_per_s
        );
        probes.push(Probe {
            knobs,
            vdb_apply,
            breakdown,
        });
    }

    // Convert and full cut take turns, so that neither always reads right after the
    // other (the host below this machine caches too). Every full cut but the last is
    // aborted; the last one is the base of the incremental cuts.
    let mut full_samples = Vec::new();
    let mut convert_samples = Vec::new();
    for round in 0..opts.repeat {
        convert_samples.push(convert(vm, size, dir).await?);
        drop_caches()?;
        let last = round + 1 == opts.repeat;
        full_samples.push(timed_cut(vm, CutKind::Full, last, &out_vda, &out_vdb).await?);
        eprintln!(
            "[{}] round {}: qemu-img convert {:.0} MiB/s, full cut {:.0} MiB/s",
            label(size),
            round + 1,
            convert_samples[round].mib_per_s,
            full_samples[round].vdb_apply.mib_per_s
        );
    }
    let full = median(&full_samples, |c| c.vdb_apply.secs);
    let convert = median(&convert_samples, |t| t.secs);

    let mut rng = Rng::new(seed.rotate_left(17) ^ 0x5eed);
    let percent_bytes = (size as f64 * opts.rewrite_percent / 100.0) as u64;
    let incremental_percent =
        rewrite_and_cut(vm, size, percent_bytes, &mut rng, &out_vda, &out_vdb).await?;
    let incremental_fixed =
        rewrite_and_cut(vm, size, opts.rewrite_fixed, &mut rng, &out_vda, &out_vdb).await?;

    for f in [&out_vda, &out_vdb] {
        std::fs::remove_file(f)?;
    }
    Ok(SizeResult {
        disk_size: size,
        generate_secs: 0.0,
        full,
        full_samples,
        convert,
        convert_samples,
        full_vs_convert_pct: 100.0 * full.vdb_apply.mib_per_s / convert.mib_per_s,
        incremental_percent,
        incremental_fixed,
        probes,
    })
}

/// The sample with the median of `key` (the upper one of an even count).
fn median<T: Copy>(samples: &[T], key: impl Fn(&T) -> f64) -> T {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[sorted.len() / 2]
}

/// The baseline: `qemu-img convert` of the data disk, quiescent (the VM is paused and
/// QEMU has flushed), read cold, and fsynced like `apply_to_raw` does.
async fn convert(vm: &BenchVm, size: u64, dir: &Path) -> Result<Timed> {
    vm.pause().await?;
    drop_caches()?;
    let baseline = dir.join("baseline.raw");
    let started = Instant::now();
    let out = qemu_img(
        &["convert", "-U", "-f", "qcow2", "-O", "raw"],
        &[&vm.data_disk, &baseline],
    )?;
    ensure!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::File::open(&baseline)?.sync_all()?;
    let timed = Timed::new(started, size);
    std::fs::remove_file(&baseline)?;
    vm.resume().await?;
    Ok(timed)
}

/// One cut of every disk onto its raw image, timed from begin to commit (or abort).
async fn timed_cut(
    vm: &BenchVm,
    kind: CutKind,
    commit: bool,
    out_vda: &Path,
    out_vdb: &Path,
) -> Result<CutRun> {
    let started = Instant::now();
    let cut = match kind {
        CutKind::Full => vm.driver.begin_full_cut(&vm.vm).await?,
        CutKind::Incremental => vm.driver.begin_incremental_cut(&vm.vm).await?,
    };
    let a = apply_to_raw(&cut, &disk("vda"), out_vda).await?;
    let vdb_started = Instant::now();
    let b = apply_to_raw(&cut, &disk("vdb"), out_vdb).await?;
    let vdb_apply = Timed::new(vdb_started, b.bytes);
    if commit {
        cut.commit().await?;
    } else {
        cut.abort().await?;
    }
    Ok(CutRun {
        total: Timed::new(started, a.bytes + b.bytes),
        vdb_apply,
    })
}

/// Has the guest rewrite `target` bytes of vdb, takes an incremental cut, and checks
/// the replica against the live disk.
async fn rewrite_and_cut(
    vm: &mut BenchVm,
    size: u64,
    target: u64,
    rng: &mut Rng,
    out_vda: &Path,
    out_vdb: &Path,
) -> Result<Incremental> {
    let plan = Plan::new(size, target, rng);
    let started = Instant::now();
    for cmd in plan.commands("/dev/vdb") {
        vm.sh(&cmd).await?;
    }
    let guest_write_secs = started.elapsed().as_secs_f64();
    drop_caches()?;
    let cut = timed_cut(vm, CutKind::Incremental, true, out_vda, out_vdb).await?;
    eprintln!(
        "[{}] rewrote {} MiB in {guest_write_secs:.0}s; incremental cut {:.2}s",
        label(size),
        plan.bytes() >> 20,
        cut.total.secs
    );
    vm.pause().await?;
    verify(out_vdb, &vm.data_disk)?;
    vm.resume().await?;
    Ok(Incremental {
        asked: plan.bytes(),
        guest_write_secs,
        cut,
    })
}

/// Fails unless the replica holds exactly the live disk (the VM must be paused).
fn verify(replica: &Path, live: &Path) -> Result<()> {
    let out = qemu_img(
        &["compare", "-U", "-f", "raw", "-F", "qcow2"],
        &[replica, live],
    )?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => bail!(
            "REPLICA IS WRONG: {} differs from the live disk {}: {}",
            replica.display(),
            live.display(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        _ => bail!(
            "qemu-img compare failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

pub fn label(size: u64) -> String {
    if size.is_multiple_of(1 << 30) {
        format!("{}G", size >> 30)
    } else {
        format!("{}M", size >> 20)
    }
}
