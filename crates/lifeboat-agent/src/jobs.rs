//! The agent's long calls as jobs (DESIGN.md, "Operations"): a final sync, a point
//! written over a VM's disks, a provision, an ordered shutdown. The server starts one with an id of its choosing and
//! polls it; asking again with the same id returns the same job, running or finished, so
//! a step the server runs twice (after its own restart, or a lost answer) does the work
//! once: a final sync asked twice makes one point. A finished job is journaled on disk
//! (`HOME/agent/jobs/ID.json`) before it is reported, like a sync; a job that was running
//! when the agent died is unknown after its restart (404), and the server runs the step
//! again.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::JobId;

/// What a job is and how it stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: String,
    /// `final-sync`, `apply-point`, `provision` or `shutdown`.
    pub kind: String,
    pub vm: String,
    pub started: DateTime<Utc>,
    #[serde(flatten)]
    pub state: JobState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Running,
    /// Its answer, as the call's own (a `FinalSyncReport`, an `ApplyReport`).
    Succeeded {
        result: serde_json::Value,
    },
    /// Why, and the HTTP status the call would have answered.
    Failed {
        status: u16,
        error: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {job_id} is a {kind} of {vm}, not this request")]
    Mismatch {
        job_id: String,
        kind: String,
        vm: String,
    },
    #[error("a {kind} of {vm} runs already (job {job_id}); wait for it")]
    Busy {
        job_id: String,
        kind: String,
        vm: String,
    },
}

enum Entry {
    Running {
        kind: String,
        vm: String,
        started: DateTime<Utc>,
    },
    Done(JobStatus),
}

/// The jobs this agent knows: running ones in memory, finished ones also on disk.
pub struct Jobs {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Jobs {
    pub fn open(agent_home: &Path) -> std::io::Result<Jobs> {
        let dir = agent_home.join("jobs");
        lifeboat_hypervisor::private::private_dir(&dir)?;
        Ok(Jobs {
            dir,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `JobId` is a plain file name (`ids`), so this stays in the journal.
    fn journal_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The status of job `id`: running, finished (from memory or the journal), or unknown.
    pub fn status(&self, id: &JobId) -> Option<JobStatus> {
        if let Some(e) = self.lock().get(id.as_str()) {
            return Some(match e {
                Entry::Running { kind, vm, started } => JobStatus {
                    job_id: id.to_string(),
                    kind: kind.clone(),
                    vm: vm.clone(),
                    started: *started,
                    state: JobState::Running,
                },
                Entry::Done(s) => s.clone(),
            });
        }
        let bytes = std::fs::read(self.journal_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Starts `work` as job `id` (a `kind` of `vm`), or returns the job already known by
    /// that id, running or succeeded. A job that failed is run again: the same id asked
    /// again after a failure is a retry. One job per VM runs at a time.
    pub fn start<F>(
        self: &Arc<Self>,
        id: &JobId,
        kind: &str,
        vm: &str,
        work: F,
    ) -> Result<JobStatus, JobError>
    where
        F: Future<Output = Result<serde_json::Value, (u16, String)>> + Send + 'static,
    {
        // The journal is read outside the lock; what is in memory is decided under it,
        // so two requests with one id start one job.
        let journaled = if self.lock().contains_key(id.as_str()) {
            None
        } else {
            std::fs::read(self.journal_path(id))
                .ok()
                .and_then(|b| serde_json::from_slice::<JobStatus>(&b).ok())
        };
        let mut entries = self.lock();
        let known = match entries.get(id.as_str()) {
            Some(Entry::Running { kind, vm, started }) => Some(JobStatus {
                job_id: id.to_string(),
                kind: kind.clone(),
                vm: vm.clone(),
                started: *started,
                state: JobState::Running,
            }),
            Some(Entry::Done(s)) => Some(s.clone()),
            None => journaled,
        };
        if let Some(s) = known {
            if s.kind != kind || s.vm != vm {
                return Err(JobError::Mismatch {
                    job_id: id.to_string(),
                    kind: s.kind,
                    vm: s.vm,
                });
            }
            if !matches!(s.state, JobState::Failed { .. }) {
                return Ok(s);
            }
        }
        let busy = entries.iter().find_map(|(other, e)| match e {
            Entry::Running { vm: v, kind, .. } if v == vm => Some((other.clone(), kind.clone())),
            _ => None,
        });
        if let Some((other, kind)) = busy {
            return Err(JobError::Busy {
                job_id: other,
                kind,
                vm: vm.to_string(),
            });
        }
        let started = Utc::now();
        entries.insert(
            id.to_string(),
            Entry::Running {
                kind: kind.to_string(),
                vm: vm.to_string(),
                started,
            },
        );
        drop(entries);
        let (jobs, job) = (self.clone(), id.clone());
        tokio::spawn(async move {
            let state = match work.await {
                Ok(result) => JobState::Succeeded { result },
                Err((status, error)) => JobState::Failed { status, error },
            };
            jobs.finish(&job, state);
        });
        Ok(JobStatus {
            job_id: id.to_string(),
            kind: kind.to_string(),
            vm: vm.to_string(),
            started,
            state: JobState::Running,
        })
    }

    /// Records how a job ended: on disk first (its answer must stay known across a
    /// restart), then in memory.
    fn finish(&self, id: &JobId, state: JobState) {
        let mut entries = self.lock();
        let Some(Entry::Running { kind, vm, started }) = entries.remove(id.as_str()) else {
            return;
        };
        let status = JobStatus {
            job_id: id.to_string(),
            kind,
            vm,
            started,
            state,
        };
        let bytes = serde_json::to_vec_pretty(&status).unwrap_or_default();
        if let Err(e) =
            lifeboat_hypervisor::qemu::layout::write_atomically(&self.journal_path(id), &bytes)
        {
            tracing::error!(job = %id, error = %e, "could not journal a finished job");
        }
        entries.insert(id.to_string(), Entry::Done(status));
        // Memory holds the last few finished jobs; the journal holds them all until
        // trimmed (the newest 256 are kept).
        let done: usize = entries
            .values()
            .filter(|e| matches!(e, Entry::Done(_)))
            .count();
        if done > 64 {
            let mut old: Vec<(DateTime<Utc>, String)> = entries
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Done(s) => Some((s.started, k.clone())),
                    _ => None,
                })
                .collect();
            old.sort();
            for (_, k) in &old[..old.len() - 64] {
                entries.remove(k);
            }
        }
        drop(entries);
        self.trim_journal(256);
    }

    /// Forgets the finished jobs of `kind` on `vm` (memory and journal): what removing
    /// the VM's recovery leaves no trace of. A running one is left to finish.
    pub fn forget_finished(&self, kind: &str, vm: &str) {
        let mut entries = self.lock();
        entries.retain(|_, e| !matches!(e, Entry::Done(s) if s.kind == kind && s.vm == vm));
        drop(entries);
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for path in dir.filter_map(|e| e.ok()).map(|e| e.path()) {
            let ours = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<JobStatus>(&b).ok())
                .is_some_and(|s| s.kind == kind && s.vm == vm);
            if ours {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn trim_journal(&self, keep: usize) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= keep {
            return;
        }
        files.sort();
        for (_, path) in &files[..files.len() - keep] {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    async fn until_done(jobs: &Jobs, id: &JobId) -> JobStatus {
        for _ in 0..200 {
            let s = jobs.status(id).unwrap();
            if !matches!(s.state, JobState::Running) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} did not end");
    }

    #[tokio::test]
    async fn a_job_id_runs_once_and_its_answer_outlives_a_restart() {
        let home = tempfile::tempdir().unwrap();
        let jobs = Arc::new(Jobs::open(home.path()).unwrap());
        let runs = Arc::new(AtomicUsize::new(0));
        let id = JobId::new("op-1-final").unwrap();
        let work = |runs: Arc<AtomicUsize>| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(serde_json::json!({"point": "p1"}))
        };
        let first = jobs
            .start(&id, "final-sync", "web", work(runs.clone()))
            .unwrap();
        assert!(matches!(first.state, JobState::Running));
        // Asked again while it runs, and once it ended: the same job, run once.
        let again = jobs
            .start(&id, "final-sync", "web", work(runs.clone()))
            .unwrap();
        assert!(matches!(again.state, JobState::Running));
        let done = until_done(&jobs, &id).await;
        assert!(matches!(&done.state, JobState::Succeeded { result } if result["point"] == "p1"));
        jobs.start(&id, "final-sync", "web", work(runs.clone()))
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Another job of the same VM while one runs: refused; the same id for another
        // VM: refused.
        let other = JobId::new("op-2-final").unwrap();
        jobs.start(&other, "apply-point", "db", async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err((409, "the disks differ".to_string()))
        })
        .unwrap();
        let busy = jobs.start(
            &JobId::new("op-3").unwrap(),
            "final-sync",
            "db",
            work(runs.clone()),
        );
        assert!(matches!(busy, Err(JobError::Busy { .. })), "{busy:?}");
        assert!(matches!(
            jobs.start(&id, "final-sync", "db", work(runs.clone())),
            Err(JobError::Mismatch { .. })
        ));
        let failed = until_done(&jobs, &other).await;
        assert!(matches!(failed.state, JobState::Failed { status: 409, .. }));
        // Asked again after it failed: a retry, run anew.
        let retried = jobs
            .start(&other, "apply-point", "db", async {
                Ok(serde_json::json!({"ok": true}))
            })
            .unwrap();
        assert!(matches!(retried.state, JobState::Running));
        let done = until_done(&jobs, &other).await;
        assert!(matches!(done.state, JobState::Succeeded { .. }));
        // A restarted agent knows the finished jobs from its journal.
        let restarted = Jobs::open(home.path()).unwrap();
        let known = restarted.status(&id).unwrap();
        assert!(matches!(known.state, JobState::Succeeded { .. }));
        assert!(restarted.status(&JobId::new("never").unwrap()).is_none());
        // Forgetting a VM's finished jobs of one kind leaves the others, on disk too.
        restarted.forget_finished("final-sync", "web");
        assert!(restarted.status(&id).is_none());
        assert!(Jobs::open(home.path()).unwrap().status(&id).is_none());
        assert!(restarted.status(&other).is_some(), "another VM's job stays");
    }
}
