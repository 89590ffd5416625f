//! Failover routes: bring a protected VM up on its recovery host from a recovery point,
//! list what runs there, and remove a test copy.
//!
//! A test failover runs beside production: the protection, its replication and the VM at
//! home are not touched. The copy gets an isolated network and a MAC of its own (the
//! recovery host's agent sees to that, `lifeboat_agent::provision`).

// Helpers here fail with the ready HTTP response; one per request, so its size is moot.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lifeboat_agent::client::{AgentClient, ClientError};
use lifeboat_agent::recovery::{RecoveryKind, RecoveryRequest, RecoveryStatus};
use serde::{Deserialize, Serialize};

use super::operations::OpGuard;
use super::protection::load;
use super::{db_error, error, ApiError, ServerState};
use crate::db::{HostAccess, PointRow, Protection, ProtectionState, Recovery};

/// How long bringing a VM up may take on the recovery host (opening the vault, making the
/// overlays, starting QEMU): seconds normally, more on a busy host.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailoverRequest {
    /// `test` (beside production, isolated); `planned` and `unplanned` move the VM.
    pub kind: String,
    /// `latest` (default), `latest-app-consistent`, a point id, or an RFC 3339 time (the
    /// newest point cut at or before it).
    #[serde(default)]
    pub point: Option<String>,
    /// Planned: seconds the guest has to power off after the ACPI button before QEMU is
    /// told to quit (default 120).
    #[serde(default)]
    pub shutdown_timeout_secs: Option<u64>,
    /// Planned and unplanned: source network → recovery host network, per NIC (e.g.
    /// `{"user": "isolated"}`). A test copy is always isolated.
    #[serde(default)]
    pub network_map: std::collections::BTreeMap<String, String>,
    /// Test copies only: guest ports a port of the recovery host forwards to, on every
    /// address, so a tester can reach the isolated copy (nothing else can).
    #[serde(default)]
    pub expose: Vec<u16>,
}

/// `expose` is for test copies, of real ports, a few at most.
fn check_expose(kind: RecoveryKind, ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() {
        return Ok(());
    }
    if kind != RecoveryKind::Test {
        return Err(
            "--expose is for test copies (--test): a moved VM is reached at its own address".into(),
        );
    }
    if ports.contains(&0) || ports.len() > 8 {
        return Err("--expose takes 1 to 8 guest ports, none of them 0".into());
    }
    Ok(())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecoveryView {
    #[serde(flatten)]
    pub recovery: Recovery,
    /// The recovery host's name, and the origin host's.
    pub host: String,
    pub origin_host: String,
}

pub(crate) fn recovery_view(r: Recovery, hosts: &[HostAccess]) -> RecoveryView {
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

fn agent_for(h: &HostAccess, timeout: Duration) -> Result<AgentClient, Response> {
    crate::replication::agent_client(h, timeout)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn agent_error(e: ClientError) -> Response {
    match e {
        ClientError::Refused {
            status, message, ..
        } if (400..500).contains(&status) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            message,
        ),
        e => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// The point `selector` names among `points` (oldest first). `latest`, `latest-app-
/// consistent` and a time choose among the points a sync reported only: a point merely
/// found in the vault may have been put there by another host (docs/security.md); it can
/// still be chosen by its id.
pub fn choose_point<'a>(points: &'a [PointRow], selector: &str) -> Result<&'a PointRow, String> {
    let reported = || {
        points
            .iter()
            .rev()
            .filter(|p| p.kind != crate::db::UNREPORTED)
    };
    let found = match selector {
        "latest" => reported().next(),
        "latest-app-consistent" => reported().find(|p| p.consistency == "app"),
        s => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => reported()
                .find(|p| chrono::DateTime::parse_from_rfc3339(&p.cut_time).is_ok_and(|c| c <= t)),
            Err(_) => points.iter().find(|p| p.point == s),
        },
    };
    found.ok_or_else(|| match selector {
        "latest" => "the VM has no recovery point yet".to_string(),
        "latest-app-consistent" => {
            "the VM has no app-consistent point; use --point latest for a crash-consistent one"
                .to_string()
        }
        s if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {
            format!("no point was cut at or before {s}; see `lifeboat points VM`")
        }
        s => format!("no point {s} for this VM; see `lifeboat points VM`"),
    })
}

#[utoipa::path(post, path = "/api/v1/protections/{id}/failover", tag = "failover",
    params(("id" = String, Path, description = "The protection's id")),
    request_body = FailoverRequest,
    responses((status = 200, description = "The VM runs on the recovery host (hydrating from the vault)", body = RecoveryView),
               (status = 400, description = "Bad kind or point", body = ApiError),
               (status = 404, description = "No such protection or point", body = ApiError),
               (status = 409, description = "No point yet, a test copy exists, or another operation runs", body = ApiError),
               (status = 502, description = "The recovery host's agent did not answer; nothing was left behind", body = ApiError)))]
pub async fn failover(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<String>,
    Json(req): Json<FailoverRequest>,
) -> Response {
    let kind = match req.kind.as_str() {
        "test" => RecoveryKind::Test,
        "planned" => RecoveryKind::Planned,
        "unplanned" => RecoveryKind::Unplanned,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("failover kind {other:?} is not known: use test, planned or unplanned"),
            )
        }
    };
    if let Err(m) = lifeboat_agent::recovery::check_network_map(&req.network_map) {
        return error(StatusCode::BAD_REQUEST, m);
    }
    if let Err(m) = check_expose(kind, &req.expose) {
        return error(StatusCode::BAD_REQUEST, m);
    }
    let (p, hosts) = match load(&s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if matches!(
        p.state,
        ProtectionState::Enabling | ProtectionState::InitialSync
    ) {
        let progress = if p.sync_total > 0 {
            format!(" ({}% copied)", p.sync_done * 100 / p.sync_total)
        } else {
            String::new()
        };
        return error(
            StatusCode::CONFLICT,
            format!(
                "{} has no recovery point yet: its initial sync is running{progress}; failover is possible once it is protected (`lifeboat protect {} --wait`)",
                p.vm, p.vm
            ),
        );
    }
    if p.state == ProtectionState::Disabling {
        return error(
            StatusCode::CONFLICT,
            format!("{} is being unprotected", p.vm),
        );
    }
    if p.state == ProtectionState::FailedOver {
        return error(
            StatusCode::CONFLICT,
            format!(
                "{} has failed over already: it runs on its recovery host",
                p.vm
            ),
        );
    }
    if kind == RecoveryKind::Planned && req.point.as_deref().is_some_and(|pt| pt != "latest") {
        return error(
            StatusCode::BAD_REQUEST,
            "a planned failover starts from the final point it takes of the stopped VM; --point is for test and unplanned failovers",
        );
    }
    let points = match s.db.points(&p.id).await {
        Ok(v) => v,
        Err(e) => return db_error(e),
    };
    let point = match choose_point(&points, req.point.as_deref().unwrap_or("latest")) {
        Ok(pt) => pt.clone(),
        Err(m) => return error(StatusCode::NOT_FOUND, m),
    };
    let Some(rhost) = hosts.iter().find(|h| h.host.id == p.recovery_host_id) else {
        return error(
            StatusCode::CONFLICT,
            "the VM's recovery host is no longer enrolled",
        );
    };
    // The key sealed to the recovery host, before anything is changed.
    let vault = match crate::failover::vault_for(&s.db, &p, rhost).await {
        Ok(v) => v,
        Err((code, why)) => return error(code, why),
    };
    let op = match s
        .db
        .start_operation(
            &p.host_id,
            &p.vm,
            &format!("failover-{}", kind.as_str()),
            &format!("bringing {} up from point {}", p.vm, point.point),
        )
        .await
    {
        Ok(id) => OpGuard::new(&s.db, &id),
        Err(e) => return db_error(e),
    };
    let vm = match kind {
        RecoveryKind::Test => format!("{}-test", p.vm),
        _ => p.vm.clone(),
    };
    let log = |step: String| {
        let (db, id) = (s.db.clone(), op.id.clone());
        tokio::spawn(async move { db.advance_operation(&id, "running", &step).await });
    };
    if kind != RecoveryKind::Test {
        // A failover run again after an interrupted one: what the first left on the
        // recovery host goes first (the VM was not running there, or the row would say
        // failed over).
        let stale: Vec<Recovery> = match s.db.recoveries_of(&p.id).await {
            Ok(v) => v.into_iter().filter(|r| r.kind != "test").collect(),
            Err(e) => return db_error(e),
        };
        for old in stale {
            if let Ok(c) = agent_for(rhost, PROVISION_TIMEOUT) {
                // A copy that runs may hold writes: it is never removed here (the
                // watcher records the interrupted failover as done).
                if let Ok(st) = c.recovery_status(&old.id).await {
                    if st.vm_state == "running" {
                        let why = format!(
                            "{} already runs on {} from an interrupted failover; it is recorded as failed over in a moment (see `lifeboat status`)",
                            old.vm, rhost.host.hostname
                        );
                        op.end("failed", &why).await;
                        return error(StatusCode::CONFLICT, why);
                    }
                }
                if let Err(e) = c.remove_recovery(&old.id).await {
                    let why = format!(
                        "removing what an earlier failover left on {}: {e}",
                        rhost.host.hostname
                    );
                    op.end("failed", &why).await;
                    return error(StatusCode::BAD_GATEWAY, why);
                }
            }
            let _ = s.db.delete_recovery(&old.id).await;
        }
    }
    let mut point = point;
    match kind {
        RecoveryKind::Test => {}
        RecoveryKind::Planned => {
            let Some(source) = hosts.iter().find(|h| h.host.id == p.host_id) else {
                op.end("failed", "the VM's host is no longer enrolled")
                    .await;
                return error(StatusCode::CONFLICT, "the VM's host is no longer enrolled");
            };
            // The recovery host must answer before the source is shut down.
            let probe = match agent_for(rhost, Duration::from_secs(10)) {
                Ok(c) => c.recoveries().await,
                Err(r) => return r,
            };
            if let Err(e) = probe {
                let why = format!(
                    "the recovery host {} does not answer ({e}); {} was not touched",
                    rhost.host.hostname, p.vm
                );
                op.end("failed", &why).await;
                return error(StatusCode::BAD_GATEWAY, why);
            }
            let timeout = Duration::from_secs(req.shutdown_timeout_secs.unwrap_or(120));
            match crate::failover::hand_over(&s.db, &p, source, timeout, &log).await {
                Ok((id, time)) => {
                    point.point = id;
                    point.cut_time = time;
                }
                Err((code, why)) => {
                    op.end("failed", &why).await;
                    return error(code, why);
                }
            }
        }
        RecoveryKind::Unplanned => {
            if let Err((code, why)) = crate::failover::set_state(
                &s.db,
                &p.id,
                ProtectionState::FailingOver,
                "unplanned failover",
            )
            .await
            {
                op.end("failed", &why).await;
                return error(code, why);
            }
            match hosts.iter().find(|h| h.host.id == p.host_id) {
                Some(source) => match crate::failover::try_fence(&p, source).await {
                    Ok(killed) => log(format!(
                        "source fenced on {}{}",
                        source.host.hostname,
                        if killed {
                            " (its VM was running: killed)"
                        } else {
                            ""
                        }
                    )),
                    Err(e) => log(format!(
                        "source host {} unreachable ({e}): it will be fenced when it returns",
                        source.host.hostname
                    )),
                },
                None => log("the source host is no longer enrolled".into()),
            }
        }
    }
    let mut rec = Recovery {
        id: uuid::Uuid::new_v4().to_string(),
        protection_id: p.id.clone(),
        kind: kind.as_str().into(),
        host_id: rhost.host.id.clone(),
        vm: vm.clone(),
        origin_host_id: p.host_id.clone(),
        origin_vm: p.vm.clone(),
        point: point.point.clone(),
        point_time: point.cut_time.clone(),
        state: "starting".into(),
        vm_state: "stopped".into(),
        forwards: "[]".into(),
        ..Default::default()
    };
    if let Err(e) = s.db.add_recovery(&rec).await {
        op.end("failed", &e.to_string()).await;
        return db_error(e);
    }
    let Some(saved) = s.db.recovery(&rec.id).await.ok().flatten() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the recovery vanished");
    };
    rec = saved;
    let client = match agent_for(rhost, PROVISION_TIMEOUT) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ask = RecoveryRequest {
        recovery_id: rec.id.clone(),
        vault,
        point: point.point.clone(),
        vm: vm.clone(),
        kind,
        resume_only: false,
        // The request's mapping, else the one given when replication was enabled.
        network_map: if req.network_map.is_empty() {
            super::protection::network_map(&p)
        } else {
            req.network_map.clone()
        },
        expose: req.expose.clone(),
    };
    let asked = client.ensure_recovery(&ask).await;
    lifeboat_agent::failpoint::reached(&format!("{}-after-recovery-started", kind.as_str())).await;
    match asked {
        Ok(status) => {
            apply_status(&mut rec, &status);
            rec.state = "running".into();
            if let Err(e) = save(&s.db, &mut rec).await {
                return db_error(e);
            }
            if kind != RecoveryKind::Test {
                let reason = format!("failed over to {}", rhost.host.hostname);
                if let Err((code, why)) =
                    crate::failover::set_state(&s.db, &p.id, ProtectionState::FailedOver, &reason)
                        .await
                {
                    return error(code, why);
                }
            }
            op.end(
                "succeeded",
                &format!(
                    "{vm} runs on {} from point {}",
                    rhost.host.hostname, point.point
                ),
            )
            .await;
            tracing::info!(%vm, point = %point.point, host = %rhost.host.hostname, "failover ({}) done", kind.as_str());
            Json(recovery_view(rec, &hosts)).into_response()
        }
        Err(e) => {
            // Undo: nothing of a failed bring-up stays on the recovery host.
            let undo = client.remove_recovery(&rec.id).await;
            let msg = format!("bringing {vm} up on {}: {e}", rhost.host.hostname);
            match undo {
                Ok(_) => {
                    let _ = s.db.delete_recovery(&rec.id).await;
                    op.end("failed", &msg).await;
                }
                Err(u) => {
                    rec.state = "failed".into();
                    rec.error = format!("{msg}; removing what was made also failed: {u}");
                    let _ = save(&s.db, &mut rec).await;
                    op.end("failed", &rec.error).await;
                }
            }
            agent_error(e)
        }
    }
}

/// Copies what the agent reports into the row.
pub(crate) fn apply_status(rec: &mut Recovery, st: &RecoveryStatus) {
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
    rec.forwards = serde_json::to_string(&st.record.forwards).unwrap_or_else(|_| "[]".into());
    rec.error = st.error.clone().unwrap_or_default();
}

/// Saves a recovery, re-reading it after a lost race and keeping the caller's fields.
pub(crate) async fn save(
    db: &crate::db::Database,
    rec: &mut Recovery,
) -> Result<(), crate::db::DbError> {
    loop {
        if db.save_recovery(rec).await? {
            return Ok(());
        }
        match db.recovery(&rec.id).await? {
            Some(now) => rec.generation = now.generation,
            None => return Ok(()),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CleanedUp {
    pub vm: String,
    pub operation: String,
    /// The test copy removed from the recovery host.
    pub removed: String,
}

#[utoipa::path(post, path = "/api/v1/protections/{id}/failover/cleanup", tag = "failover",
    params(("id" = String, Path, description = "The protection's id")),
    responses((status = 200, description = "The test copy and everything made for it are gone", body = CleanedUp),
               (status = 404, description = "No such protection, or no test copy", body = ApiError),
               (status = 409, description = "Another operation runs on the VM", body = ApiError),
               (status = 502, description = "The recovery host's agent did not answer; run it again", body = ApiError)))]
pub async fn cleanup(State(s): State<Arc<ServerState>>, Path(id): Path<String>) -> Response {
    let (p, hosts) = match load(&s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let tests: Vec<Recovery> = match s.db.recoveries_of(&p.id).await {
        Ok(v) => v.into_iter().filter(|r| r.kind == "test").collect(),
        Err(e) => return db_error(e),
    };
    let Some(mut rec) = tests.into_iter().next() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{} has no test copy to clean up", p.vm),
        );
    };
    let op = match s
        .db
        .start_operation(
            &p.host_id,
            &p.vm,
            "failover-cleanup",
            &format!("removing {}", rec.vm),
        )
        .await
    {
        Ok(id) => OpGuard::new(&s.db, &id),
        Err(e) => return db_error(e),
    };
    rec.state = "removing".into();
    if let Err(e) = save(&s.db, &mut rec).await {
        return db_error(e);
    }
    let Some(rhost) = hosts.iter().find(|h| h.host.id == rec.host_id) else {
        op.end("failed", "the recovery host is no longer enrolled")
            .await;
        return error(
            StatusCode::CONFLICT,
            "the recovery host is no longer enrolled",
        );
    };
    let client = match agent_for(rhost, PROVISION_TIMEOUT) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match client.remove_recovery(&rec.id).await {
        Ok(_) => {
            if let Err(e) = s.db.delete_recovery(&rec.id).await {
                return db_error(e);
            }
            let operation = op.id.clone();
            op.end("succeeded", &format!("{} removed", rec.vm)).await;
            tracing::info!(vm = %rec.vm, "test copy removed");
            Json(CleanedUp {
                vm: p.vm.clone(),
                operation,
                removed: rec.vm,
            })
            .into_response()
        }
        Err(e) => {
            let msg = format!(
                "removing {} from {}: {e}; run the cleanup again",
                rec.vm, rhost.host.hostname
            );
            op.end("failed", &msg).await;
            error(StatusCode::BAD_GATEWAY, msg)
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailbackRequest {
    /// Seconds the recovery VM has to power off after the ACPI button (default 120).
    #[serde(default)]
    pub shutdown_timeout_secs: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StepDone {
    pub vm: String,
    pub operation: String,
    pub state: String,
    /// What happened, in a sentence.
    pub message: String,
}

/// Loads a protection in `want` state, with its hosts and its (non-test) recovery.
async fn load_moved(
    s: &ServerState,
    id: &str,
    want: &[ProtectionState],
    what: &str,
) -> Result<(Protection, Vec<HostAccess>, Option<Recovery>), Response> {
    let (p, hosts) = load(s, id).await?;
    if !want.contains(&p.state) {
        return Err(error(
            StatusCode::CONFLICT,
            format!("{} is {}: {what}", p.vm, p.state.as_str()),
        ));
    }
    let rec =
        s.db.recoveries_of(&p.id)
            .await
            .map_err(db_error)?
            .into_iter()
            .find(|r| r.kind != "test");
    Ok((p, hosts, rec))
}

#[utoipa::path(post, path = "/api/v1/protections/{id}/failback", tag = "failover",
    params(("id" = String, Path, description = "The protection's id")),
    request_body = FailbackRequest,
    responses((status = 200, description = "The VM runs at home again; replication waits for reprotect", body = StepDone),
               (status = 409, description = "The VM has not failed over, or another operation runs", body = ApiError),
               (status = 502, description = "A host did not answer; the message says what state the VM is in", body = ApiError)))]
pub async fn failback(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<String>,
    Json(req): Json<FailbackRequest>,
) -> Response {
    let (p, hosts, rec) = match load_moved(
        &s,
        &id,
        &[ProtectionState::FailedOver, ProtectionState::FailingBack],
        "only a VM that failed over can fail back",
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(rec) = rec else {
        return error(
            StatusCode::CONFLICT,
            format!("{} has no VM on its recovery host", p.vm),
        );
    };
    let (Some(home), Some(away)) = (
        hosts.iter().find(|h| h.host.id == p.host_id),
        hosts.iter().find(|h| h.host.id == rec.host_id),
    ) else {
        return error(
            StatusCode::CONFLICT,
            "a host of this VM is no longer enrolled",
        );
    };
    let op = match s
        .db
        .start_operation(
            &p.host_id,
            &p.vm,
            "failback",
            &format!("bringing {} home", p.vm),
        )
        .await
    {
        Ok(id) => OpGuard::new(&s.db, &id),
        Err(e) => return db_error(e),
    };
    let log = |step: String| {
        let (db, id) = (s.db.clone(), op.id.clone());
        tokio::spawn(async move { db.advance_operation(&id, "running", &step).await });
    };
    let timeout = Duration::from_secs(req.shutdown_timeout_secs.unwrap_or(120));
    match crate::failover::fail_back(&s.db, &p, &rec, home, away, timeout, &log).await {
        Ok(point) => {
            let operation = op.id.clone();
            let message = format!(
                "{} runs at home on {} from point {point}",
                p.vm, home.host.hostname
            );
            op.end("succeeded", &message).await;
            Json(StepDone {
                vm: p.vm.clone(),
                operation,
                state: ProtectionState::FailedBack.as_str().into(),
                message,
            })
            .into_response()
        }
        Err((code, why)) => {
            op.end("failed", &why).await;
            error(code, why)
        }
    }
}

#[utoipa::path(post, path = "/api/v1/protections/{id}/reprotect", tag = "failover",
    params(("id" = String, Path, description = "The protection's id")),
    responses((status = 200, description = "Replication resumes from home, building on the failback's point", body = StepDone),
               (status = 409, description = "The VM is not back home", body = ApiError)))]
pub async fn reprotect(State(s): State<Arc<ServerState>>, Path(id): Path<String>) -> Response {
    let (p, _, _) = match load_moved(
        &s,
        &id,
        &[ProtectionState::FailedBack],
        "reprotect follows a failback",
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = match s
        .db
        .start_operation(&p.host_id, &p.vm, "reprotect", "resuming replication")
        .await
    {
        Ok(id) => OpGuard::new(&s.db, &id),
        Err(e) => return db_error(e),
    };
    loop {
        let Some(mut row) = (match s.db.protection(&p.id).await {
            Ok(r) => r,
            Err(e) => return db_error(e),
        }) else {
            return error(StatusCode::NOT_FOUND, "the protection is gone");
        };
        row.state = ProtectionState::Protected;
        row.reason = String::new();
        row.failures = 0;
        row.last_error = String::new();
        row.next_sync_at = chrono::Utc::now().to_rfc3339();
        match s.db.save_protection(&mut row).await {
            Ok(true) => break,
            Ok(false) => continue,
            Err(e) => return db_error(e),
        }
    }
    let operation = op.id.clone();
    let message = format!("replication of {} resumed", p.vm);
    op.end("succeeded", &message).await;
    Json(StepDone {
        vm: p.vm.clone(),
        operation,
        state: ProtectionState::Protected.as_str().into(),
        message,
    })
    .into_response()
}

#[utoipa::path(post, path = "/api/v1/protections/{id}/failover/commit", tag = "failover",
    params(("id" = String, Path, description = "The protection's id")),
    responses((status = 200, description = "The failover is committed: the recovery VM is the VM now", body = StepDone),
               (status = 409, description = "The VM has not failed over", body = ApiError)))]
pub async fn commit(State(s): State<Arc<ServerState>>, Path(id): Path<String>) -> Response {
    let (p, _, rec) = match load_moved(
        &s,
        &id,
        &[ProtectionState::FailedOver],
        "only a failed-over VM is committed (a test copy is removed with `failover cleanup`)",
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(mut rec) = rec else {
        return error(
            StatusCode::CONFLICT,
            format!("{} has no VM on its recovery host", p.vm),
        );
    };
    let op = match s
        .db
        .start_operation(
            &p.host_id,
            &p.vm,
            "failover-commit",
            "committing the failover",
        )
        .await
    {
        Ok(id) => OpGuard::new(&s.db, &id),
        Err(e) => return db_error(e),
    };
    rec.state = "committed".into();
    if let Err(e) = save(&s.db, &mut rec).await {
        return db_error(e);
    }
    let operation = op.id.clone();
    let message = format!(
        "the failover of {} is committed: {} on the recovery host is the VM now; `lifeboat failback {}` brings it home",
        p.vm, rec.vm, p.vm
    );
    op.end("succeeded", &message).await;
    Json(StepDone {
        vm: p.vm.clone(),
        operation,
        state: p.state.as_str().into(),
        message,
    })
    .into_response()
}

#[utoipa::path(get, path = "/api/v1/recoveries", tag = "failover",
    responses((status = 200, description = "VMs running on recovery hosts: their origin, point and state", body = [RecoveryView])))]
pub async fn list_recoveries(State(s): State<Arc<ServerState>>) -> Response {
    match recovery_views(&s.db).await {
        Ok(views) => Json(views).into_response(),
        Err(e) => db_error(e),
    }
}

/// Every recovered VM with its hosts' names (`GET /api/v1/recoveries`, the dashboard).
pub async fn recovery_views(
    db: &crate::db::Database,
) -> Result<Vec<RecoveryView>, crate::db::DbError> {
    let hosts = db.hosts_with_access().await?;
    Ok(db
        .recoveries()
        .await?
        .into_iter()
        .map(|r| recovery_view(r, &hosts))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(point: &str, t: &str, c: &str) -> PointRow {
        PointRow {
            point: point.into(),
            cut_time: t.into(),
            consistency: c.into(),
            kind: "incremental".into(),
            bytes_read: 0,
            new_bytes: 0,
            note: None,
        }
    }

    #[test]
    fn points_are_chosen_by_selector() {
        let pts = [
            pt("a", "2026-01-01T00:00:00Z", "app"),
            pt("b", "2026-01-01T00:01:00Z", "crash"),
            pt("c", "2026-01-01T00:02:00Z", "crash"),
        ];
        assert_eq!(choose_point(&pts, "latest").unwrap().point, "c");
        assert_eq!(
            choose_point(&pts, "latest-app-consistent").unwrap().point,
            "a"
        );
        assert_eq!(choose_point(&pts, "b").unwrap().point, "b");
        assert_eq!(
            choose_point(&pts, "2026-01-01T00:01:30Z").unwrap().point,
            "b"
        );
        assert!(choose_point(&pts, "2025-12-31T00:00:00Z")
            .unwrap_err()
            .contains("at or before"));
        assert!(choose_point(&pts, "zzz")
            .unwrap_err()
            .contains("no point zzz"));
        assert!(choose_point(&pts[1..], "latest-app-consistent").is_err());
        assert!(choose_point(&[], "latest")
            .unwrap_err()
            .contains("no recovery point"));
        // A point only found in the vault (another host may have put it there) is never
        // what `latest` or a time picks; it is still there by its id.
        let mut found = pt("z", "2026-01-01T00:03:00Z", "app");
        found.kind = crate::db::UNREPORTED.into();
        let with_found = [pts[0].clone(), pts[1].clone(), pts[2].clone(), found];
        assert_eq!(choose_point(&with_found, "latest").unwrap().point, "c");
        assert_eq!(
            choose_point(&with_found, "latest-app-consistent")
                .unwrap()
                .point,
            "a"
        );
        assert_eq!(
            choose_point(&with_found, "2026-01-01T00:04:00Z")
                .unwrap()
                .point,
            "c"
        );
        assert_eq!(choose_point(&with_found, "z").unwrap().point, "z");
    }
}
