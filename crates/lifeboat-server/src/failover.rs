//! Moving a protected VM to its recovery host: planned (ordered shutdown, final sync proven
//! equal, zero data loss) and unplanned (from a chosen point, the source fenced), and
//! keeping the source fenced afterwards (DESIGN.md, "Failover guarantees").
//!
//! The protection goes to `failing_over` first (a generation-guarded update), so
//! replication starts no sync while the VM moves, and to `failed_over` once it runs on the
//! recovery host. From then on the replication watcher fences the source whenever its
//! agent answers: QEMU killed if it runs, and a marker that keeps it from starting, so
//! writes made at the source after the failover are never copied over the recovery site's.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use lifeboat_agent::client::AgentClient;
use lifeboat_agent::handover::{FenceRequest, ShutdownRequest};
use lifeboat_agent::sync::{Retention, SyncRequest, VaultAccess};

use crate::db::{Database, HostAccess, Protection, ProtectionState};

/// A failure with the HTTP status it maps to, and a message that says what to do.
pub type Failure = (StatusCode, String);

fn db_failure(e: crate::db::DbError) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// How long a source's final sync may take (a stopped VM; only the last changes).
const FINAL_SYNC_TIMEOUT: Duration = Duration::from_secs(900);

pub fn vault_of(p: &Protection) -> VaultAccess {
    VaultAccess {
        url: p.vault_url.clone(),
        passphrase: p.vault_passphrase.clone(),
    }
}

fn client(h: &HostAccess, timeout: Duration) -> Result<AgentClient, Failure> {
    AgentClient::new(&h.host.address, &h.host.fingerprint, timeout)
        .map(|c| c.with_credential(&h.credential))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Sets the protection's state, retrying lost generation races.
pub async fn set_state(
    db: &Database,
    id: &str,
    state: ProtectionState,
    reason: &str,
) -> Result<Protection, Failure> {
    loop {
        let Some(mut row) = db.protection(id).await.map_err(db_failure)? else {
            return Err((StatusCode::NOT_FOUND, "the protection is gone".into()));
        };
        row.state = state;
        row.reason = reason.to_string();
        if state.is_failover() {
            // A sync the source never finishes must not hold the row.
            if state == ProtectionState::FailedOver {
                row.current_sync = None;
            }
        }
        if db.save_protection(&mut row).await.map_err(db_failure)? {
            return Ok(row);
        }
    }
}

/// Waits until no sync of the protection is in flight (the watcher finishes it).
async fn wait_no_sync(db: &Database, id: &str, limit: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + limit;
    loop {
        match db.protection(id).await.map_err(db_failure)? {
            Some(p) if p.current_sync.is_some() => {}
            _ => return Ok(()),
        }
        if Instant::now() > deadline {
            return Err((
                StatusCode::GATEWAY_TIMEOUT,
                "a sync of the VM did not end in time; try the failover again".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The source side of a planned failover: shut down in order, final sync of the stopped
/// VM proven equal to its disks, then fenced. Returns the final point (recorded).
/// `log` is called with each step. On failure the source is started again when it was
/// stopped by this call, and the protection goes back to replicating.
pub async fn hand_over(
    db: &Database,
    p: &Protection,
    source: &HostAccess,
    shutdown_timeout: Duration,
    log: &(impl Fn(String) + Sync),
) -> Result<(String, String), Failure> {
    let agent = client(source, FINAL_SYNC_TIMEOUT)?;
    set_state(db, &p.id, ProtectionState::FailingOver, "planned failover").await?;
    let undo = |why: String| async move {
        let _ = set_state(db, &p.id, ProtectionState::Protected, "").await;
        why
    };
    if let Err((code, why)) = wait_no_sync(db, &p.id, Duration::from_secs(300)).await {
        return Err((code, undo(why).await));
    }
    log(format!(
        "shutting {} down (ACPI, forced after {shutdown_timeout:?})",
        p.vm
    ));
    let down = agent
        .shutdown_vm(
            &p.vm,
            &ShutdownRequest {
                timeout_secs: shutdown_timeout.as_secs().max(1),
            },
        )
        .await;
    let down = match down {
        Ok(d) => d,
        Err(e) => {
            let why = format!("shutting {} down on {}: {e}", p.vm, source.host.hostname);
            return Err((StatusCode::BAD_GATEWAY, undo(why).await));
        }
    };
    log(format!(
        "{} is stopped ({}); final sync",
        p.vm, down.outcome
    ));
    let req = SyncRequest {
        sync_id: uuid::Uuid::new_v4().to_string(),
        vault: vault_of(p),
        point_name: p.point_name.clone(),
        retention: Retention::default(),
        app_consistent: false,
    };
    let report = match agent.final_sync(&p.vm, &req).await {
        Ok(r) => r,
        Err(e) => {
            let why = format!(
                "the final sync of {} failed: {e}; the VM stays stopped on {} — start it with `lifeboat vm start {}` there, or try the failover again",
                p.vm, source.host.hostname, p.vm
            );
            return Err((StatusCode::BAD_GATEWAY, undo(why).await));
        }
    };
    // The point is in the vault: the server knows it from now on, whatever comes next.
    let mut row = db
        .protection(&p.id)
        .await
        .map_err(db_failure)?
        .ok_or((StatusCode::NOT_FOUND, "the protection is gone".to_string()))?;
    crate::replication::record_point(db, &mut row, &report.result)
        .await
        .map_err(db_failure)?;
    let _ = db.save_protection(&mut row).await;
    if !report.equal {
        let bad: Vec<String> = report
            .disks
            .iter()
            .filter(|d| d.differing_chunks > 0)
            .map(|d| {
                format!(
                    "{}: {} chunk(s) differ, first at byte {}",
                    d.disk,
                    d.differing_chunks,
                    d.first_difference.unwrap_or(0)
                )
            })
            .collect();
        let why = format!(
            "the final point {} does not equal the stopped VM's disks ({}); nothing was started on the recovery host",
            report.result.point,
            bad.join("; ")
        );
        return Err((StatusCode::CONFLICT, undo(why).await));
    }
    log(format!(
        "final point {} equals the source disks ({} chunk(s) compared by digest)",
        report.result.point,
        report.disks.iter().map(|d| d.chunks).sum::<u64>()
    ));
    let fenced = agent
        .fence(
            &p.vm,
            &FenceRequest {
                reason: format!(
                    "failed over (planned) at {}; it runs on the recovery host now",
                    chrono::Utc::now().to_rfc3339()
                ),
            },
        )
        .await;
    if let Err(e) = fenced {
        // The VM is stopped and the watcher fences it as soon as the agent answers.
        log(format!(
            "fencing the source failed ({e}); it will be retried"
        ));
    }
    Ok((
        report.result.point.clone(),
        report.result.cut_time.to_rfc3339(),
    ))
}

/// Fences the source of a failed-over protection if it is not yet known to be fenced;
/// updates the row's reason (the caller saves it).
pub async fn fence_source(p: &mut Protection, source: &HostAccess, agent: &AgentClient) {
    if p.reason.contains("source fenced") {
        return;
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
}

/// Tries once, briefly, to fence the source of an unplanned failover; it may be dead.
pub async fn try_fence(p: &Protection, source: &HostAccess) -> Result<bool, String> {
    let agent = client(source, Duration::from_secs(5)).map_err(|(_, m)| m)?;
    agent
        .fence(
            &p.vm,
            &FenceRequest {
                reason: format!(
                    "failed over (unplanned) at {}; it runs on its recovery host now",
                    chrono::Utc::now().to_rfc3339()
                ),
            },
        )
        .await
        .map(|r| r.killed)
        .map_err(|e| e.to_string())
}

/// Brings a failed-over VM home: the recovery VM shut down in order and its final point
/// taken (only chunks that differ from the vault's newest point are sent), that point
/// written over the home disks where they differ (the recovery site's writes, and home's
/// own diverged writes), the home disks proven equal, the VM started at home, the
/// recovery VM removed. Never two running copies: home starts only after the recovery VM
/// stopped. Returns the point the VM came home at.
pub async fn fail_back(
    db: &Database,
    p: &Protection,
    rec: &crate::db::Recovery,
    home: &HostAccess,
    recovery: &HostAccess,
    shutdown_timeout: Duration,
    log: &(impl Fn(String) + Sync),
) -> Result<String, Failure> {
    let away = client(recovery, FINAL_SYNC_TIMEOUT)?;
    let back = client(home, FINAL_SYNC_TIMEOUT)?;
    // Home must answer before the recovery VM stops.
    back.inventory().await.map_err(|e| {
        (
            StatusCode::BAD_GATEWAY,
            format!(
                "the home host {} does not answer ({e}); nothing was changed",
                home.host.hostname
            ),
        )
    })?;
    set_state(db, &p.id, ProtectionState::FailingBack, "failing back").await?;
    let stuck = |why: String| {
        (
            StatusCode::BAD_GATEWAY,
            format!(
                "{why}; the VM may be stopped on both hosts — run `lifeboat failback {}` again",
                p.vm
            ),
        )
    };
    log(format!(
        "shutting {} down on {}",
        rec.vm, recovery.host.hostname
    ));
    away.shutdown_vm(
        &rec.vm,
        &ShutdownRequest {
            timeout_secs: shutdown_timeout.as_secs().max(1),
        },
    )
    .await
    .map_err(|e| stuck(format!("shutting the recovery VM down: {e}")))?;
    log("final sync of the recovery VM".into());
    let req = SyncRequest {
        sync_id: uuid::Uuid::new_v4().to_string(),
        vault: vault_of(p),
        point_name: p.point_name.clone(),
        retention: Retention::default(),
        app_consistent: false,
    };
    let report = away
        .final_sync(&rec.vm, &req)
        .await
        .map_err(|e| stuck(format!("the recovery VM's final sync: {e}")))?;
    let mut row = db
        .protection(&p.id)
        .await
        .map_err(db_failure)?
        .ok_or((StatusCode::NOT_FOUND, "the protection is gone".to_string()))?;
    crate::replication::record_point(db, &mut row, &report.result)
        .await
        .map_err(db_failure)?;
    let _ = db.save_protection(&mut row).await;
    if !report.equal {
        return Err(stuck(format!(
            "the recovery VM's final point {} does not equal its disks",
            report.result.point
        )));
    }
    let point = report.result.point.clone();
    log(format!(
        "final point {point}: {} byte(s) sent from the recovery site; writing it at home where it differs",
        report.result.new_bytes_stored
    ));
    let applied = back
        .apply_point(
            &p.vm,
            &lifeboat_agent::handover::ApplyPointRequest {
                vault: vault_of(p),
                point: point.clone(),
                point_name: p.point_name.clone(),
            },
        )
        .await
        .map_err(|e| stuck(format!("writing the point at home: {e}")))?;
    if !applied.equal {
        return Err(stuck(
            "the home disks still differ from the point after writing it".into(),
        ));
    }
    log(format!(
        "home disks equal the point ({} chunk(s) written)",
        applied.disks.iter().map(|d| d.written_chunks).sum::<u64>()
    ));
    back.start_vm(&p.vm, true)
        .await
        .map_err(|e| stuck(format!("starting {} at home: {e}", p.vm)))?;
    log(format!("{} runs at home on {}", p.vm, home.host.hostname));
    if let Err(e) = away.remove_recovery(&rec.id).await {
        log(format!(
            "removing the recovery VM failed ({e}); it is stopped — remove it by hand"
        ));
    } else {
        db.delete_recovery(&rec.id).await.map_err(db_failure)?;
    }
    set_state(
        db,
        &p.id,
        ProtectionState::FailedBack,
        &format!(
            "back home from point {point}; `lifeboat reprotect {}` resumes replication",
            p.vm
        ),
    )
    .await?;
    Ok(point)
}
