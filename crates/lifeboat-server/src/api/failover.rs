//! Failover routes: bring a protected VM up on its recovery host from a recovery point,
//! list what runs there, and remove a test copy.
//!
//! A test failover runs beside production: the protection, its replication and the VM at
//! home are not touched. The copy gets an isolated network and a MAC of its own (the
//! recovery host's agent sees to that, `lifeboat_agent::provision`).

// Helpers here fail with the ready HTTP response; one per request, so its size is moot.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lifeboat_agent::recovery::RecoveryKind;
use serde::{Deserialize, Serialize};

use super::operations::start_op;
use super::protection::load;
use super::{app_error, db_error, error, ApiError, ServerState};
use crate::db::Operation;
use crate::db::{HostAccess, PointRow, Protection, ProtectionState, Recovery};
pub use crate::failover::{recovery_views, RecoveryView};
use crate::ops::cleanup::{Cleanup, CleanupParams};
use crate::ops::commit::{Commit, CommitParams};
use crate::ops::failback::{Failback, FailbackParams};
use crate::ops::failover::{Failover, FailoverParams};
use crate::ops::reprotect::{Reprotect, ReprotectParams};
use lifeboat_types::{OperationKind, RecoveryState};

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
    responses((status = 202, description = "The failover runs as an operation: follow it at `/api/v1/operations/{id}`; its `result` is the recovered VM", body = Operation),
               (status = 400, description = "Bad kind or point", body = ApiError),
               (status = 404, description = "No such protection or point", body = ApiError),
               (status = 409, description = "No point yet, a test copy exists, or another operation runs", body = ApiError)))]
pub async fn failover(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<lifeboat_types::ProtectionId>,
    Json(req): Json<FailoverRequest>,
) -> Response {
    let kind = match req.kind.parse::<RecoveryKind>() {
        Ok(k) => k,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "failover kind {:?} is not known: use test, planned or unplanned",
                    req.kind
                ),
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
    if let Err(r) = may_fail_over(&p, kind) {
        return r;
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
    if kind == RecoveryKind::Planned && !hosts.iter().any(|h| h.host.id == p.host_id) {
        return error(StatusCode::CONFLICT, "the VM's host is no longer enrolled");
    }
    // The key sealed to the recovery host, before anything is changed.
    if let Err(e) = crate::failover::vault_for(&s.db, &p, rhost).await {
        return app_error(e);
    }
    // A copy fenced there after an unplanned failback holds the VM's name, and writes no
    // point has: refused now, before anything stops, not when the VM would start.
    if kind != RecoveryKind::Test {
        let fenced = match s.db.recoveries_of(&p.id).await {
            Ok(v) => v.into_iter().find(|r| {
                r.host_id == rhost.host.id
                    && matches!(r.state, RecoveryState::Fenced | RecoveryState::Fencing)
            }),
            Err(e) => return db_error(e),
        };
        if let Some(r) = fenced {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "{} on {} is a copy of {} fenced after an unplanned failback (it holds any write made there after the point the VM came home from); nothing was changed. Keep what you need from it, then `lifeboat failover cleanup {} --fenced` removes it",
                    r.vm, rhost.host.hostname, p.vm, p.vm
                ),
            );
        }
    }
    let params = FailoverParams {
        kind,
        protection_id: p.id.clone(),
        recovery_id: lifeboat_types::RecoveryId::random(),
        vm: match kind {
            RecoveryKind::Test => format!("{}-test", p.vm),
            _ => p.vm.clone(),
        },
        point: (kind != RecoveryKind::Planned)
            .then(|| (point.point.clone(), point.cut_time.clone())),
        shutdown_timeout_secs: req.shutdown_timeout_secs.unwrap_or(120),
        // The request's mapping, else the one given when replication was enabled.
        network_map: if req.network_map.is_empty() {
            super::protection::network_map(&p)
        } else {
            req.network_map.clone()
        },
        expose: req.expose.clone(),
    };
    let first = match kind {
        RecoveryKind::Planned => format!(
            "planned failover of {} to {}: shutdown, final sync, start there",
            p.vm, rhost.host.hostname
        ),
        _ => format!(
            "{} failover of {} to {} from point {}",
            kind, p.vm, rhost.host.hostname, point.point
        ),
    };
    let op_kind = match kind {
        RecoveryKind::Test => OperationKind::FailoverTest,
        RecoveryKind::Planned => OperationKind::FailoverPlanned,
        RecoveryKind::Unplanned => OperationKind::FailoverUnplanned,
    };
    start_op::<Failover>(&s, op_kind, &p, &params, first).await
}

/// Whether the protection's state allows a failover of `kind`, with what to do if not.
fn may_fail_over(p: &Protection, kind: RecoveryKind) -> Result<(), Response> {
    if matches!(
        p.state,
        ProtectionState::Enabling | ProtectionState::InitialSync
    ) {
        let progress = if p.sync_total > 0 {
            format!(" ({}% copied)", p.sync_done * 100 / p.sync_total)
        } else {
            String::new()
        };
        return Err(error(
            StatusCode::CONFLICT,
            format!(
                "{} has no recovery point yet: its initial sync is running{progress}; failover is possible once it is protected (`lifeboat protect {} --wait`)",
                p.vm, p.vm
            ),
        ));
    }
    if p.state == ProtectionState::Disabling {
        return Err(error(
            StatusCode::CONFLICT,
            format!("{} is being unprotected", p.vm),
        ));
    }
    if matches!(
        p.state,
        ProtectionState::FailedOver
            | ProtectionState::Reprotecting
            | ProtectionState::ProtectedReversed
            | ProtectionState::DegradedReversed
    ) {
        return Err(error(
            StatusCode::CONFLICT,
            format!(
                "{} has failed over already: it runs on its recovery host; `lifeboat failback {}` brings it home (`--unplanned` if that host is lost)",
                p.vm, p.vm
            ),
        ));
    }
    if kind != RecoveryKind::Test {
        if let Err(r) = p.state.on(lifeboat_types::Event::FailOver) {
            return Err(error(StatusCode::CONFLICT, format!("{}: {r}", p.vm)));
        }
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CleanedUp {
    pub vm: String,
    pub operation: String,
    /// The test copy removed from the recovery host.
    pub removed: String,
}

/// What `failover cleanup` removes.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct CleanupQuery {
    /// Remove the copy fenced on the recovery host after an unplanned failback, and the
    /// writes it holds after the point the VM came home from, instead of a test copy.
    #[serde(default)]
    pub fenced: bool,
}

#[utoipa::path(post, path = "/api/v1/protections/{id}/failover/cleanup", tag = "failover",
    params(("id" = String, Path, description = "The protection's id"), CleanupQuery),
    responses((status = 202, description = "The removal runs as an operation; once it succeeded the test copy (or, with `fenced`, the fenced copy) and everything made for it are gone (its `result`)", body = Operation),
               (status = 404, description = "No such protection, or no such copy", body = ApiError),
               (status = 409, description = "Another operation runs on the VM", body = ApiError),
               (status = 502, description = "The recovery host's agent did not answer; run it again", body = ApiError)))]
pub async fn cleanup(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<lifeboat_types::ProtectionId>,
    Query(q): Query<CleanupQuery>,
) -> Response {
    let (p, _) = match load(&s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let all = match s.db.recoveries_of(&p.id).await {
        Ok(v) => v,
        Err(e) => return db_error(e),
    };
    // A fenced copy holds the recovery site's writes made after the point the VM came
    // home from: it goes only when asked for by name (`--fenced`), never as a test copy.
    let fenced = all
        .iter()
        .find(|r| r.state == RecoveryState::Fenced || r.state == RecoveryState::Fencing);
    let chosen = if q.fenced {
        fenced.filter(|r| r.state == RecoveryState::Fenced)
    } else {
        all.iter().find(|r| r.kind == RecoveryKind::Test)
    };
    let Some(rec) = chosen.cloned() else {
        let why = match (q.fenced, fenced) {
            (true, Some(r)) => format!(
                "{}'s copy on its recovery host is not fenced yet (its host has not answered since the failback); it is removed once it is",
                r.origin_vm
            ),
            (true, None) => format!("{} has no fenced copy to remove", p.vm),
            (false, Some(_)) => format!(
                "{} has no test copy to clean up (a fenced copy from an unplanned failback is there: `lifeboat failover cleanup {} --fenced` removes it, and its writes after the failback's point)",
                p.vm, p.vm
            ),
            (false, None) => format!("{} has no test copy to clean up", p.vm),
        };
        return error(StatusCode::NOT_FOUND, why);
    };
    let params = CleanupParams {
        protection_id: p.id.clone(),
        recovery_id: rec.id.clone(),
        vm: rec.vm.clone(),
    };
    let first = if q.fenced {
        format!(
            "removing the fenced copy {} and the writes it holds",
            rec.vm
        )
    } else {
        format!("removing the test copy {}", rec.vm)
    };
    start_op::<Cleanup>(&s, OperationKind::FailoverCleanup, &p, &params, first).await
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailbackRequest {
    /// Seconds the recovery VM has to power off after the ACPI button (default 120).
    #[serde(default)]
    pub shutdown_timeout_secs: Option<u64>,
    /// The recovery site is lost: bring the VM home from a point of the vault, without
    /// its final sync, and fence the recovery VM (now, or when its host answers).
    #[serde(default)]
    pub unplanned: bool,
    /// With `unplanned`: `latest` (default), `latest-app-consistent`, a point id, or an
    /// RFC 3339 time (the newest point at or before it).
    #[serde(default)]
    pub point: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepDone {
    pub vm: String,
    pub operation: String,
    pub state: String,
    /// What happened, in a sentence.
    pub message: String,
    /// The point it made, when it made one (a reprotect where the VM runs now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
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
            .find(|r| r.kind != RecoveryKind::Test && r.is_the_vm());
    Ok((p, hosts, rec))
}

#[utoipa::path(post, path = "/api/v1/protections/{id}/failback", tag = "failover",
    params(("id" = String, Path, description = "The protection's id")),
    request_body = FailbackRequest,
    responses((status = 202, description = "The failback runs as an operation: follow it at `/api/v1/operations/{id}`; once it succeeded the VM runs at home and replication waits for reprotect", body = Operation),
               (status = 409, description = "The VM has not failed over, or another operation runs", body = ApiError)))]
pub async fn failback(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<lifeboat_types::ProtectionId>,
    Json(req): Json<FailbackRequest>,
) -> Response {
    let (p, hosts, rec) = match load_moved(
        &s,
        &id,
        &[
            ProtectionState::FailedOver,
            ProtectionState::FailingBack,
            ProtectionState::ProtectedReversed,
            ProtectionState::DegradedReversed,
        ],
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
    if req.point.is_some() && !req.unplanned {
        return error(
            StatusCode::BAD_REQUEST,
            "a planned failback takes the recovery VM's final point; `point` goes with `unplanned`",
        );
    }
    let unplanned_point = if req.unplanned {
        let points = match s.db.points(&p.id).await {
            Ok(v) => v,
            Err(e) => return db_error(e),
        };
        match choose_point(&points, req.point.as_deref().unwrap_or("latest")) {
            Ok(pt) => Some((pt.point.clone(), pt.cut_time.clone())),
            Err(m) => return error(StatusCode::NOT_FOUND, m),
        }
    } else {
        None
    };
    let first = match &unplanned_point {
        None => format!(
            "failback of {} from {} to {}: shutdown there, final sync, written at home, started at home",
            p.vm, away.host.hostname, home.host.hostname
        ),
        Some((point, time)) => format!(
            "unplanned failback of {} to {} from point {point} ({time}): {} fenced, the point written at home, started at home",
            p.vm, home.host.hostname, away.host.hostname
        ),
    };
    let params = FailbackParams {
        protection_id: p.id.clone(),
        recovery_id: rec.id.clone(),
        shutdown_timeout_secs: req.shutdown_timeout_secs.unwrap_or(120),
        reversed: p.state.is_reversed(),
        unplanned_point,
    };
    start_op::<Failback>(&s, OperationKind::Failback, &p, &params, first).await
}

#[utoipa::path(post, path = "/api/v1/protections/{id}/reprotect", tag = "failover",
    params(("id" = String, Path, description = "The protection's id")),
    responses((status = 202, description = "Runs as an operation. After a failback replication resumes from home, building on the failback's point; after a committed failover the VM is protected where it runs now (`protected_reversed`), its first point an incremental over the failover's", body = Operation),
               (status = 409, description = "The VM is neither back home nor failed over and committed", body = ApiError)))]
pub async fn reprotect(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<lifeboat_types::ProtectionId>,
) -> Response {
    let (p, hosts, rec) = match load_moved(
        &s,
        &id,
        &[
            ProtectionState::FailedBack,
            ProtectionState::FailedOver,
            ProtectionState::Reprotecting,
        ],
        "reprotect follows a failback, or a committed failover",
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    if p.state == ProtectionState::FailedBack {
        let params = ReprotectParams {
            protection_id: p.id.clone(),
            recovery_id: None,
        };
        let first = format!("resuming replication of {}", p.vm);
        return start_op::<Reprotect>(&s, OperationKind::Reprotect, &p, &params, first).await;
    }
    // Reversed: the VM is protected where it runs now, which must be for good.
    let Some(rec) = rec.filter(|r| r.state == RecoveryState::Committed) else {
        return error(
            StatusCode::CONFLICT,
            format!(
                "{} runs on its recovery host but the failover is not committed: `lifeboat failover commit {}` first",
                p.vm, p.vm
            ),
        );
    };
    let Some(away) = hosts.iter().find(|h| h.host.id == rec.host_id) else {
        return error(
            StatusCode::CONFLICT,
            "the recovery host is no longer enrolled",
        );
    };
    let params = ReprotectParams {
        protection_id: p.id.clone(),
        recovery_id: Some(rec.id.clone()),
    };
    let first = format!(
        "protecting {} where it runs now, on {}: its first point is an incremental over the failover's",
        p.vm, away.host.hostname
    );
    start_op::<Reprotect>(&s, OperationKind::Reprotect, &p, &params, first).await
}

#[utoipa::path(post, path = "/api/v1/protections/{id}/failover/commit", tag = "failover",
    params(("id" = String, Path, description = "The protection's id")),
    responses((status = 202, description = "Runs as an operation; once it succeeded the failover is committed: the recovery VM is the VM now", body = Operation),
               (status = 409, description = "The VM has not failed over", body = ApiError)))]
pub async fn commit(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<lifeboat_types::ProtectionId>,
) -> Response {
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
    let Some(rec) = rec else {
        return error(
            StatusCode::CONFLICT,
            format!("{} has no VM on its recovery host", p.vm),
        );
    };
    let params = CommitParams {
        protection_id: p.id.clone(),
        recovery_id: rec.id.clone(),
    };
    let first = "committing the failover".to_string();
    start_op::<Commit>(&s, OperationKind::FailoverCommit, &p, &params, first).await
}

#[utoipa::path(get, path = "/api/v1/recoveries", tag = "failover",
    responses((status = 200, description = "VMs running on recovery hosts: their origin, point and state", body = [RecoveryView])))]
pub async fn list_recoveries(State(s): State<Arc<ServerState>>) -> Response {
    match recovery_views(&s.db).await {
        Ok(views) => Json(views).into_response(),
        Err(e) => db_error(e),
    }
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
