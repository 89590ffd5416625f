//! One sync of a VM into a vault: a consistent cut of all its disks, shipped as a recovery
//! point (DESIGN.md, "Changed-block tracking" and "The vault").
//!
//! Which cut:
//! - tracked, and the vault has a newest point → incremental, on top of that point;
//! - never tracked and no point → full;
//! - tracking lost (a bitmap missing or inconsistent after a crash), or tracked but the
//!   vault has no point to build on → *resync*: tracking restarts with a full cut, every
//!   allocated block is read and only the chunks whose digest differs from the newest
//!   point's are stored. Never a silent gap.
//!
//! The parent is always the vault's newest point of the VM. That point's cut is at or after
//! the last committed cut, because a cut is committed only after its point: so "parent +
//! what changed since the last committed cut" is the disk at this cut.
//!
//! Order of commits: the point's manifest, then the agent's journal, then the cut. A crash
//! between them leaves the next cut carrying those changes again, never missing them.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use lifeboat_hypervisor::{Cut, DiskName, Driver, Hypervisor, TrackingStatus, VmName};
use lifeboat_vault::format::manifest::Manifest;
use lifeboat_vault::format::{Consistency, KeyFile, Name};
use lifeboat_vault::{align_to_chunks, DiskLayout, PointOptions, PointRef, PointWriter, Vault};

use crate::sealing::SealingKey;
use crate::secret::Secret;
use crate::sync::{Progress, SyncKind, SyncResult, VaultAccess};

/// Bytes read from the cut per write to the vault: whole chunks, a few MiB.
const READ_PIECE: u64 = 4 << 20;
/// Reads of the cut in flight at once.
const READS_IN_FLIGHT: usize = 2;
/// How long the guest's agent has to answer a freeze or thaw.
const GUEST_AGENT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Hypervisor(#[from] lifeboat_hypervisor::HypervisorError),
    #[error("vault: {0}")]
    Vault(#[from] lifeboat_vault::VaultError),
    #[error("{0}")]
    Invalid(String),
    #[error("a disk changed size or name since the newest point; the next sync resyncs")]
    Reshaped,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What this agent last wrote for each VM: the point an incremental must build on.
/// One small file per VM under `HOME/agent/replicated`.
pub struct Records {
    dir: std::path::PathBuf,
}

impl Records {
    pub fn open(agent_home: &std::path::Path) -> std::io::Result<Records> {
        let dir = agent_home.join("replicated");
        lifeboat_hypervisor::private::private_dir(&dir)?;
        Ok(Records { dir })
    }

    pub fn last_point(&self, vm: &VmName) -> Option<String> {
        std::fs::read_to_string(self.dir.join(vm.as_str()))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub fn set_last_point(&self, vm: &VmName, point: &str) -> Result<(), SyncError> {
        // VM names have no dots, so the helper's `NAME.tmp` is never another VM's file.
        let path = self.dir.join(vm.as_str());
        Ok(lifeboat_hypervisor::qemu::layout::write_atomically(
            &path,
            point.as_bytes(),
        )?)
    }

    /// Forgets `vm` (replication disabled): its next protection starts from a resync.
    pub fn forget(&self, vm: &VmName) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(vm.as_str())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// How one sync runs: whether it freezes the guest, its bandwidth cap.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncOptions {
    pub app_consistent: bool,
    /// Bytes per second the sync may read at most.
    pub max_rate: Option<u64>,
}

/// Syncs `vm` into `vault` as a point of `name`. It deletes nothing: retention is the
/// server's.
pub async fn sync_vm(
    driver: &Driver,
    vault: &Vault,
    vm: &VmName,
    name: &Name,
    opts: &SyncOptions,
    records: &Records,
    progress: &Progress,
) -> Result<SyncResult, SyncError> {
    let SyncOptions {
        app_consistent,
        max_rate,
    } = *opts;
    let started = Instant::now();
    let state = driver.state(vm).await?;
    // Held: started with its CPUs held for the final cut of a stopped VM (`handover`).
    let cuttable = state == lifeboat_hypervisor::VmState::Running || state.held();
    if !cuttable {
        return Err(SyncError::Invalid(format!(
            "VM {vm} is not running ({state:?}): a sync reads a running VM; start it (`lifeboat vm start {vm}`)"
        )));
    }
    // A guest a dead agent left frozen writes nothing: thaw it before anything else.
    driver.thaw_guest(vm, GUEST_AGENT_LIMIT).await?;
    progress.set_phase("cutting");
    let parent = usable_parent(vault, name).await?;
    let (kind, note) = match driver.tracking_status(vm).await? {
        TrackingStatus::NotTracking if parent.is_none() => (SyncKind::Full, None),
        TrackingStatus::NotTracking => (
            SyncKind::Resync,
            Some("the VM was not tracked although the vault has points of it".to_string()),
        ),
        TrackingStatus::NeedsFullResync { reason } => (SyncKind::Resync, Some(reason)),
        TrackingStatus::Tracking { .. } | TrackingStatus::CutOpen { .. } if parent.is_none() => (
            SyncKind::Resync,
            Some("the VM is tracked but the vault has no point of it to build on".to_string()),
        ),
        TrackingStatus::Tracking { .. } | TrackingStatus::CutOpen { .. } => {
            // The bitmaps hold what changed since this agent's last point; building on
            // any other point (a clock that stepped back, a point deleted or written by
            // someone else) would miss writes.
            let newest = parent.as_ref().map(|p| p.point.to_string());
            match records.last_point(vm) {
                Some(mine) if Some(&mine) == newest.as_ref() => (SyncKind::Incremental, None),
                mine => (
                    SyncKind::Resync,
                    Some(format!(
                        "the vault's newest point ({}) is not the one this agent last wrote ({})",
                        newest.unwrap_or_default(),
                        mine.unwrap_or_else(|| "none recorded".into())
                    )),
                ),
            }
        }
    };
    if let Some(n) = &note {
        tracing::warn!(vm = %vm, reason = %n, "full resync by digest comparison");
    }
    if kind == SyncKind::Resync {
        driver.reset_tracking(vm).await?;
    }
    // App-consistent: the filesystems are frozen (flushed, no writes) while the cut
    // begins, and thawed before anything is copied. That stretch runs in its own task, so
    // a cancelled sync cannot stop between the freeze and the thaw.
    let mut note = note;
    if app_consistent {
        progress.set_phase("freezing the guest's filesystems");
    }
    let (cut_time, cut, frozen, thawed) = {
        let driver = driver.clone();
        let vm = vm.clone();
        tokio::spawn(async move {
            let frozen = if app_consistent {
                driver.freeze_guest(&vm, GUEST_AGENT_LIMIT).await?.is_some()
            } else {
                false
            };
            // Taken before the cut begins: every write the guest completed before this
            // time is in the cut.
            let cut_time = Utc::now();
            let cut = match kind {
                SyncKind::Incremental => driver.begin_incremental_cut(&vm).await,
                SyncKind::Full | SyncKind::Resync => driver.begin_full_cut(&vm).await,
            };
            let thawed = if frozen {
                driver.thaw_guest(&vm, GUEST_AGENT_LIMIT).await
            } else {
                Ok(())
            };
            Ok::<_, lifeboat_hypervisor::HypervisorError>((cut_time, cut, frozen, thawed))
        })
        .await
        .map_err(|e| SyncError::Invalid(format!("the cut's task failed: {e}")))??
    };
    let cut = cut?;
    if let Err(e) = thawed {
        let _ = cut.abort().await;
        return Err(e.into());
    }
    if app_consistent && !frozen {
        note.get_or_insert_with(|| {
            "no qemu-guest-agent answered; the point is crash-consistent".to_string()
        });
    }
    let consistency = if frozen {
        Consistency::App
    } else {
        Consistency::Crash
    };
    let mut spec = driver.spec(vm).await?;
    // The VM's own seed travels as bytes; the path means nothing on another host.
    // Up to 16 MiB read and compressed: off the async workers.
    let (guest_seed, note) = {
        let (path, mut note) = (spec.seed.take(), note);
        tokio::task::spawn_blocking(move || (carried_seed(path, &mut note), note))
            .await
            .map_err(|e| SyncError::Invalid(format!("reading the VM's seed: {e}")))?
    };
    match write_point(
        vault,
        name,
        parent,
        &cut,
        &Job {
            kind,
            vm_config: spec.to_toml().into_bytes(),
            guest_seed,
            cut_time,
            consistency,
            max_rate,
            progress,
        },
    )
    .await
    {
        Ok((point, stats)) => {
            // The point exists: remember it as the base of the next incremental, then
            // commit the cut so its changes are not carried again. A crash between the
            // two carries them again on top of this point, which is harmless.
            records.set_last_point(vm, &point.point.to_string())?;
            progress.set_phase("committing the cut");
            cut.commit().await?;
            // Agents only add points: retention is the server's (it deletes with its
            // own storage credentials, docs/security.md).
            let points = vault
                .list_points(Some(name))
                .await
                .map(|ps| ps.into_iter().map(|p| p.point.to_string()).collect())
                .unwrap_or_else(|_| vec![point.point.to_string()]);
            Ok(SyncResult {
                point: point.point.to_string(),
                parent: stats.parent,
                kind,
                cut_time,
                consistency: match consistency {
                    Consistency::App => "app",
                    Consistency::Crash => "crash",
                }
                .into(),
                bytes_read: stats.bytes_read,
                new_bytes_stored: stats.new_bytes_stored,
                seconds: started.elapsed().as_secs_f64(),
                points,
                note,
            })
        }
        Err(e) => {
            if let Err(abort) = cut.abort().await {
                tracing::warn!(vm = %vm, error = %abort, "aborting the cut; the next cut will");
            }
            if matches!(e, SyncError::Reshaped) {
                // Bitmaps follow a resized disk; the newest point does not. Only a resync
                // can build a correct point now.
                driver.reset_tracking(vm).await?;
            }
            Err(e)
        }
    }
}

/// The VM's own cloud-init seed image at `path`, packed to travel in its point: a copy
/// recovered without it would boot as a new cloud-init instance and lose what the seed
/// configures (a static address falls back to DHCP). A seed that cannot be read or is too
/// large to carry does not fail the sync: the point goes without it and `note` says so.
fn carried_seed(path: Option<std::path::PathBuf>, note: &mut Option<String>) -> Option<Vec<u8>> {
    use std::io::Read;
    let path = path?;
    let limit = lifeboat_vault::format::manifest::MAX_GUEST_SEED as u64;
    let mut image = Vec::new();
    let packed = std::fs::File::open(&path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut image))
        .map_err(|e| e.to_string())
        .and_then(|_| Manifest::pack_guest_seed(&image).map_err(|e| e.to_string()));
    match packed {
        Ok(p) => Some(p),
        Err(why) => {
            let line = format!(
                "the VM's cloud-init seed {} is not carried: {why}; a copy recovered from \
                 this point boots without it",
                path.display()
            );
            *note = Some(match note.take() {
                Some(n) => format!("{n}; {line}"),
                None => line,
            });
            None
        }
    }
}

/// What one sync is: its kind, when its cut was taken, its bandwidth cap, its progress.
struct Job<'a> {
    kind: SyncKind,
    /// The VM's spec (TOML), kept in the point so the recovery host can rebuild the VM.
    vm_config: Vec<u8>,
    /// The VM's own cloud-init seed, packed for the point (`carried_seed`).
    guest_seed: Option<Vec<u8>>,
    cut_time: chrono::DateTime<Utc>,
    consistency: Consistency,
    max_rate: Option<u64>,
    progress: &'a Progress,
}

struct WriteStats {
    parent: Option<String>,
    bytes_read: u64,
    new_bytes_stored: u64,
}

async fn write_point<C: Cut>(
    vault: &Vault,
    name: &Name,
    parent: Option<PointRef>,
    cut: &C,
    job: &Job<'_>,
) -> Result<(PointRef, WriteStats), SyncError> {
    let (kind, cut_time, progress) = (job.kind, job.cut_time, job.progress);
    let disks: Vec<(DiskName, Name, u64)> = cut
        .disks()
        .iter()
        .map(|d| {
            Name::new(d.name.as_str())
                .map(|n| (d.name.clone(), n, d.size))
                .map_err(|e| SyncError::Invalid(format!("disk {}: {e}", d.name)))
        })
        .collect::<Result<_, _>>()?;
    let mut writer = PointWriter::begin(
        vault,
        PointOptions {
            name: name.clone(),
            parent: parent.clone(),
            consistency: job.consistency,
            vm_config: Some(job.vm_config.clone()),
            guest_seed: job.guest_seed.clone(),
            disks: disks
                .iter()
                .map(|(_, n, size)| DiskLayout {
                    name: n.clone(),
                    size: *size,
                    cut_time,
                })
                .collect(),
        },
    )
    .await?;
    let result = fill(&mut writer, cut, &disks, job).await;
    let bytes_read = match result {
        Ok(n) => n,
        Err(e) => {
            writer.abort().await;
            return Err(e);
        }
    };
    if kind == SyncKind::Incremental && disks.iter().any(|(_, n, _)| !writer.has_parent(n)) {
        writer.abort().await;
        return Err(SyncError::Reshaped);
    }
    progress.set_phase("committing the point");
    let manifest = writer.commit().await?;
    Ok((
        PointRef {
            name: manifest.name.clone(),
            point: manifest.point,
        },
        WriteStats {
            parent: parent.map(|p| p.point.to_string()),
            bytes_read,
            new_bytes_stored: manifest.stats.new_bytes_stored,
        },
    ))
}

/// Writes the cut's extents of every disk into the point; returns the bytes read.
async fn fill<C: Cut>(
    writer: &mut PointWriter,
    cut: &C,
    disks: &[(DiskName, Name, u64)],
    job: &Job<'_>,
) -> Result<u64, SyncError> {
    let (kind, max_rate, progress) = (job.kind, job.max_rate, job.progress);
    let started = Instant::now();
    let cs = writer.chunk_size();
    let mut plans = Vec::with_capacity(disks.len());
    for (disk, name, size) in disks {
        let extents = cut.changed_extents(disk).await?;
        let ranges: Vec<(u64, u64)> = extents.iter().map(|e| (e.offset, e.length)).collect();
        let ranges = align_to_chunks(&ranges, cs, *size);
        // A full cut on top of a parent must also clear what the parent holds in the
        // holes; without a parent the point starts as all holes.
        let fill_holes = kind != SyncKind::Incremental && writer.has_parent(name);
        plans.push((disk, name, *size, ranges, fill_holes));
    }
    let total: u64 = plans.iter().flat_map(|p| p.3.iter().map(|r| r.1)).sum();
    progress.total.store(total, Ordering::Relaxed);
    progress.set_phase("copying");
    let piece = READ_PIECE.max(cs) / cs * cs;
    let mut read_bytes = 0u64;
    for (disk, name, size, ranges, fill_holes) in plans {
        let pieces = split(&ranges, piece);
        let mut reads = futures::stream::iter(pieces)
            .map(|(pos, len)| async move {
                let data = cut.read(disk, pos, len as u32).await?;
                Ok::<(u64, Bytes), SyncError>((pos, data))
            })
            .buffered(READS_IN_FLIGHT);
        let mut at = 0u64;
        while let Some(r) = reads.next().await {
            let (pos, data) = r?;
            if fill_holes && pos > at {
                writer.write_zeroes(name, at, pos - at).await?;
            }
            let n = data.len() as u64;
            at = pos + n;
            writer.write(name, pos, data).await?;
            read_bytes += n;
            progress.done.fetch_add(n, Ordering::Relaxed);
            // The operator's bandwidth cap: never ahead of `max_rate` bytes per second.
            if let Some(rate) = max_rate.filter(|r| *r > 0) {
                let due = std::time::Duration::from_secs_f64(read_bytes as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
        if fill_holes && at < size {
            writer.write_zeroes(name, at, size - at).await?;
        }
    }
    Ok(read_bytes)
}

/// Ranges cut into pieces of at most `piece` bytes (`piece` a multiple of the chunk size).
fn split(ranges: &[(u64, u64)], piece: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, len) in ranges {
        let mut pos = start;
        while pos < start + len {
            let n = piece.min(start + len - pos);
            out.push((pos, n));
            pos += n;
        }
    }
    out
}

/// How far in the future a point id may be dated and still be built on (clocks differ).
const FUTURE_SLACK: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The newest point of `name` that can be built on: one whose manifest opens with this
/// VM's key and that is not dated in the future. Anyone with create rights in the vault
/// can add an object under this VM's name; a point that does not open (or claims a time
/// to come, so it would stay newest) is skipped with a warning, never built on — building
/// on it would fail every sync from now on.
async fn usable_parent(vault: &Vault, name: &Name) -> Result<Option<PointRef>, SyncError> {
    let latest_allowed = Utc::now() + FUTURE_SLACK;
    for p in vault.list_points(Some(name)).await?.into_iter().rev() {
        if p.point.time() > latest_allowed {
            tracing::warn!(name = %name, point = %p.point, "a point dated in the future is not built on");
            continue;
        }
        match vault.manifest(&p).await {
            Ok(_) => return Ok(Some(p)),
            Err(lifeboat_vault::VaultError::Format(e)) => {
                tracing::warn!(name = %name, point = %p.point, error = %e, "a point that does not open with this VM's key is not built on (damaged, or put there by someone else)");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// A VM's name from the API's path, checked.
pub fn vm_name(text: &str) -> Result<VmName, SyncError> {
    VmName::new(text).map_err(|e| SyncError::Invalid(e.to_string()))
}

/// Opened vaults, by URL and a digest of what unlocked them: opening one with a passphrase
/// derives its key with argon2id, which is too slow to do for every sync. Each key has its
/// own cell, so a slow or unreachable vault delays only the syncs that use it. Sealed keys
/// are opened with the agent's sealing key, which the cache holds.
pub struct VaultCache {
    sealing: std::sync::Arc<SealingKey>,
    open: std::sync::Mutex<std::collections::HashMap<VaultKey, VaultCell>>,
}

/// A vault's URL and the SHA-256 of its sealed key or passphrase.
type VaultKey = (String, [u8; 32]);
/// Opened once, by the first sync that needs it.
type VaultCell = std::sync::Arc<tokio::sync::OnceCell<Vault>>;

impl VaultCache {
    pub fn new(sealing: std::sync::Arc<SealingKey>) -> VaultCache {
        VaultCache {
            sealing,
            open: Default::default(),
        }
    }

    pub async fn open(&self, access: &VaultAccess) -> Result<Vault, SyncError> {
        let url = access.url.as_str();
        #[derive(Clone, Copy)]
        enum Key<'a> {
            Sealed(&'a str),
            Passphrase(&'a Secret),
        }
        let key = match (&access.sealed_key, &access.passphrase) {
            (Some(sealed), _) => Key::Sealed(sealed),
            (None, Some(p)) => Key::Passphrase(p),
            (None, None) => {
                return Err(SyncError::Invalid(format!(
                "no key for vault {url}: the request carries neither a sealed key nor a passphrase"
            )))
            }
        };
        let material = match key {
            Key::Sealed(s) => s.as_bytes(),
            Key::Passphrase(p) => p.expose().as_bytes(),
        };
        let digest: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, material)
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let cell = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((url.to_string(), digest))
            .or_default()
            .clone();
        let vault = cell
            .get_or_try_init(|| async {
                let unlock = match key {
                    Key::Sealed(sealed) => {
                        lifeboat_vault::Unlock::KeyFile(self.unseal(url, sealed)?)
                    }
                    Key::Passphrase(p) => {
                        lifeboat_vault::Unlock::Passphrase(p.expose().to_string())
                    }
                };
                Ok::<Vault, SyncError>(Vault::open(backend(url).await?, unlock).await?)
            })
            .await?;
        Ok(vault.clone())
    }

    /// The vault key file inside `sealed` (base64 of a message sealed to this agent).
    fn unseal(&self, url: &str, sealed: &str) -> Result<KeyFile, SyncError> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| {
                SyncError::Invalid(format!("vault {url}: the sealed key is not base64"))
            })?;
        let plain = self
            .sealing
            .open(&bytes)
            .map_err(|e| SyncError::Invalid(format!("vault {url}: {e}")))?;
        KeyFile::decode(&plain)
            .map_err(|e| SyncError::Invalid(format!("vault {url}: the sealed key: {e}")))
    }

    /// Unlocks the vault at `url` with the operator's `passphrase` and seals a key to this
    /// agent: what the server keeps instead of the passphrase (base64). In a vault with a
    /// key per VM that is the key of the points named `scope` only; the master key is
    /// dropped here and never leaves this call.
    pub async fn seal_key(
        &self,
        url: &str,
        passphrase: &Secret,
        scope: Option<&str>,
    ) -> Result<String, SyncError> {
        use base64::Engine;
        let config = Vault::read_config(&backend(url).await?).await?;
        let scope: Option<Name> = match scope {
            Some(s) => Some(s.parse().map_err(|e| {
                SyncError::Invalid(format!("vault {url}: the VM's point name {s:?}: {e}"))
            })?),
            None if config.scoped() => {
                return Err(SyncError::Invalid(format!(
                    "vault {url} has a key per VM, and the request names no VM whose key to seal \
                     (a server older than this agent?): upgrade the server"
                )))
            }
            None => None,
        };
        let pass = passphrase.expose().to_string();
        // Argon2 is deliberately slow: off the async workers.
        let key_file = tokio::task::spawn_blocking(move || {
            let master = config.unlock(&pass)?;
            match scope {
                Some(name) if config.scoped() => KeyFile::scope(&config, &master, &name),
                // Format 1: every VM shares the master key's sub-keys.
                _ => KeyFile::new(&config, master),
            }
        })
        .await
        .map_err(|e| SyncError::Invalid(format!("unlocking vault {url}: {e}")))?
        .map_err(|e| SyncError::Invalid(format!("vault {url}: {e}")))?;
        let mut plain = key_file.encode();
        let sealed = crate::sealing::seal(&self.sealing.public(), &plain)
            .map_err(|e| SyncError::Invalid(e.to_string()));
        zeroize::Zeroize::zeroize(&mut plain);
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed?))
    }
}

/// The storage behind the vault at `url`.
async fn backend(url: &str) -> Result<lifeboat_vault::backend::Backend, SyncError> {
    let parsed = lifeboat_vault::backend::VaultUrl::parse(url)
        .map_err(|e| SyncError::Invalid(format!("vault URL {url}: {e}")))?;
    lifeboat_vault::backend::Backend::open(&parsed, Default::default())
        .await
        .map_err(|e| SyncError::Invalid(format!("vault {url}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::{carried_seed, split, usable_parent};

    #[test]
    fn a_vms_own_seed_is_carried_and_one_that_cannot_be_is_noted() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.img");
        let mut image = vec![0u8; 1 << 20];
        image[4096..4110].copy_from_slice(b"instance-id: w");
        std::fs::write(&seed, &image).unwrap();
        let mut note = None;
        let packed = carried_seed(Some(seed.clone()), &mut note).unwrap();
        assert_eq!(note, None);
        assert_eq!(zstd::bulk::decompress(&packed, 2 << 20).unwrap(), image);
        assert_eq!(carried_seed(None, &mut note), None);
        assert_eq!(note, None, "a VM without a seed has nothing to say");

        // Gone, or too large: the sync goes on without it and its note says why.
        let mut note = Some("no qemu-guest-agent answered".to_string());
        assert_eq!(
            carried_seed(Some(dir.path().join("gone.img")), &mut note),
            None
        );
        let note = note.unwrap();
        assert!(
            note.starts_with("no qemu-guest-agent answered; the VM's cloud-init seed")
                && note.contains("gone.img is not carried"),
            "{note}"
        );
        let big = dir.path().join("big.img");
        std::fs::File::create(&big)
            .unwrap()
            .set_len((16 << 20) + 1)
            .unwrap();
        let mut note = None;
        assert_eq!(carried_seed(Some(big), &mut note), None);
        assert!(note.unwrap().contains("boots without it"));
    }
    use bytes::Bytes;
    use lifeboat_vault::backend::{Backend, VaultUrl};
    use lifeboat_vault::format::{self, KdfParams, Name, PointId};
    use lifeboat_vault::{PointOptions, PointWriter, Vault};

    /// Someone with create rights puts junk, and a point dated years ahead, under a VM's
    /// name: the next sync builds on the VM's real newest point, not on those (which would
    /// fail every sync from then on).
    #[tokio::test]
    async fn forged_or_future_points_are_not_built_on() {
        let tmp = tempfile::tempdir().unwrap();
        let url = VaultUrl::parse(&format!("file://{}", tmp.path().display())).unwrap();
        let backend = Backend::open(&url, Default::default()).await.unwrap();
        let fast = KdfParams::INSECURE_FAST;
        let (vault, _) = Vault::init(backend, "pw", 64 << 10, fast).await.unwrap();
        let web: Name = "web1".parse().unwrap();
        let vda: Name = "vda".parse().unwrap();
        let opts = PointOptions::one_disk(web.clone(), None, vda.clone(), 1 << 20);
        let mut w = PointWriter::begin(&vault, opts).await.unwrap();
        w.write(&vda, 0, Bytes::from(vec![7u8; 64 << 10]))
            .await
            .unwrap();
        let real = w.commit().await.unwrap();
        assert_eq!(
            usable_parent(&vault, &web).await.unwrap().unwrap().point,
            real.point
        );

        let soon = real.point.time().timestamp_millis() as u64 + 1000;
        let junk = format::manifest_key(&web, &PointId::from_parts(soon, 1).unwrap());
        vault
            .backend()
            .put_if_absent(&junk, Bytes::from_static(b"junk"))
            .await
            .unwrap();
        // A well-formed point of this very VM, but claiming a time years ahead.
        let mut future = vault
            .manifest(&lifeboat_vault::PointRef {
                name: web.clone(),
                point: real.point,
            })
            .await
            .unwrap();
        future.point = PointId::from_parts(4_000_000_000_000, 2).unwrap();
        let (key, sealed) = format::seal_manifest(&vault.keys_for(&web).unwrap(), &future).unwrap();
        vault
            .backend()
            .put_if_absent(&key, Bytes::from(sealed))
            .await
            .unwrap();
        assert_eq!(vault.list_points(Some(&web)).await.unwrap().len(), 3);
        assert_eq!(
            usable_parent(&vault, &web).await.unwrap().unwrap().point,
            real.point
        );
    }

    #[test]
    fn ranges_split_into_pieces() {
        assert_eq!(
            split(&[(0, 10), (20, 3)], 4),
            vec![(0, 4), (4, 4), (8, 2), (20, 3)]
        );
    }
}
