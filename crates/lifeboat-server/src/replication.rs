//! The replication reconciler: keeps every protected VM syncing on its policy's schedule.
//!
//! One scheduler ([`run`]) reads every protection once a round and runs a step for each
//! one that is due, a few at a time per host. A step reads nothing but its row, does one
//! thing, writes the row back (guarded by generation and state) and says when the
//! protection is due again. All it knows lives in the row, so a server killed at any
//! moment picks up where it was: a sync it had asked for is polled again by its id, and an
//! agent that restarted and no longer knows that id gets a new one.
//!
//! ```text
//!   Enabling ──first sync asked──▶ InitialSync ──first point──▶ Protected
//!                                                      ▲            │ failures in a row, or
//!                                                      └─caught up──┴▶ Degraded (RPO over threshold)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeboat_agent::client::{AgentClient, ClientError};
use lifeboat_agent::sync::{SyncRequest, SyncState, SyncStatus};
use tokio::sync::{mpsc, Semaphore};

use crate::agents::AgentClients;
use crate::db::{Database, Protection, ProtectionState};
use crate::policy::Policy;

/// How often a running sync is polled, and the longest a watcher sleeps.
const POLL: Duration = Duration::from_secs(1);
/// Failed attempts in a row after which a VM is Degraded, whatever its RPO.
const DEGRADED_AFTER_FAILURES: i64 = 2;
/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest a protection with nothing to do waits for its next step; a change of its
/// row (an operation, the API) makes it due at once.
const IDLE: Duration = Duration::from_secs(30);
/// The longest a protection waits between two steps, whatever its schedule (a clock
/// that jumped is noticed by then).
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The longest a prune after a point may hold up this VM's watcher.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(60);

/// Steps of one host's protections that may run at once: a host with many VMs is asked
/// about a few at a time, and a host that does not answer holds up only its own.
const PER_HOST: usize = 4;

/// Rounds the scheduler made (each reads every protection): `lifeboat_scheduler_rounds_total`.
static ROUNDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many rounds the scheduler made since the server started.
pub fn rounds() -> u64 {
    ROUNDS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs forever: one scheduler for every protection, including ones added later. Each
/// round reads the protections once, and runs a step for each one that is due, at most
/// [`PER_HOST`] at a time per host, each in its own task. A protection is due when the
/// wait its last step asked for is over, or at once when its row changed since that step
/// ended (an operation or the API moved it).
pub async fn run(db: Database) {
    let clients = Arc::new(AgentClients::default());
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut running: HashSet<String> = HashSet::new();
    // The generation each protection's last step left its row at (or, when unknown, the
    // one the next round reads): a row changed by anyone else since (an operation, the
    // API), even while its step ran, is due at once.
    let mut seen: HashMap<String, Option<i64>> = HashMap::new();
    let mut hosts: HashMap<String, Arc<Semaphore>> = HashMap::new();
    // (protection, when it is due again, the generation its step left it at)
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, (Duration, Option<i64>))>();
    loop {
        ROUNDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Ids and generations only: at 10,000 VMs a round of whole rows every second
        // was most of the server's CPU.
        let all = match db.protection_versions().await {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "listing protections");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let now = Instant::now();
        let ids: HashSet<&String> = all.iter().map(|(id, _, _)| id).collect();
        due.retain(|id, _| ids.contains(id));
        seen.retain(|id, _| ids.contains(id));
        for (id, generation, host_id) in &all {
            if running.contains(id) {
                continue;
            }
            let changed = match seen.insert(id.clone(), Some(*generation)) {
                Some(Some(g)) => g != *generation,
                _ => false,
            };
            if !changed && due.get(id).is_some_and(|t| *t > now) {
                continue;
            }
            running.insert(id.clone());
            // Due again when its step ends (it says when): a past due time left here
            // would make the loop below wait for nothing and read every row again.
            due.remove(id);
            let gate = hosts
                .entry(host_id.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(PER_HOST)))
                .clone();
            let (db, clients, done) = (db.clone(), clients.clone(), done_tx.clone());
            let id = id.clone();
            tokio::spawn(async move {
                let wait = match gate.acquire().await {
                    Ok(_permit) => {
                        // In a task of its own: a step that panics still ends (and its
                        // protection is stepped again), instead of being running forever.
                        let id = id.clone();
                        let stepped = tokio::spawn(async move {
                            match db.protection(&id).await {
                                // With the generation the step left the row at: a change
                                // made by anyone else meanwhile makes it due at once.
                                Ok(Some(mut p)) => match step(&db, &mut p, &clients).await {
                                    Ok(w) => (w, Some(p.generation)),
                                    Err(e) => {
                                        tracing::error!(protection = %id, error = %e, "replication step");
                                        (POLL, None)
                                    }
                                },
                                // Gone (unprotected): the next round forgets it.
                                Ok(None) => (POLL, None),
                                Err(e) => {
                                    tracing::error!(protection = %id, error = %e, "reading a protection");
                                    (POLL, None)
                                }
                            }
                        });
                        stepped.await.unwrap_or_else(|e| {
                            tracing::error!(error = %e, "a replication step failed");
                            (MAX_BACKOFF, None)
                        })
                    }
                    Err(_) => (POLL, None),
                };
                let _ = done.send((id, wait));
            });
        }
        // Until the next protection is due, at most POLL. A step that ends says when its
        // protection is due again, which may be sooner (at once, after a point); ends
        // alone do not make a round, so a thousand steps a minute cost no extra reads.
        let now = Instant::now();
        let mut wake = due
            .values()
            .min()
            .copied()
            .unwrap_or(now + POLL)
            .min(now + POLL);
        while Instant::now() < wake {
            tokio::select! {
                Some((id, (wait, generation))) = done_rx.recv() => {
                    running.remove(&id);
                    seen.insert(id.clone(), generation);
                    let at = Instant::now() + wait;
                    due.insert(id, at);
                    wake = wake.min(at);
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How old the newest point is, in seconds; `None` before the first point.
pub fn rpo_seconds(p: &Protection, now: DateTime<Utc>) -> Option<f64> {
    let t = parse_time(p.last_point_time.as_deref()?)?;
    Some(((now - t).num_milliseconds().max(0)) as f64 / 1000.0)
}

fn backoff(failures: i64) -> Duration {
    let exp = failures.clamp(1, 7) as u32 - 1;
    Duration::from_secs(1 << exp).min(MAX_BACKOFF)
}

/// The state the row's facts call for.
fn evaluate(p: &mut Protection, policy: &Policy, now: DateTime<Utc>) {
    if p.state.is_reversed() {
        // Replicated from where it runs now: judged as a VM protected from home is, and
        // reversed still whatever its health (only a failback moves it home).
        p.state = ProtectionState::Protected;
        evaluate(p, policy, now);
        p.state = if p.state == ProtectionState::Degraded {
            ProtectionState::DegradedReversed
        } else {
            ProtectionState::ProtectedReversed
        };
        if p.reason.is_empty() {
            p.reason = REVERSED.into();
        }
        return;
    }
    if p.state == ProtectionState::Disabling || p.state.is_failover() {
        // `unprotect` or the failover owns the row now.
        return;
    }
    let Some(rpo) = rpo_seconds(p, now) else {
        // No point yet: enabling until a sync is asked for, then the initial sync.
        if p.state != ProtectionState::Enabling || p.current_sync.is_some() {
            p.state = ProtectionState::InitialSync;
        }
        p.reason = if p.failures > 0 {
            format!("retrying after: {}", p.last_error)
        } else {
            String::new()
        };
        return;
    };
    let threshold = policy.rpo_threshold().as_secs_f64();
    if p.failures >= DEGRADED_AFTER_FAILURES {
        p.state = ProtectionState::Degraded;
        p.reason = format!(
            "{} failed attempt(s) in a row; last: {}",
            p.failures, p.last_error
        );
    } else if rpo > threshold {
        p.state = ProtectionState::Degraded;
        p.reason = format!(
            "RPO {rpo:.0} s is above the policy's {threshold:.0} s{}",
            if p.last_error.is_empty() {
                String::new()
            } else {
                format!("; last error: {}", p.last_error)
            }
        );
    } else {
        p.state = ProtectionState::Protected;
        p.reason = String::new();
    }
}

/// How long a reversed protection's step waits for its home to answer a fence.
const HOME_FENCE_LIMIT: Duration = Duration::from_secs(3);

/// The reason a healthy reversed protection shows.
const REVERSED: &str = "runs on its recovery host and is replicated from there; home is fenced";

/// Where a reversed protection's syncs run: the recovery host and the VM's name there (its
/// committed recovery). Home is fenced on the way, if it is not known to be yet. `None`
/// (with the row's error set) when there is no such VM or host.
async fn reversed_target(
    db: &Database,
    p: &mut Protection,
) -> Result<Option<(crate::db::HostAccess, String)>, crate::db::DbError> {
    // Home is fenced when a sync starts, not at every poll of one, and with a short
    // limit: a lost home must not hold up the syncs that protect the VM meanwhile.
    if p.fenced_at.is_none() && p.current_sync.is_none() {
        if let Some(home) = db.host_access(&p.host_id).await? {
            if let Ok(agent) = crate::agents::agent_client(&home, HOME_FENCE_LIMIT) {
                crate::failover::fence_source(db, p, &home, &agent).await?;
            }
        }
    }
    let committed = db
        .recoveries_of(&p.id)
        .await?
        .into_iter()
        .find(|r| r.state == lifeboat_types::RecoveryState::Committed);
    let Some(rec) = committed else {
        p.failures += 1;
        p.last_error = "no committed VM on a recovery host to replicate".into();
        return Ok(None);
    };
    let Some(host) = db.host_access(&rec.host_id).await? else {
        p.failures += 1;
        p.last_error = "the recovery host is no longer enrolled".into();
        return Ok(None);
    };
    Ok(Some((host, rec.vm)))
}

/// One step for one protection; returns how long to wait before the next.
async fn step(
    db: &Database,
    p: &mut Protection,
    agents: &AgentClients,
) -> Result<Duration, crate::db::DbError> {
    let policy = Policy::find(&p.policy).unwrap_or(&crate::policy::POLICIES[0]);
    let before = bookkeeping(p);
    let before_state = (p.state, p.reason.clone());
    let committed_before = p.syncs_committed;
    let now = Utc::now();
    // Not due, no sync to follow: nothing to ask an agent. (A reversed VM whose home is
    // not known fenced yet goes on: its step fences home.)
    let replicating = !p.state.is_failover() || (p.state.is_reversed() && p.fenced_at.is_some());
    let quiet = replicating
        && p.state != ProtectionState::Disabling
        && p.current_sync.is_none()
        && parse_time(&p.next_sync_at).is_some_and(|t| t > now);
    let wait = if quiet {
        until_due(p, policy, now)
    } else {
        match ask_agent(db, p, policy, agents, now).await? {
            Asked::Wait(w) => w,
            Asked::Done(w) => return Ok(w),
        }
    };
    evaluate(p, policy, now);
    if (p.state, &p.reason) != (before_state.0, &before_state.1) {
        tracing::info!(vm = %p.vm, state = p.state.as_str(), reason = %p.reason, "protection state");
    }
    // A step that changed nothing writes nothing: a thousand idle VMs cost reads only.
    if bookkeeping(p) != before {
        db.save_protection(p).await?;
    }
    // A new point: the old ones the policy no longer keeps go, after the row shows it.
    if p.syncs_committed > committed_before {
        apply_retention(db, p, policy).await?;
    }
    Ok(wait)
}

/// How long a protection with nothing to do waits: until its next sync is due, or until
/// its RPO would pass the policy's threshold (it turns degraded then), if sooner.
fn until_due(p: &Protection, policy: &Policy, now: DateTime<Utc>) -> Duration {
    let due = parse_time(&p.next_sync_at).unwrap_or(now);
    let mut wait = (due - now).to_std().unwrap_or_default();
    if let Some(t) = p.last_point_time.as_deref().and_then(parse_time) {
        let threshold = chrono::Duration::from_std(policy.rpo_threshold()).unwrap_or_default();
        if let Ok(until) = (t + threshold - now).to_std() {
            wait = wait.min(until + POLL);
        }
    }
    wait.min(MAX_WAIT)
}

/// What asking the agent left to do: the step's usual end after waiting this long, or
/// nothing more (the row was saved already).
enum Asked {
    Wait(Duration),
    Done(Duration),
}

/// The part of a step that asks an agent: follow the running sync, start a due one,
/// fence a source, settle a move left half-way.
async fn ask_agent(
    db: &Database,
    p: &mut Protection,
    policy: &Policy,
    agents: &AgentClients,
    now: DateTime<Utc>,
) -> Result<Asked, crate::db::DbError> {
    // Where its syncs run: home, or where it runs now for a reversed protection.
    // A failback from the recovery site may find its last sync running there.
    let away = p.state.is_reversed()
        || (p.state == ProtectionState::FailingBack && p.current_sync.is_some());
    let (host, vm) = if away {
        match reversed_target(db, p).await? {
            Some(t) => t,
            // The step's usual end saves the error it set.
            None => return Ok(Asked::Wait(MAX_BACKOFF)),
        }
    } else {
        let Some(host) = db.host_access(&p.host_id).await? else {
            p.failures += 1;
            p.last_error = "the VM's host is no longer enrolled".into();
            return Ok(Asked::Wait(MAX_BACKOFF));
        };
        let vm = p.vm.clone();
        (host, vm)
    };
    let agent = match agents.get(&host) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "agent client");
            return Ok(Asked::Done(MAX_BACKOFF));
        }
    };
    let wait = if let Some(sync_id) = p.current_sync.clone() {
        match agent.sync_status(&sync_id).await {
            Ok(status) => on_status(db, p, policy, status, now).await?,
            Err(ClientError::Refused { status: 404, .. }) => {
                sync_failed(
                    p,
                    now,
                    format!(
                        "the agent on {} restarted during sync {sync_id}; a new sync starts",
                        host.host.hostname
                    ),
                );
                Duration::ZERO
            }
            Err(e) => {
                // The agent may still be running the sync: keep asking about the same id.
                p.failures += 1;
                p.last_error = format!("agent {} unreachable: {e}", host.host.hostname);
                backoff(p.failures).min(POLL * 5)
            }
        }
    } else if p.state == ProtectionState::Disabling {
        // Being disabled: never start a sync; `unprotect` deletes the row when done.
        POLL
    } else if p.state == ProtectionState::FailedOver {
        // The VM runs on its recovery host: make sure the source stays fenced.
        crate::failover::fence_source(db, p, &host, &agent).await?;
        POLL * 5
    } else if matches!(
        p.state,
        ProtectionState::FailingOver | ProtectionState::FailingBack
    ) {
        // A move left half-way (its server died, or its request failed): settle it.
        match crate::failover::settle(db, p).await {
            Ok(crate::failover::Settled::Wait(why)) => {
                tracing::debug!(vm = %p.vm, %why, "move not settled yet");
            }
            Ok(done) => tracing::warn!(vm = %p.vm, ?done, "interrupted move settled"),
            Err(e) => tracing::warn!(vm = %p.vm, error = %e, "settling an interrupted move"),
        }
        // The row changed under us (or not); the next step reads it again.
        return Ok(Asked::Done(POLL * 2));
    } else if p.state.is_failover() && !p.state.is_reversed() {
        // Home again and waiting for `reprotect`, or a reprotect takes its first point:
        // nothing to do. The scheduler steps it again at once when its row changes.
        IDLE
    } else if parse_time(&p.next_sync_at).is_none_or(|t| t <= now) {
        return start_sync(db, p, policy, &agent, (&host, &vm), now)
            .await
            .map(Asked::Done);
    } else {
        // Not due (a reversed VM whose home is not known fenced): home is tried again
        // within IDLE.
        until_due(p, policy, now).min(IDLE)
    };
    Ok(Asked::Wait(wait))
}

/// What a step may change in a protection's row (all of it but the counters a
/// committed point moves, which go with a state change or a sync's end).
fn bookkeeping(p: &Protection) -> impl PartialEq {
    (
        p.state,
        p.reason.clone(),
        p.current_sync.clone(),
        p.failures,
        p.last_error.clone(),
        p.next_sync_at.clone(),
        (p.sync_done, p.sync_total),
        (p.fenced_at.clone(), p.last_point.clone()),
    )
}

/// Deletes the points `policy` no longer keeps, here in the control plane (agents only
/// add points). A point exists whatever retention does: a failure is logged and the
/// next point tries again, and until then the vault only keeps more than it must.
async fn apply_retention(
    db: &Database,
    p: &Protection,
    policy: &Policy,
) -> Result<(), crate::db::DbError> {
    // Points a sync reported (not those merely found in the vault).
    let reported: Vec<String> = db
        .points(&p.id)
        .await?
        .into_iter()
        .filter(|r| r.kind != crate::db::UNREPORTED)
        .map(|r| r.point)
        .collect();
    let pruned = tokio::time::timeout(
        PRUNE_TIMEOUT,
        crate::retention::prune(&p.vault_url, &p.point_name, policy.retention(), &reported),
    )
    .await;
    match pruned {
        Ok(Ok(pruned)) => {
            if pruned.deleted > 0 {
                tracing::info!(vm = %p.vm, deleted = pruned.deleted, "retention pruned points");
            }
            db.sync_points(&p.id, &pruned.points).await
        }
        Ok(Err(e)) => {
            tracing::warn!(vm = %p.vm, error = %e, "retention failed; it runs again after the next point");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(vm = %p.vm, "retention took over {} s; it runs again after the next point", PRUNE_TIMEOUT.as_secs());
            Ok(())
        }
    }
}

fn sync_failed(p: &mut Protection, now: DateTime<Utc>, error: String) {
    p.current_sync = None;
    p.failures += 1;
    p.last_error = error;
    let delay = chrono::Duration::from_std(backoff(p.failures)).unwrap_or_default();
    p.next_sync_at = (now + delay).to_rfc3339();
}

async fn on_status(
    db: &Database,
    p: &mut Protection,
    policy: &Policy,
    status: SyncStatus,
    now: DateTime<Utc>,
) -> Result<Duration, crate::db::DbError> {
    match status.state {
        SyncState::Running {
            phase,
            bytes_done,
            bytes_total,
        } => {
            p.sync_done = bytes_done as i64;
            p.sync_total = bytes_total as i64;
            if p.last_point.is_none() {
                if let Some(op) = db.running_operation(&p.host_id, &p.vm).await? {
                    if op.kind == lifeboat_types::OperationKind::Enable {
                        let step = format!("initial sync: {phase}");
                        db.log_operation(&op.id, &step).await?;
                    }
                }
            }
            Ok(POLL)
        }
        SyncState::Committed(r) => {
            let first = p.last_point.is_none();
            db.record_point(p, &r).await?;
            p.current_sync = None;
            p.failures = 0;
            p.last_error = String::new();
            p.sync_done = r.bytes_read as i64;
            p.sync_total = r.bytes_read as i64;
            // The schedule is anchored to when the sync started, so the RPO stays near the
            // interval plus one sync's duration.
            let started = p
                .sync_started_at
                .as_deref()
                .and_then(parse_time)
                .unwrap_or(now);
            let interval = chrono::Duration::from_std(policy.interval()).unwrap_or_default();
            p.next_sync_at = (started + interval).max(now).to_rfc3339();
            // The enable that waits for this point ends here, before the row shows the
            // point (the caller saves it): whoever sees the VM protected may move it at
            // once, with no enable still running to refuse the move. Its own step then
            // finds it ended (`ops::enable`).
            if first {
                if let Some(op) = db.running_operation(&p.host_id, &p.vm).await? {
                    if op.kind == lifeboat_types::OperationKind::Enable {
                        let done = crate::ops::enable::answer(&p.vm, &op.id, Some(&r.point));
                        let line = crate::ops::enable::done_line(Some(&r.point));
                        db.finish_operation(
                            &op.id,
                            lifeboat_types::OperationStatus::Succeeded,
                            Some(&done),
                            "",
                            &line,
                        )
                        .await?;
                    }
                }
                tracing::info!(vm = %p.vm, point = %r.point, "initial sync done");
            }
            if let Some(note) = r.note {
                tracing::warn!(vm = %p.vm, %note, "note on the new point");
            }
            // Retention runs once the row is saved (`step`): it may take a while.
            Ok(Duration::ZERO)
        }
        SyncState::Failed { error } => {
            sync_failed(p, now, error);
            Ok(POLL)
        }
    }
}

async fn start_sync(
    db: &Database,
    p: &mut Protection,
    policy: &Policy,
    agent: &AgentClient,
    (host, vm): (&crate::db::HostAccess, &str),
    now: DateTime<Utc>,
) -> Result<Duration, crate::db::DbError> {
    let hostname = host.host.hostname.as_str();
    let vault = match crate::vault_keys::access_for(db, p, &host.host.id).await {
        Ok(v) => v,
        Err(crate::vault_keys::KeyError::Db(e)) => return Err(e),
        Err(e) => {
            sync_failed(p, now, e.to_string());
            evaluate(p, policy, now);
            db.save_protection(p).await?;
            return Ok(POLL * 5);
        }
    };
    let sync_id = uuid::Uuid::new_v4().to_string();
    // App-consistent when the last try is older than the policy asks; a try, not a point,
    // so a guest without qemu-guest-agent is not asked (and waited for) at every sync.
    let app_every = chrono::Duration::seconds(policy.app_consistent_every_secs as i64);
    let app_consistent = policy.app_consistent_every_secs > 0
        && p.app_attempt_at
            .as_deref()
            .and_then(parse_time)
            .is_none_or(|t| now - t >= app_every);
    if app_consistent {
        p.app_attempt_at = Some(now.to_rfc3339());
    }
    // Recorded before asking, so a server that dies right after still knows to ask about it.
    p.current_sync = Some(sync_id.clone());
    p.sync_started_at = Some(now.to_rfc3339());
    p.sync_done = 0;
    p.sync_total = 0;
    evaluate(p, policy, now);
    if !db.save_protection(p).await? {
        return Ok(Duration::ZERO);
    }
    let req = SyncRequest {
        app_consistent,
        sync_id: sync_id.clone(),
        vault,
        point_name: p.point_name.clone(),
    };
    match agent.start_sync(vm, &req).await {
        Ok(_) => Ok(POLL),
        Err(ClientError::Refused {
            status, message, ..
        }) => {
            sync_failed(
                p,
                now,
                format!("agent {hostname} refused the sync ({status}): {message}"),
            );
            evaluate(p, policy, now);
            db.save_protection(p).await?;
            Ok(POLL)
        }
        Err(e) => {
            // Whether the request arrived is unknown: the next step asks about this id.
            p.failures += 1;
            p.last_error = format!("agent {hostname} unreachable: {e}");
            evaluate(p, policy, now);
            db.save_protection(p).await?;
            Ok(backoff(p.failures).min(POLL * 5))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Protection {
        Protection {
            id: "p".into(),
            host_id: "h".into(),
            vm: "web".into(),
            point_name: "web".into(),
            vault_url: "file:///v".into(),
            vault_passphrase: "x".into(),
            recovery_host_id: "h".into(),
            policy: "frequent".into(),
            ..Default::default()
        }
    }

    #[test]
    fn states_follow_points_failures_and_rpo() {
        let policy = Policy::find("frequent").unwrap();
        let now = Utc::now();
        let mut p = row();
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::Enabling);
        p.current_sync = Some("s".into());
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::InitialSync);
        // Failures before the first point never make it Protected.
        p.failures = 5;
        p.last_error = "vault unreachable".into();
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::InitialSync);
        assert!(p.reason.contains("vault unreachable"));
        p.failures = 0;
        p.last_point_time = Some((now - chrono::Duration::seconds(3)).to_rfc3339());
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::Protected);
        p.last_point_time = Some((now - chrono::Duration::seconds(31)).to_rfc3339());
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::Degraded);
        assert!(p.reason.contains("RPO 31 s"), "{}", p.reason);
        p.last_point_time = Some(now.to_rfc3339());
        p.failures = 2;
        p.last_error = "agent alpha unreachable".into();
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::Degraded);
        assert!(p.reason.contains("agent alpha unreachable"));
        p.failures = 0;
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::Protected);
    }

    #[test]
    fn a_reversed_protection_turns_degraded_and_back_and_stays_reversed() {
        let policy = Policy::find("frequent").unwrap();
        let now = Utc::now();
        let mut p = row();
        p.state = ProtectionState::ProtectedReversed;
        p.last_point_time = Some(now.to_rfc3339());
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::ProtectedReversed);
        assert_eq!(p.reason, REVERSED);
        // Its recovery host stops answering: degraded, and why.
        p.failures = DEGRADED_AFTER_FAILURES;
        p.last_error = "agent beta unreachable".into();
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::DegradedReversed);
        assert!(p.reason.contains("agent beta unreachable"), "{}", p.reason);
        // Or its newest point grows too old.
        p.failures = 0;
        p.last_point_time = Some((now - chrono::Duration::seconds(31)).to_rfc3339());
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::DegradedReversed);
        assert!(p.reason.contains("RPO 31 s"), "{}", p.reason);
        // A new point: healthy again, still replicated from the recovery site.
        p.last_point_time = Some(now.to_rfc3339());
        evaluate(&mut p, policy, now);
        assert_eq!(p.state, ProtectionState::ProtectedReversed);
        assert_eq!(p.reason, REVERSED);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
