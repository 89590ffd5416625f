//! Moving a protected VM to its recovery host: planned (ordered shutdown, final sync proven
//! equal, zero data loss) and unplanned (from a chosen point, the source fenced), and
//! keeping the source fenced afterwards (DESIGN.md, "Failover guarantees").
//!
//! The protection goes to `failing_over` first (a generation-guarded update), so
//! replication starts no sync while the VM moves, and to `failed_over` once it runs on the
//! recovery host. From then on the replication watcher fences the source whenever its
//! agent answers: QEMU killed if it runs, and a marker that keeps it from starting, so
//! writes made at the source after the failover are never copied over the recovery site's.

use std::time::Duration;

use lifeboat_agent::client::AgentClient;
use lifeboat_agent::handover::FenceRequest;
use lifeboat_agent::sync::VaultAccess;

use crate::db::{
    Database, DbError, Event, Facts, HostAccess, Protection, ProtectionState, Recovery,
};
use crate::error::AppError;
use lifeboat_types::RecoveryState;
use serde::Serialize;

/// How `host`'s agent opens `p`'s vault (the key sealed to it); asked before anything is
/// changed, so a missing key stops a move before it starts.
pub async fn vault_for(
    db: &Database,
    p: &Protection,
    host: &HostAccess,
) -> Result<VaultAccess, AppError> {
    crate::vault_keys::access_for(db, p, &host.host.id)
        .await
        .map_err(|e| match e {
            crate::vault_keys::KeyError::Db(e) => AppError::Db(e),
            e => AppError::Conflict(e.to_string()),
        })
}

fn client(h: &HostAccess, timeout: Duration) -> Result<AgentClient, AppError> {
    crate::agents::agent_client(h, timeout).map_err(|e| AppError::Internal(e.to_string()))
}

/// An agent that did not do what was asked.
fn gateway(e: lifeboat_agent::client::ClientError) -> AppError {
    AppError::Agent(e.to_string())
}

/// Removes a recovered VM from its host, then its row.
async fn remove_copy(
    db: &Database,
    agent: &AgentClient,
    rec: &crate::db::Recovery,
) -> Result<(), AppError> {
    agent.remove_recovery(&rec.id).await.map_err(gateway)?;
    db.delete_recovery(&rec.id).await.map_err(AppError::from)
}

/// Starts `vm` through `agent` unless it runs already.
async fn start_unless_running(
    agent: &AgentClient,
    vm: &str,
    running: bool,
    unfence: bool,
) -> Result<(), AppError> {
    if !running {
        agent.start_vm(vm, unfence).await.map_err(gateway)?;
    }
    Ok(())
}

/// Applies `event` to the protection (the one compare-and-set; a lost race re-plans).
pub async fn apply(db: &Database, id: &str, event: Event, facts: Facts) -> Result<(), AppError> {
    db.apply_event(id, event, &facts)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            crate::db::TransitionError::Refused(r) => AppError::Conflict(r.to_string()),
            crate::db::TransitionError::Db(e) => AppError::Db(e),
        })
}

/// The facts of a VM that is home again: no failover, no fence.
fn home_facts(reason: impl Into<String>) -> Facts {
    Facts {
        reason: reason.into(),
        failover_kind: Some(None),
        fenced_at: Some(None),
        sync_now: false,
    }
}

/// Records a final point (of a move) in the server's list and the protection's row, which
/// is re-read: the point is in the vault, whatever comes next.
pub(crate) async fn record_final_point(
    db: &Database,
    id: &str,
    result: &lifeboat_agent::sync::SyncResult,
) -> Result<(), AppError> {
    loop {
        let mut row = db
            .protection(id)
            .await?
            .ok_or_else(|| AppError::NotFound("the protection is gone".into()))?;
        db.record_point(&mut row, result).await?;
        if db.save_protection(&mut row).await? {
            return Ok(());
        }
    }
}

/// Fences the source of a failed-over protection if it is not yet known to be fenced,
/// and records it (a compare-and-set on the row as read); updates the row's reason (the
/// caller saves it). When the row changed meanwhile nothing is recorded: the caller's
/// save loses too, and its next step reads the row again.
pub async fn fence_source(
    db: &Database,
    p: &mut Protection,
    source: &HostAccess,
    agent: &AgentClient,
) -> Result<(), DbError> {
    if p.fenced_at.is_some() {
        return Ok(());
    }
    let req = FenceRequest {
        reason: format!(
            "failed over at {}; it runs on its recovery host now",
            p.last_point_time.clone().unwrap_or_default()
        ),
    };
    match agent.fence(&p.vm, &req).await {
        Ok(r) => {
            tracing::warn!(vm = %p.vm, host = %source.host.hostname, killed = r.killed, "source fenced");
            let at = chrono::Utc::now().to_rfc3339();
            if !db
                .record_source_fenced(&p.id, p.generation, p.state_read, &at)
                .await?
            {
                return Ok(());
            }
            p.generation += 1;
            p.fenced_at = Some(at);
            p.reason = format!(
                "failed over; source fenced on {}{}",
                source.host.hostname,
                if r.killed {
                    " (its QEMU was running and was killed)"
                } else {
                    ""
                }
            );
        }
        Err(e) => {
            p.reason = format!(
                "failed over; the source host {} is unreachable ({e}) and will be fenced when it returns",
                source.host.hostname
            );
        }
    }
    Ok(())
}

/// What became of an interrupted move.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// Not decided yet (a host did not answer, or an operation still runs): ask again.
    Wait(String),
    /// Carried on to the end: the move had passed its point of no return.
    Finished(ProtectionState),
    /// Undone: the VM runs where it ran before the move.
    RolledBack(ProtectionState),
}

/// Settles a protection left `failing_over` or `failing_back` with no operation running
/// (its server died, or its request failed half-way), so that the VM runs in exactly one
/// place again and no write is lost:
/// - failing over: if the VM runs on the recovery host, the failover is finished; if not,
///   a planned failover is rolled back (the source started again — it holds every write);
///   an unplanned one waits to be run again (its source is presumed dead);
/// - failing back: if the VM runs at home, the failback is finished (the recovery VM
///   removed); if not, it is rolled back (the recovery VM, whose disks nothing wrote,
///   started again).
///
/// A host that does not answer means "wait": what it runs is unknown.
pub async fn settle(db: &Database, p: &Protection) -> Result<Settled, AppError> {
    if db.running_operation(&p.host_id, &p.vm).await?.is_some() {
        return Ok(Settled::Wait("an operation runs".into()));
    }
    let hosts = db.hosts_with_access().await?;
    let host = |id: &str| hosts.iter().find(|h| h.host.id == id).cloned();
    let rec = db
        .recoveries_of(&p.id)
        .await?
        .into_iter()
        .find(|r| r.kind != lifeboat_types::RecoveryKind::Test && r.is_the_vm());
    let Some(home) = host(&p.host_id) else {
        return Ok(Settled::Wait("the home host is not enrolled".into()));
    };
    let home_agent = client(&home, Duration::from_secs(30))?;
    let vm_state = |inv: &serde_json::Value, vm: &str| {
        inv["vms"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == vm)
            .map(|v| v["state"]["state"].as_str().unwrap_or("").to_string())
    };
    let away = rec.as_ref().and_then(|r| host(&r.host_id));
    let away_state = match (&rec, &away) {
        (Some(r), Some(h)) => {
            let agent = client(h, Duration::from_secs(30))?;
            match agent.inventory().await {
                Ok(inv) => vm_state(&inv, &r.vm),
                Err(e) => {
                    return Ok(Settled::Wait(format!(
                        "recovery host {}: {e}",
                        h.host.hostname
                    )))
                }
            }
        }
        _ => None,
    };
    let home_state = match home_agent.inventory().await {
        Ok(inv) => vm_state(&inv, &p.vm),
        Err(e) if p.state == ProtectionState::FailingBack => {
            return Ok(Settled::Wait(format!(
                "home host {}: {e}",
                home.host.hostname
            )))
        }
        Err(_) => None,
    };
    let running = |s: &Option<String>| s.as_deref() == Some("running");
    match p.state {
        ProtectionState::FailingOver => {
            if running(&away_state) {
                let r = rec.expect("a VM running away implies its recovery");
                db.move_recovery(&r.id, &[RecoveryState::Starting], RecoveryState::Running)
                    .await?;
                let why = format!(
                    "failed over to {}",
                    away.map(|h| h.host.hostname).unwrap_or_default()
                );
                apply(db, &p.id, Event::FailedOverTo, Facts::reason(why)).await?;
                return Ok(Settled::Finished(ProtectionState::FailedOver));
            }
            if p.failover_kind != Some(crate::db::FailoverKind::Planned) {
                return Ok(Settled::Wait(format!(
                    "the unplanned failover of {} was interrupted: run `lifeboat failover {} --unplanned` again",
                    p.vm, p.vm
                )));
            }
            // Planned and not running away: remove whatever half-made copy is there, and
            // start the source again (it was stopped in order; it holds every write).
            if let (Some(r), Some(h)) = (&rec, &away) {
                remove_copy(db, &client(h, Duration::from_secs(120))?, r).await?;
            }
            start_unless_running(&home_agent, &p.vm, running(&home_state), true).await?;
            apply(
                db,
                &p.id,
                Event::FailoverUndone,
                Facts {
                    sync_now: true,
                    ..home_facts("")
                },
            )
            .await?;
            tracing::warn!(vm = %p.vm, "interrupted planned failover rolled back: the VM runs at home");
            Ok(Settled::RolledBack(ProtectionState::Protected))
        }
        ProtectionState::FailingBack => {
            let (Some(r), Some(h)) = (&rec, &away) else {
                // The recovery VM is gone: only the home copy is left.
                start_unless_running(&home_agent, &p.vm, running(&home_state), true).await?;
                apply(db, &p.id, Event::CameHome, home_facts("back home")).await?;
                return Ok(Settled::Finished(ProtectionState::FailedBack));
            };
            let away_agent = client(h, Duration::from_secs(120))?;
            if running(&home_state) {
                remove_copy(db, &away_agent, r).await?;
                apply(db, &p.id, Event::CameHome, home_facts("back home")).await?;
                return Ok(Settled::Finished(ProtectionState::FailedBack));
            }
            start_unless_running(&away_agent, &r.vm, running(&away_state), false).await?;
            let why = format!(
                "failed over to {} (a failback was interrupted and rolled back)",
                h.host.hostname
            );
            apply(
                db,
                &p.id,
                Event::FailbackUndone { reversed: false },
                Facts::reason(why),
            )
            .await?;
            tracing::warn!(vm = %p.vm, "interrupted failback rolled back: the VM runs on the recovery host");
            Ok(Settled::RolledBack(ProtectionState::FailedOver))
        }
        _ => Ok(Settled::Wait("nothing to settle".into())),
    }
}

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RecoveryView {
    #[serde(flatten)]
    pub recovery: Recovery,
    /// The recovery host's name, and the origin host's.
    pub host: String,
    pub origin_host: String,
}

pub fn recovery_view(r: Recovery, hosts: &[HostAccess]) -> RecoveryView {
    let name = |id: &str| {
        hosts
            .iter()
            .find(|h| h.host.id == id)
            .map(|h| h.host.hostname.clone())
            .unwrap_or_else(|| id.to_string())
    };
    RecoveryView {
        host: name(&r.host_id),
        origin_host: name(&r.origin_host_id),
        recovery: r,
    }
}

/// Copies what the agent reports into the row.
pub(crate) fn apply_status(rec: &mut Recovery, st: &lifeboat_agent::recovery::RecoveryStatus) {
    let (done, total) = st.hydration_totals();
    rec.vm_state = st.vm_state.clone();
    rec.hydrated = st.record.hydrated;
    if rec.hydrated {
        rec.hydrated_bytes = rec.hydration_total.max(total as i64);
        rec.hydration_total = rec.hydrated_bytes;
    } else if total > 0 {
        rec.hydrated_bytes = done as i64;
        rec.hydration_total = total as i64;
    }
    rec.forwards = st
        .record
        .forwards
        .iter()
        .map(|f| lifeboat_types::PortForward {
            host_port: f.host_port,
            guest_port: f.guest_port,
            public: f.public,
            guest_addr: f.guest_addr,
        })
        .collect();
    rec.error = st.error.clone().unwrap_or_default();
}

/// Every recovered VM with its hosts' names (`GET /api/v1/recoveries`, the dashboard).
pub async fn recovery_views(db: &Database) -> Result<Vec<RecoveryView>, crate::db::DbError> {
    let hosts = db.hosts_with_access().await?;
    Ok(db
        .recoveries()
        .await?
        .into_iter()
        .map(|r| recovery_view(r, &hosts))
        .collect())
}
