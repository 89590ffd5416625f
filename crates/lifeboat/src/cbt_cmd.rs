//! `lifeboat cbt …`: changed-block tracking by hand — what the agent will do on a schedule.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use lifeboat_hypervisor::apply::{apply_to_raw, ApplyStats};
use lifeboat_hypervisor::{Cut, CutKind, Extent, Hypervisor, QemuDriver, TrackingStatus};
use serde::Serialize;

use crate::cli::CbtCommand;
use crate::output::{bytes, table, Output};
use crate::vm_cmd::vm_name;

#[derive(Debug, Serialize)]
pub struct DiskReport {
    pub disk: String,
    pub size: u64,
    pub extents: Vec<Extent>,
    pub bytes: u64,
    pub applied_to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CutReport {
    pub vm: String,
    pub kind: CutKind,
    pub generation: u64,
    pub committed: bool,
    pub seconds: f64,
    pub disks: Vec<DiskReport>,
}

impl CutReport {
    pub fn total_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.bytes).sum()
    }
}

pub fn print_status(vm: &str, s: &TrackingStatus) {
    match s {
        TrackingStatus::NotTracking => println!("{vm}: not tracked. Start with `lifeboat cbt full {vm}`."),
        TrackingStatus::Tracking { generation, dirty_bytes } => println!(
            "{vm}: tracked (generation {generation}); {} changed since the last cut.",
            bytes(*dirty_bytes)
        ),
        TrackingStatus::CutOpen { generation } => println!(
            "{vm}: a cut (generation {generation}) is open; the next cut undoes it if its owner is gone."
        ),
        TrackingStatus::NeedsFullResync { reason } => {
            println!("{vm}: NEEDS A FULL RESYNC: {reason}. Run `lifeboat cbt reset {vm}`, then `lifeboat cbt full {vm}`.")
        }
    }
}

pub fn print_cut(r: &CutReport, show_extents: usize) {
    println!(
        "{} cut of {} (generation {}) {} in {:.2} s: {} in {} extent(s).",
        match r.kind {
            CutKind::Full => "Full",
            CutKind::Incremental => "Incremental",
        },
        r.vm,
        r.generation,
        if r.committed { "committed" } else { "aborted" },
        r.seconds,
        bytes(r.total_bytes()),
        r.disks.iter().map(|d| d.extents.len()).sum::<usize>()
    );
    for d in &r.disks {
        println!(
            "  disk {}: {} of {} ({:.3}%){}",
            d.disk,
            bytes(d.bytes),
            bytes(d.size),
            100.0 * d.bytes as f64 / d.size.max(1) as f64,
            d.applied_to
                .as_ref()
                .map(|p| format!(", applied to {p}"))
                .unwrap_or_default()
        );
        let mut rows = vec![vec!["    OFFSET".to_string(), "LENGTH".into()]];
        for e in d.extents.iter().take(show_extents) {
            rows.push(vec![format!("    {:#014x}", e.offset), bytes(e.length)]);
        }
        if d.extents.len() > show_extents {
            rows.push(vec![
                format!("    … {} more", d.extents.len() - show_extents),
                String::new(),
            ]);
        }
        if !d.extents.is_empty() {
            table(&rows);
        }
    }
}

/// Takes one cut of every disk; with `apply`, writes disk `i` to `apply(i)`.
pub async fn take_cut(
    driver: &QemuDriver,
    vm: &lifeboat_hypervisor::VmName,
    kind: CutKind,
    apply: Option<&dyn Fn(&str) -> std::path::PathBuf>,
    commit: bool,
) -> Result<CutReport> {
    let started = Instant::now();
    let cut = match kind {
        CutKind::Full => driver.begin_full_cut(vm).await?,
        CutKind::Incremental => driver.begin_incremental_cut(vm).await?,
    };
    let work = async {
        let mut disks = Vec::new();
        for d in cut.disks() {
            let extents = cut.changed_extents(&d.name).await?;
            let mut applied_to = None;
            if let Some(target) = apply {
                let path = target(d.name.as_str());
                let ApplyStats { .. } = apply_to_raw(&cut, &d.name, &path).await?;
                applied_to = Some(path.display().to_string());
            }
            disks.push(DiskReport {
                disk: d.name.to_string(),
                size: d.size,
                bytes: extents.iter().map(|e| e.length).sum(),
                extents,
                applied_to,
            });
        }
        anyhow::Ok(disks)
    };
    let generation = cut.generation();
    match work.await {
        Ok(disks) => {
            if commit {
                cut.commit().await?;
            } else {
                cut.abort().await?;
            }
            Ok(CutReport {
                vm: vm.to_string(),
                kind,
                generation,
                committed: commit,
                seconds: started.elapsed().as_secs_f64(),
                disks,
            })
        }
        Err(e) => {
            // The changes stay tracked for the next cut.
            if let Err(abort) = cut.abort().await {
                tracing::error!("aborting the failed cut: {abort}");
            }
            Err(e)
        }
    }
}

/// `--apply replica.raw` names the image of the first disk; further disks get
/// `replica-<disk>.raw` beside it.
fn image_for(base: &Path, first_disk: &str, disk: &str) -> std::path::PathBuf {
    if disk == first_disk {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    base.with_file_name(format!("{stem}-{disk}.raw"))
}

pub async fn run(driver: &QemuDriver, out: Output, cmd: CbtCommand) -> Result<()> {
    match cmd {
        CbtCommand::Status { name } => {
            let vm = vm_name(&name)?;
            let s = driver.tracking_status(&vm).await?;
            out.show(&s, |s| print_status(&name, s));
        }
        CbtCommand::Reset { name } => {
            let vm = vm_name(&name)?;
            driver.reset_tracking(&vm).await?;
            out.show(&serde_json::json!({"reset": vm}), |_| {
                println!("Tracking of {vm} reset. Start again with `lifeboat cbt full {vm}`.")
            });
        }
        CbtCommand::Full { name, out: image } => {
            let vm = vm_name(&name)?;
            let first = driver.spec(&vm).await?.disks[0].name.to_string();
            let target = image.map(|base| move |disk: &str| image_for(&base, &first, disk));
            let report = take_cut(
                driver,
                &vm,
                CutKind::Full,
                target.as_ref().map(|f| f as _),
                true,
            )
            .await?;
            out.show(&report, |r| print_cut(r, 10));
        }
        CbtCommand::Cut { name, apply, abort } => {
            let vm = vm_name(&name)?;
            let first = driver.spec(&vm).await?.disks[0].name.to_string();
            let target = apply.map(|base| move |disk: &str| image_for(&base, &first, disk));
            let report = take_cut(
                driver,
                &vm,
                CutKind::Incremental,
                target.as_ref().map(|f| f as _),
                !abort,
            )
            .await?;
            out.show(&report, |r| print_cut(r, 20));
        }
    }
    Ok(())
}
