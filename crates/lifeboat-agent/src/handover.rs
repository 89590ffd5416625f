//! The source side of moving a VM away: shut it down in order, take the final point of
//! the stopped VM and prove it equal to the disks, and fence it.
//!
//! The final sync of a stopped VM runs in a QEMU started paused (`-S`): its disks and
//! dirty bitmaps are open for an incremental cut, and the guest never runs. Then QEMU
//! quits and every disk is read again, offline (`qemu-nbd`, read-only), and compared chunk
//! by chunk with the point by keyed digest: the proof that the recovery copy equals the
//! source.

use std::path::Path;
use std::time::Duration;

use lifeboat_hypervisor::{DiskFormat, Driver, Hypervisor, VmName};
use lifeboat_nbd::{ConnectOptions, NbdClient};
use lifeboat_vault::format::{Name, PointId};
use lifeboat_vault::{PointReader, Vault};
use serde::{Deserialize, Serialize};

use crate::replicate::{sync_vm, Records, SyncError, SyncOptions};
use crate::sync::{Progress, SyncRequest, SyncResult};

/// Bytes read from the offline disk per request while comparing.
const COMPARE_READ: u64 = 4 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct ShutdownRequest {
    /// Seconds the guest has to power off after the ACPI button before QEMU is told to quit.
    pub timeout_secs: u64,
    /// Run it as this job (202, polled at `GET /api/v1/jobs/{id}`): asked again with the
    /// same id, the same shutdown and its first answer. Without one (a server older than
    /// jobs for shutdowns), the call answers when the VM is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ShutdownReport {
    /// `already_stopped`, `guest_powered_off`, `forced` or `killed`.
    pub outcome: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DiskComparison {
    pub disk: String,
    pub size: u64,
    pub chunks: u64,
    /// Chunks whose digest differs from the point's (0: equal).
    pub differing_chunks: u64,
    /// Byte offset of the first differing chunk, if any.
    pub first_difference: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FinalSyncReport {
    pub result: SyncResult,
    pub disks: Vec<DiskComparison>,
    /// Every disk equals the point.
    pub equal: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FenceRequest {
    /// Why, for whoever finds the VM fenced: where it runs now, since when.
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FenceReport {
    /// QEMU was running and was killed.
    pub killed: bool,
}

pub async fn shutdown(
    driver: &Driver,
    vm: &VmName,
    timeout: Duration,
) -> Result<ShutdownReport, SyncError> {
    let outcome = driver.shutdown(vm, timeout).await?;
    let outcome = serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    tracing::info!(%vm, %outcome, "shut down for a planned failover");
    Ok(ShutdownReport { outcome })
}

/// The final point of the stopped VM `vm`, and the proof it equals its disks.
pub async fn final_sync(
    driver: &Driver,
    vault: &Vault,
    vm: &VmName,
    req: &SyncRequest,
    records: &Records,
) -> Result<FinalSyncReport, SyncError> {
    let name = Name::new(&req.point_name).map_err(|e| SyncError::Invalid(e.to_string()))?;
    if driver.state(vm).await? != lifeboat_hypervisor::VmState::Stopped {
        return Err(SyncError::Invalid(format!(
            "{vm} still runs: shut it down before its final sync"
        )));
    }
    driver.start_held(vm).await?;
    crate::failpoint::reached("agent-final-sync-started").await;
    let progress = Progress::default();
    let synced = sync_vm(
        driver,
        vault,
        vm,
        &name,
        &SyncOptions {
            app_consistent: false, // the guest is not running
            max_rate: None,
        },
        records,
        &progress,
    )
    .await;
    // Whatever happened, QEMU goes: the guest must not run here again. Told to quit (the
    // guest, never started, ignores the power button), so it saves the bitmaps cleanly.
    driver.shutdown(vm, Duration::from_secs(1)).await?;
    let result = synced?;
    let point: PointId = result
        .point
        .parse()
        .map_err(|e| SyncError::Invalid(format!("point {}: {e}", result.point)))?;
    let found = vault.find_point(&point).await?;
    let reader = PointReader::open(vault, &found, 16 << 20).await?;
    let spec = driver.spec(vm).await?;
    let mut disks = Vec::new();
    for d in &spec.disks {
        let disk = Name::new(d.name.as_str()).map_err(|e| SyncError::Invalid(e.to_string()))?;
        disks.push(compare_disk(&reader, &disk, &d.path, d.format).await?.0);
    }
    let equal = disks.iter().all(|d| d.differing_chunks == 0);
    tracing::info!(%vm, point = %result.point, equal, "final sync of the stopped VM");
    Ok(FinalSyncReport {
        result,
        disks,
        equal,
    })
}

/// Reads `path` offline and compares each chunk with the point's; also returns the slots
/// that differ.
async fn compare_disk(
    reader: &PointReader,
    disk: &Name,
    path: &Path,
    format: DiskFormat,
) -> Result<(DiskComparison, Vec<u64>), SyncError> {
    let (size, chunk_size) = reader.disk_layout(disk)?;
    let dir = private_temp_dir("compare")?;
    let socket = dir.path().join("compare.nbd");
    let mut child = tokio::process::Command::new("qemu-nbd")
        .args(["--read-only", "--shared=1", "-f", format.as_str(), "-k"])
        .arg(&socket)
        .arg(path)
        .kill_on_drop(true)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| SyncError::Invalid(format!("running qemu-nbd: {e} (install qemu-utils)")))?;
    let client = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match NbdClient::connect_unix(&socket, ConnectOptions::new("")).await {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => {
                    let _ = child.kill().await;
                    return Err(SyncError::Invalid(format!(
                        "reading {} offline through qemu-nbd: {e}",
                        path.display()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    if client.export_size() != size {
        let _ = child.kill().await;
        return Err(SyncError::Invalid(format!(
            "disk {disk} is {} bytes, the point's is {size}",
            client.export_size()
        )));
    }
    let cs = u64::from(chunk_size);
    let mut report = DiskComparison {
        disk: disk.to_string(),
        size,
        chunks: size.div_ceil(cs),
        differing_chunks: 0,
        first_difference: None,
    };
    let step = COMPARE_READ / cs * cs;
    let mut differing = Vec::new();
    let mut at = 0;
    while at < size {
        let len = step.min(size - at);
        let data = client
            .read(at, len as u32)
            .await
            .map_err(|e| SyncError::Invalid(format!("reading {}: {e}", path.display())))?;
        for (i, chunk) in data.chunks(cs as usize).enumerate() {
            let slot = at / cs + i as u64;
            if !reader.chunk_matches(disk, slot, chunk).await? {
                report.differing_chunks += 1;
                report.first_difference.get_or_insert(slot * cs);
                differing.push(slot);
            }
        }
        at += len;
    }
    let _ = client.disconnect().await;
    let _ = child.kill().await;
    Ok((report, differing))
}

/// A new 0700 directory in the system's temporary folder, with a random name made
/// atomically (nobody can place it first), removed when dropped: it holds a socket that
/// serves a VM's disk and staged disk data.
fn private_temp_dir(what: &str) -> Result<tempfile::TempDir, SyncError> {
    tempfile::Builder::new()
        .prefix(&format!("lifeboat-{what}-"))
        .tempdir()
        .map_err(|e| SyncError::Invalid(format!("creating a temporary directory: {e}")))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyPointRequest {
    /// The job's id, chosen by the server: asking again with it answers the same job.
    pub job_id: String,
    pub vault: crate::sync::VaultAccess,
    pub point: String,
    /// The point name this VM's replication writes under (recorded as its last point).
    pub point_name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DiskApplied {
    pub disk: String,
    pub chunks: u64,
    /// Chunks that differed from the point and were written from it.
    pub written_chunks: u64,
    pub written_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyReport {
    pub disks: Vec<DiskApplied>,
    /// After writing, every disk was compared again and equals the point.
    pub equal: bool,
}

/// Most bytes staged in files for one `qemu-io` run.
const APPLY_BATCH: u64 = 64 << 20;

/// Makes the stopped VM's disks equal to `point`, writing only the chunks that differ
/// (the failback's last step at home: the recovery site's writes, and this host's own
/// diverged writes, which are overwritten). Proves the result equal by digest.
pub async fn apply_point(
    driver: &Driver,
    vault: &Vault,
    vm: &VmName,
    req: &ApplyPointRequest,
    records: &Records,
) -> Result<ApplyReport, SyncError> {
    if driver.state(vm).await? != lifeboat_hypervisor::VmState::Stopped {
        return Err(SyncError::Invalid(format!(
            "{vm} runs here: a point is applied to a stopped VM only"
        )));
    }
    let point: PointId = req
        .point
        .parse()
        .map_err(|e| SyncError::Invalid(format!("point {}: {e}", req.point)))?;
    let found = vault.find_point(&point).await?;
    let reader = PointReader::open(vault, &found, 16 << 20).await?;
    let spec = driver.spec(vm).await?;
    let mut disks = Vec::new();
    let mut equal = true;
    for d in &spec.disks {
        let disk = Name::new(d.name.as_str()).map_err(|e| SyncError::Invalid(e.to_string()))?;
        let (before, slots) = compare_disk(&reader, &disk, &d.path, d.format).await?;
        let (_, cs) = reader.disk_layout(&disk)?;
        let written_bytes = write_chunks(
            &reader,
            &disk,
            &d.path,
            d.format,
            u64::from(cs),
            before.size,
            &slots,
        )
        .await?;
        crate::failpoint::reached("agent-apply-written").await;
        let (after, _) = compare_disk(&reader, &disk, &d.path, d.format).await?;
        equal &= after.differing_chunks == 0;
        disks.push(DiskApplied {
            disk: d.name.to_string(),
            chunks: before.chunks,
            written_chunks: slots.len() as u64,
            written_bytes,
        });
    }
    if equal {
        // This host's disks are the point now: tracking starts afresh here and
        // replication builds on the point, so the first sync after `reprotect` is an
        // incremental even when the old bitmaps were lost (a fenced QEMU was killed).
        driver.track_afresh(vm).await?;
        records.set_last_point(vm, &req.point)?;
    }
    tracing::info!(%vm, point = %req.point, equal, "point applied to the stopped VM");
    Ok(ApplyReport { disks, equal })
}

/// Writes chunks `slots` of the point into the image with `qemu-io`, runs of neighbouring
/// chunks at once, in batches of at most `APPLY_BATCH` staged bytes.
async fn write_chunks(
    reader: &PointReader,
    disk: &Name,
    path: &Path,
    format: DiskFormat,
    cs: u64,
    size: u64,
    slots: &[u64],
) -> Result<u64, SyncError> {
    // Runs of consecutive slots, each at most 4 MiB.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &s in slots {
        match runs.last_mut() {
            Some((start, n)) if *start + *n == s && *n * cs < 4 << 20 => *n += 1,
            _ => runs.push((s, 1)),
        }
    }
    let mut dir = private_temp_dir("apply")?;
    let mut written = 0;
    let mut batch: Vec<String> = Vec::new();
    let mut staged = 0u64;
    for (i, (start, n)) in runs.iter().enumerate() {
        let offset = start * cs;
        let len = (n * cs).min(size - offset);
        let data = reader.read_at(disk, offset, len as usize).await?;
        if data.iter().all(|b| *b == 0) {
            batch.push(format!("write -z {offset} {len}"));
        } else {
            let file = dir.path().join(format!("run-{i}"));
            lifeboat_hypervisor::private::write_private(&file, &data)?;
            batch.push(format!("write -s {} {offset} {len}", file.display()));
            staged += len;
        }
        written += len;
        if staged >= APPLY_BATCH || batch.len() >= 256 || i + 1 == runs.len() {
            run_qemu_io(path, format, &batch).await?;
            batch.clear();
            staged = 0;
            // The staged runs go at once: a batch's bytes on disk, not the whole delta.
            dir = private_temp_dir("apply")?;
        }
    }
    Ok(written)
}

async fn run_qemu_io(
    path: &Path,
    format: DiskFormat,
    commands: &[String],
) -> Result<(), SyncError> {
    let mut c = tokio::process::Command::new("qemu-io");
    c.args(["-f", format.as_str()]);
    for cmd in commands {
        c.arg("-c").arg(cmd);
    }
    let out =
        c.arg(path).output().await.map_err(|e| {
            SyncError::Invalid(format!("running qemu-io: {e} (install qemu-utils)"))
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // qemu-io exits 0 even when a command fails; each failure is printed.
    if !out.status.success() || stdout.contains("failed") {
        return Err(SyncError::Invalid(format!(
            "writing {} with qemu-io: {} {}",
            path.display(),
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
