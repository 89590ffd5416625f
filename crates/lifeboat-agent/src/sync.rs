//! Syncs: what the server asks for and what the agent reports (the API's types), and the
//! registry of the syncs this agent runs.
//!
//! A sync is named by the id the server gives it, so asking twice for the same sync starts
//! it once: the server may not know whether its first request arrived. One sync runs per
//! VM at a time. A finished sync is written to `HOME/agent/syncs/ID.json` before its cut is
//! committed, so an agent that restarts still answers for it; a sync that was running when
//! the agent died is unknown afterwards, and the server starts a new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::SyncId;

/// Finished syncs kept in the journal; older ones are deleted.
const JOURNAL_KEEP: usize = 500;

/// How the agent opens a vault: with the vault's key sealed to this agent (`sealed_key`,
/// what the server keeps; `sealing`), or, only when protection is being enabled, with the
/// operator's passphrase, from which the agent seals the key to itself (the vault check).
/// `Debug` hides the passphrase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VaultAccess {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<crate::secret::Secret>,
    /// Base64 of the vault's key file sealed to this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_key: Option<String>,
    /// With a passphrase: the point name of the VM whose key the agent seals to itself.
    /// In a vault with a key per VM (format 2) the agent seals that VM's key only, never
    /// the master key, and refuses to seal without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl VaultAccess {
    /// With the key sealed to the agent that is asked.
    pub fn sealed(url: &str, sealed_key: &str) -> VaultAccess {
        VaultAccess {
            url: url.to_string(),
            passphrase: None,
            sealed_key: Some(sealed_key.to_string()),
            scope: None,
        }
    }

    /// With the operator's passphrase (enabling protection), to seal the key of the
    /// points named `scope`.
    pub fn passphrase(url: &str, passphrase: &crate::secret::Secret, scope: &str) -> VaultAccess {
        VaultAccess {
            url: url.to_string(),
            passphrase: Some(passphrase.clone()),
            sealed_key: None,
            scope: Some(scope.to_string()),
        }
    }
}

/// How long points are kept (see `lifeboat vault prune`); all `None` keeps every point.
/// Applied by the server, never by an agent (agents only add points).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retention {
    pub keep_within_secs: Option<u64>,
    pub keep_hourly_secs: Option<u64>,
    pub keep_daily_secs: Option<u64>,
}

impl Retention {
    /// The vault's prune policy for these settings.
    pub fn policy(&self) -> lifeboat_vault::store::RetentionPolicy {
        let secs = |s: Option<u64>| s.map(std::time::Duration::from_secs);
        lifeboat_vault::store::RetentionPolicy {
            keep_within: secs(self.keep_within_secs),
            keep_hourly: secs(self.keep_hourly_secs),
            keep_daily: secs(self.keep_daily_secs),
            keep_weekly: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Chosen by the server; asking again with the same id returns the same sync.
    pub sync_id: String,
    pub vault: VaultAccess,
    /// The name the VM's points have in the vault.
    pub point_name: String,
    /// Freeze the guest's filesystems through its qemu-guest-agent for the cut; without
    /// an agent answering, the point is crash-consistent (the result says which).
    #[serde(default)]
    pub app_consistent: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyncKind {
    /// The first sync: every allocated block.
    Full,
    /// Only the blocks written since the previous sync.
    Incremental,
    /// Tracking was lost (a bitmap missing or inconsistent after a crash): every allocated
    /// block was read and compared with the newest point; only what differs was stored.
    Resync,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncResult {
    pub point: String,
    pub parent: Option<String>,
    pub kind: SyncKind,
    /// When the cut was taken: every write the guest completed before it is in the point.
    pub cut_time: DateTime<Utc>,
    /// `crash` or `app`.
    pub consistency: String,
    pub bytes_read: u64,
    pub new_bytes_stored: u64,
    pub seconds: f64,
    /// Every point of this name left in the vault after retention, oldest first.
    pub points: Vec<String>,
    /// Why a full resync happened instead of an incremental, when it did.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SyncState {
    Running {
        phase: String,
        bytes_done: u64,
        bytes_total: u64,
    },
    Committed(SyncResult),
    Failed {
        error: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncStatus {
    pub sync_id: String,
    pub vm: String,
    pub started: DateTime<Utc>,
    #[serde(flatten)]
    pub state: SyncState,
}

/// Progress of a running sync, updated by the worker without a lock.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub phase: Mutex<String>,
}

impl Progress {
    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.to_string();
    }
}

enum Entry {
    Running {
        vm: String,
        started: DateTime<Utc>,
        progress: Arc<Progress>,
        task: tokio::task::AbortHandle,
    },
    Done(SyncStatus),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a sync of {vm} is running already ({sync_id}); wait for it")]
    Busy { vm: String, sync_id: String },
}

/// The syncs this agent knows: running ones in memory, finished ones also on disk.
pub struct Syncs {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Syncs {
    pub fn open(agent_home: &Path) -> std::io::Result<Syncs> {
        let dir = agent_home.join("syncs");
        lifeboat_hypervisor::private::private_dir(&dir)?;
        Ok(Syncs {
            dir,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status of `sync_id`: running, finished (from memory or the journal), or unknown.
    pub fn status(&self, sync_id: &SyncId) -> Option<SyncStatus> {
        if let Some(e) = self.lock().get(sync_id.as_str()) {
            return Some(match e {
                Entry::Running {
                    vm,
                    started,
                    progress,
                    ..
                } => SyncStatus {
                    sync_id: sync_id.to_string(),
                    vm: vm.clone(),
                    started: *started,
                    state: SyncState::Running {
                        phase: progress
                            .phase
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone(),
                        bytes_done: progress.done.load(Ordering::Relaxed),
                        bytes_total: progress.total.load(Ordering::Relaxed),
                    },
                },
                Entry::Done(s) => s.clone(),
            });
        }
        let bytes = std::fs::read(self.journal_path(sync_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The running sync of `vm`, if any.
    pub fn running_for(&self, vm: &str) -> Option<String> {
        self.lock().iter().find_map(|(id, e)| match e {
            Entry::Running { vm: v, .. } if v == vm => Some(id.clone()),
            _ => None,
        })
    }

    /// Registers a new running sync (or answers the one known by that id, unless it
    /// failed); `spawn` starts its worker with the progress to update.
    pub fn start(
        &self,
        sync_id: &SyncId,
        vm: &str,
        spawn: impl FnOnce(Arc<Progress>) -> tokio::task::AbortHandle,
    ) -> Result<SyncStatus, StartError> {
        // Running or committed: the same sync. One that failed is run again: the same id
        // asked again after a failure is a retry (an operation's step).
        if let Some(s) = self.status(sync_id) {
            if !matches!(s.state, SyncState::Failed { .. }) {
                return Ok(s);
            }
        }
        let mut entries = self.lock();
        let busy = entries.iter().find_map(|(id, e)| match e {
            Entry::Running { vm: v, .. } if v == vm => Some(id.clone()),
            _ => None,
        });
        if let Some(other) = busy {
            return Err(StartError::Busy {
                vm: vm.to_string(),
                sync_id: other,
            });
        }
        let progress = Arc::new(Progress::default());
        progress.set_phase("starting");
        let started = Utc::now();
        let task = spawn(progress.clone());
        entries.insert(
            sync_id.to_string(),
            Entry::Running {
                vm: vm.to_string(),
                started,
                progress,
                task,
            },
        );
        Ok(SyncStatus {
            sync_id: sync_id.to_string(),
            vm: vm.to_string(),
            started,
            state: SyncState::Running {
                phase: "starting".into(),
                bytes_done: 0,
                bytes_total: 0,
            },
        })
    }

    /// Records how a sync ended: on disk first (a committed point must stay known across
    /// a restart), then in memory.
    pub fn finish(&self, sync_id: &SyncId, state: SyncState) {
        let mut entries = self.lock();
        let (vm, started) = match entries.get(sync_id.as_str()) {
            Some(Entry::Running { vm, started, .. }) => (vm.clone(), *started),
            _ => return,
        };
        let status = SyncStatus {
            sync_id: sync_id.to_string(),
            vm,
            started,
            state,
        };
        let bytes = serde_json::to_vec_pretty(&status).unwrap_or_default();
        let path = self.journal_path(sync_id);
        if let Err(e) = lifeboat_hypervisor::qemu::layout::write_atomically(&path, &bytes) {
            tracing::error!(sync = %sync_id, error = %e, "could not journal a finished sync");
        }
        entries.insert(sync_id.to_string(), Entry::Done(status));
        // Memory holds the last few finished syncs; the journal holds more.
        let mut done: Vec<(DateTime<Utc>, String)> = entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Done(s) => Some((s.started, id.clone())),
                _ => None,
            })
            .collect();
        if done.len() > 64 {
            done.sort();
            for (_, id) in &done[..done.len() - 64] {
                entries.remove(id);
            }
        }
        drop(entries);
        self.trim_journal();
    }

    /// Stops the running sync of `vm` (its cut is aborted by the next one); true if one ran.
    pub fn cancel_vm(&self, vm: &str) -> bool {
        let mut entries = self.lock();
        let id = entries.iter().find_map(|(id, e)| match e {
            Entry::Running { vm: v, .. } if v == vm => Some(id.clone()),
            _ => None,
        });
        match id.and_then(|id| entries.remove(&id)) {
            Some(Entry::Running { task, .. }) => {
                task.abort();
                true
            }
            _ => false,
        }
    }

    /// A `SyncId` is a plain file name (`ids`), so this stays in the journal.
    fn journal_path(&self, sync_id: &SyncId) -> PathBuf {
        self.dir.join(format!("{sync_id}.json"))
    }

    fn trim_journal(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() > JOURNAL_KEEP {
            files.sort();
            for (_, p) in &files[..files.len() - JOURNAL_KEEP] {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sync_id_starts_once_and_a_vm_runs_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let syncs = Syncs::open(dir.path()).unwrap();
        let spawn = |_p: Arc<Progress>| tokio::spawn(std::future::pending::<()>()).abort_handle();
        let (a, b) = (SyncId::new("a").unwrap(), SyncId::new("b").unwrap());
        syncs.start(&a, "web", spawn).unwrap();
        // The same id again: the same sync, not a second one.
        assert!(matches!(
            syncs
                .start(&a, "web", |_| panic!("started twice"))
                .unwrap()
                .state,
            SyncState::Running { .. }
        ));
        // Another id for the same VM: refused while the first runs.
        assert!(matches!(
            syncs.start(&b, "web", spawn),
            Err(StartError::Busy { .. })
        ));
        syncs.finish(&a, SyncState::Failed { error: "x".into() });
        // Finished syncs are answered from the journal by a fresh registry (an agent restart).
        let again = Syncs::open(dir.path()).unwrap();
        assert!(matches!(
            again.status(&a).unwrap().state,
            SyncState::Failed { .. }
        ));
        assert!(again.status(&b).is_none());
        syncs.start(&b, "web", spawn).unwrap();
        assert!(syncs.cancel_vm("web"));
        assert!(syncs.running_for("web").is_none());
        // A failed sync asked again is run again (a retry), committed one is not.
        let mut ran = false;
        syncs
            .start(&a, "web", |p| {
                ran = true;
                spawn(p)
            })
            .unwrap();
        assert!(ran, "a failed sync asked again must run again");
        syncs.finish(&a, SyncState::Committed(committed()));
        assert!(matches!(
            syncs
                .start(&a, "web", |_| panic!("a committed sync ran twice"))
                .unwrap()
                .state,
            SyncState::Committed(_)
        ));
    }

    fn committed() -> SyncResult {
        SyncResult {
            point: "p".into(),
            parent: None,
            kind: SyncKind::Full,
            cut_time: Utc::now(),
            consistency: "crash".into(),
            bytes_read: 0,
            new_bytes_stored: 0,
            seconds: 0.0,
            points: vec![],
            note: None,
        }
    }
}
