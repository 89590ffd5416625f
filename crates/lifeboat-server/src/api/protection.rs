//! Protection routes: enable and disable replication of a VM, see its state, RPO, points,
//! and the operations that changed it.

// Helpers here fail with the ready HTTP response; one per request, so its size is moot.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use lifeboat_agent::api::{UnprotectReport, UnprotectRequest};
use lifeboat_agent::client::AgentClient;
use lifeboat_agent::sync::VaultAccess;
use lifeboat_types::{OperationKind, OperationStatus};
use serde::{Deserialize, Serialize};

use super::operations::OpGuard;
use super::{db_error, error, ApiError, ServerState};
use crate::db::{
    DbError, Event, Facts, HostAccess, PointRow, Protection, ProtectionState, TransitionError,
};
use crate::policy::Policy;
use crate::replication::{rpo_seconds, AGENT_TIMEOUT};

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProtectRequest {
    /// The VM's name on its host.
    pub vm: String,
    /// The VM's host (host name, address or id); needed only when several hosts have a VM
    /// of that name.
    #[serde(default)]
    pub host: Option<String>,
    /// The vault's URL (`file:///…`, `s3://…`, `azure://…`); it must exist (`lifeboat vault init`).
    pub vault: String,
    /// The vault's passphrase. Sent once to the VM's agent and the recovery host's, which
    /// seal the vault's key to themselves; the server never stores it.
    #[schema(value_type = String)]
    pub vault_passphrase: lifeboat_agent::secret::Secret,
    /// Where the VM is recovered (host name, address or id of an enrolled host).
    pub recovery_host: String,
    /// A policy name (`GET /api/v1/policies`); `default` when absent.
    #[serde(default)]
    pub policy: Option<String>,
    /// Source network → recovery host network, per NIC (e.g. `{"user": "isolated"}`): what
    /// planned and unplanned failovers use when they name no mapping of their own.
    #[serde(default)]
    pub network_map: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncProgress {
    pub sync_id: String,
    pub started_at: String,
    pub bytes_done: i64,
    pub bytes_total: i64,
    pub bytes_per_second: f64,
    /// Seconds to go at the current rate, when known.
    pub eta_seconds: Option<f64>,
}

/// A protected VM as the API shows it (never the vault passphrase).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProtectionView {
    pub id: String,
    pub host: String,
    pub host_id: String,
    pub vm: String,
    pub vault: String,
    pub recovery_host: String,
    pub policy: String,
    pub state: ProtectionState,
    /// Why the VM is Degraded, or what the initial sync is waiting for.
    pub reason: String,
    /// Age of the newest point; absent before the first.
    pub rpo_seconds: Option<f64>,
    pub rpo_threshold_seconds: u64,
    pub last_point: Option<String>,
    pub last_point_time: Option<String>,
    pub last_consistency: Option<String>,
    /// The sync running now, if any.
    pub sync: Option<SyncProgress>,
    pub bytes_replicated: i64,
    pub syncs_committed: i64,
    pub last_sync_seconds: f64,
    pub last_error: String,
    pub created_at: String,
    /// The failover network mapping given at enable (source network → recovery network).
    pub network_map: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Protected {
    pub protection: ProtectionView,
    /// The enable operation, which ends when the first recovery point is committed.
    pub operation: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UnprotectQuery {
    /// Also delete the VM's recovery points from the vault.
    #[serde(default)]
    pub delete_points: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Unprotected {
    pub vm: String,
    pub operation: String,
    pub tracking_removed: bool,
    pub points_deleted: u64,
    pub note: Option<String>,
}

pub fn view(p: &Protection, hosts: &[HostAccess]) -> ProtectionView {
    let now = Utc::now();
    let name_of = |id: &str| {
        hosts
            .iter()
            .find(|h| h.host.id == id)
            .map(|h| h.host.hostname.clone())
            .unwrap_or_else(|| format!("(removed host {id})"))
    };
    let sync = p.current_sync.as_ref().map(|id| {
        let started = p.sync_started_at.clone().unwrap_or_default();
        let secs = chrono::DateTime::parse_from_rfc3339(&started)
            .map(|t| (now - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(0.0);
        let rate = if secs > 0.0 {
            p.sync_done as f64 / secs
        } else {
            0.0
        };
        SyncProgress {
            sync_id: id.clone(),
            started_at: started,
            bytes_done: p.sync_done,
            bytes_total: p.sync_total,
            bytes_per_second: rate,
            eta_seconds: (rate > 0.0 && p.sync_total > 0)
                .then(|| (p.sync_total - p.sync_done).max(0) as f64 / rate),
        }
    });
    ProtectionView {
        id: p.id.clone(),
        host: name_of(&p.host_id),
        host_id: p.host_id.clone(),
        vm: p.vm.clone(),
        vault: p.vault_url.clone(),
        recovery_host: name_of(&p.recovery_host_id),
        policy: p.policy.clone(),
        state: p.state,
        reason: p.reason.clone(),
        rpo_seconds: rpo_seconds(p, now),
        rpo_threshold_seconds: Policy::find(&p.policy).map_or(0, |x| x.rpo_threshold_secs),
        last_point: p.last_point.clone(),
        last_point_time: p.last_point_time.clone(),
        last_consistency: p.last_consistency.clone(),
        sync,
        bytes_replicated: p.bytes_replicated,
        syncs_committed: p.syncs_committed,
        last_sync_seconds: p.last_sync_ms as f64 / 1000.0,
        last_error: p.last_error.clone(),
        created_at: p.created_at.clone(),
        network_map: network_map(p),
    }
}

/// The protection's stored failover network mapping (`{}` when none or unreadable).
pub fn network_map(p: &Protection) -> std::collections::BTreeMap<String, String> {
    serde_json::from_str(&p.network_map).unwrap_or_default()
}

/// The enrolled host named by id, address or host name. Ids and addresses are unique;
/// host names are whatever agents report, so a name two hosts share names neither (an
/// enrolled host calling itself like the recovery site must not be picked in its place).
fn find_host<'a>(hosts: &'a [HostAccess], text: &str) -> Result<&'a HostAccess, Response> {
    if let Some(h) = hosts
        .iter()
        .find(|h| h.host.id == text || h.host.address == text)
    {
        return Ok(h);
    }
    let named: Vec<&HostAccess> = hosts.iter().filter(|h| h.host.hostname == text).collect();
    match named.as_slice() {
        [h] => Ok(h),
        [] => Err(error(
            StatusCode::NOT_FOUND,
            format!("no enrolled host {text}; see `lifeboat hosts list`"),
        )),
        many => Err(error(
            StatusCode::CONFLICT,
            format!(
                "{} enrolled hosts are named {text} (at {}): name the host by its address or id",
                many.len(),
                many.iter()
                    .map(|h| h.host.address.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn agent(h: &HostAccess) -> Result<AgentClient, Response> {
    crate::replication::agent_client(h, AGENT_TIMEOUT)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Which host has `vm`: the one named, or the only one whose inventory lists it.
async fn locate_vm<'a>(
    hosts: &'a [HostAccess],
    vm: &str,
    host: Option<&str>,
) -> Result<&'a HostAccess, Response> {
    let candidates: Vec<&HostAccess> = match host {
        Some(h) => vec![find_host(hosts, h)?],
        None => hosts.iter().collect(),
    };
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for h in candidates {
        let inv = match agent(h)?.inventory().await {
            Ok(inv) => inv,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let has = inv["vms"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"].as_str() == Some(vm));
        if has {
            found.push(h);
        }
    }
    match found.as_slice() {
        // Named by its VM alone, the host must be the only one of all hosts that has it:
        // were another host down, a host that copied the VM's name would be picked (and
        // handed the vault's passphrase).
        [_] if host.is_none() && !problems.is_empty() => Err(error(
            StatusCode::BAD_GATEWAY,
            format!(
                "not every host answered ({}), so which host has {vm} is not certain; name it with `--host`",
                problems.join("; ")
            ),
        )),
        [h] => Ok(h),
        [] => Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "no host has a VM {vm}{}; see `lifeboat vms list`",
                if problems.is_empty() {
                    String::new()
                } else {
                    format!(" (not answering: {})", problems.join("; "))
                }
            ),
        )),
        many => Err(error(
            StatusCode::CONFLICT,
            format!(
                "several hosts have a VM {vm} ({}); say which with `--host`",
                many.iter()
                    .map(|h| h.host.hostname.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/protections", tag = "protection", request_body = ProtectRequest,
    responses((status = 202, description = "Protection enabled; the initial sync runs", body = Protected),
               (status = 400, description = "Bad policy or a vault the agent cannot open", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError),
               (status = 404, description = "No such VM or host", body = ApiError),
               (status = 409, description = "Protected already, or another operation runs on the VM", body = ApiError),
               (status = 502, description = "The VM's agent did not answer", body = ApiError)))]
pub async fn protect(
    State(s): State<Arc<ServerState>>,
    Json(req): Json<ProtectRequest>,
) -> Response {
    let policy_name = req.policy.clone().unwrap_or_else(|| "default".into());
    let Some(policy) = Policy::find(&policy_name) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "no policy {policy_name}; the policies are: {}",
                Policy::names()
            ),
        );
    };
    if req.vault_passphrase.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the vault passphrase is empty");
    }
    if let Err(m) = lifeboat_agent::recovery::check_network_map(&req.network_map) {
        return error(StatusCode::BAD_REQUEST, m);
    }
    let hosts = match s.db.hosts_with_access().await {
        Ok(h) => h,
        Err(e) => return db_error(e),
    };
    let recovery = match find_host(&hosts, &req.recovery_host) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let host = match locate_vm(&hosts, &req.vm, req.host.as_deref()).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    match s.db.protection_of(&host.host.id, &req.vm).await {
        Ok(Some(p)) => {
            return error(
                StatusCode::CONFLICT,
                format!("{} is protected already ({})", req.vm, p.state.as_str()),
            )
        }
        Ok(None) => {}
        Err(e) => return db_error(e),
    }
    let point_name = point_name(&host.host.hostname, &req.vm);
    match s.db.point_name_taken(&point_name).await {
        Ok(false) => {}
        Ok(true) => {
            return error(
                StatusCode::CONFLICT,
                format!("another protection already writes points named {point_name}"),
            )
        }
        Err(e) => return db_error(e),
    }
    let op = match s
        .db
        .start_operation(
            &host.host.id,
            &req.vm,
            OperationKind::Enable,
            "checking the vault",
        )
        .await
    {
        Ok(id) => OpGuard::new(&s.db, &id),
        Err(e) => return db_error(e),
    };
    // Both the VM's agent (it writes) and the recovery host's (it will read) must open
    // the vault: find out now, not at failover. Each seals the vault's key to itself; the
    // server keeps those sealed keys and forgets the passphrase (crate::vault_keys).
    let access = VaultAccess::passphrase(&req.vault, &req.vault_passphrase, &point_name);
    let mut sealed = Vec::new();
    for h in [host, recovery] {
        let checked = match agent(h) {
            Ok(a) => a.check_vault(&access).await,
            Err(r) => {
                op.end(
                    OperationStatus::Failed,
                    "could not build a client for the agent",
                )
                .await;
                return r;
            }
        };
        match checked {
            Ok(c) => match c.sealed_key {
                Some(key) => sealed.push((h.host.id.clone(), key)),
                // Older than this server: it would need the passphrase kept, which the
                // server never does.
                None => {
                    let why = format!("the agent on {} did not seal the vault's key (an older version?): upgrade it, then enable protection again", h.host.hostname);
                    op.end(OperationStatus::Failed, &why).await;
                    return error(StatusCode::CONFLICT, why);
                }
            },
            Err(e) => {
                let msg = e.to_string();
                op.end(OperationStatus::Failed, &msg).await;
                let status = match e {
                    lifeboat_agent::client::ClientError::Refused { .. } => StatusCode::BAD_REQUEST,
                    _ => StatusCode::BAD_GATEWAY,
                };
                return error(status, msg);
            }
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    for (host_id, key) in &sealed {
        if let Err(e) = s.db.put_vault_key(&id, host_id, key).await {
            let _ = s.db.delete_vault_keys(&id).await;
            op.end(OperationStatus::Failed, &e.to_string()).await;
            return db_error(e);
        }
    }
    let now = Utc::now().to_rfc3339();
    let p = Protection {
        id,
        host_id: host.host.id.clone(),
        vm: req.vm.clone(),
        point_name,
        vault_url: req.vault.clone(),
        // Never kept: the agents hold the key, sealed (crate::vault_keys).
        vault_passphrase: Default::default(),
        recovery_host_id: recovery.host.id.clone(),
        policy: policy.name.to_string(),
        network_map: serde_json::to_string(&req.network_map).unwrap_or_else(|_| "{}".into()),
        next_sync_at: now.clone(),
        created_at: now,
        ..Default::default()
    };
    if let Err(e) = s.db.add_protection(&p).await {
        let _ = s.db.delete_vault_keys(&p.id).await;
        op.end(OperationStatus::Failed, &e.to_string()).await;
        return db_error(e);
    }
    // From here the reconciler carries the operation to its end (the first point).
    let operation = op.id.clone();
    op.end(OperationStatus::Running, "initial sync").await;
    tracing::info!(vm = %p.vm, host = %host.host.hostname, policy = policy.name, "protection enabled");
    (
        StatusCode::ACCEPTED,
        Json(Protected {
            protection: view(&p, &hosts),
            operation,
        }),
    )
        .into_response()
}

/// The name of a VM's points in the vault: host and VM, so two hosts' VMs of the same
/// name never share a history. Vault names allow `a-z 0-9 - _ .` only.
pub fn point_name(host: &str, vm: &str) -> String {
    let clean = |s: &str| -> String {
        s.to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let n = format!("{}.{}", clean(host), clean(vm));
    if n.len() <= 64 {
        return n;
    }
    // Too long for a vault name: a prefix and a digest of the whole, so two long names
    // that share a prefix never share a history.
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{host}/{vm}").as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}-{hex}", &n[..64 - 13])
}

#[utoipa::path(get, path = "/api/v1/protections", tag = "protection",
    responses((status = 200, description = "Every protected VM", body = [ProtectionView]),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn list_protections(State(s): State<Arc<ServerState>>) -> Response {
    let (all, hosts) = match (s.db.protections().await, s.db.hosts_with_access().await) {
        (Ok(a), Ok(h)) => (a, h),
        (Err(e), _) | (_, Err(e)) => return db_error(e),
    };
    Json(all.iter().map(|p| view(p, &hosts)).collect::<Vec<_>>()).into_response()
}

pub(crate) async fn load(
    s: &ServerState,
    id: &str,
) -> Result<(Protection, Vec<HostAccess>), Response> {
    let hosts = s.db.hosts_with_access().await.map_err(db_error)?;
    match s.db.protection(id).await.map_err(db_error)? {
        Some(p) => Ok((p, hosts)),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no protection {id}; see `lifeboat vms list`"),
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/protections/{id}", tag = "protection",
    params(("id" = String, Path, description = "The protection's id")),
    responses((status = 200, description = "The protected VM", body = ProtectionView),
               (status = 404, description = "No such protection", body = ApiError)))]
pub async fn get_protection(State(s): State<Arc<ServerState>>, Path(id): Path<String>) -> Response {
    match load(&s, &id).await {
        Ok((p, hosts)) => Json(view(&p, &hosts)).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/api/v1/protections/{id}/points", tag = "protection",
    params(("id" = String, Path, description = "The protection's id")),
    responses((status = 200, description = "Its recovery points, oldest first", body = [PointRow]),
               (status = 404, description = "No such protection", body = ApiError)))]
pub async fn list_points(State(s): State<Arc<ServerState>>, Path(id): Path<String>) -> Response {
    if let Err(r) = load(&s, &id).await {
        return r;
    }
    match s.db.points(&id).await {
        Ok(points) => Json(points).into_response(),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(delete, path = "/api/v1/protections/{id}", tag = "protection",
    params(("id" = String, Path, description = "The protection's id"), UnprotectQuery),
    responses((status = 200, description = "Replication stopped and tracking removed", body = Unprotected),
               (status = 404, description = "No such protection", body = ApiError),
               (status = 409, description = "Another operation runs on the VM", body = ApiError),
               (status = 502, description = "The agent did not answer; nothing was changed", body = ApiError)))]
pub async fn unprotect(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<String>,
    Query(q): Query<UnprotectQuery>,
) -> Response {
    let (p, hosts) = match load(&s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // Disabling ends an enable that is still waiting for its first point.
    if let Ok(Some(op)) = s.db.running_operation(&p.host_id, &p.vm).await {
        if op.kind == OperationKind::Enable {
            let _ =
                s.db.advance_operation(
                    &op.id,
                    OperationStatus::Cancelled,
                    "replication disabled before the first point",
                )
                .await;
        }
    }
    let op = match s
        .db
        .start_operation(
            &p.host_id,
            &p.vm,
            OperationKind::Disable,
            "stopping replication",
        )
        .await
    {
        Ok(id) => OpGuard::new(&s.db, &id),
        Err(e) => return db_error(e),
    };
    let Some(host) = hosts.iter().find(|h| h.host.id == p.host_id) else {
        op.end(OperationStatus::Failed, "the VM's host is not enrolled")
            .await;
        return error(StatusCode::CONFLICT, "the VM's host is no longer enrolled");
    };
    // First the row says Disabling, so the reconciler starts no sync while the agent
    // stops tracking (a sync started now would add the bitmaps back).
    // The state machine decides: a VM that runs on its recovery host, or that a move
    // holds, is not unprotected under it.
    let facts = Facts::reason("unprotect");
    let in_flight = match s.db.apply_event(&p.id, Event::Disable, &facts).await {
        Ok(_) => match s.db.protection(&p.id).await {
            Ok(row) => row.and_then(|r| r.current_sync),
            Err(e) => return db_error(e),
        },
        Err(TransitionError::Db(DbError::Conflict(_))) => {
            op.end(OperationStatus::Succeeded, "already disabled").await;
            return error(
                StatusCode::NOT_FOUND,
                format!("{} is not protected any more", p.vm),
            );
        }
        Err(TransitionError::Refused(r)) => {
            let why = format!("{} cannot be unprotected now: {r}", p.vm);
            op.end(OperationStatus::Failed, &why).await;
            return error(StatusCode::CONFLICT, why);
        }
        Err(TransitionError::Db(e)) => return db_error(e),
    };
    let req = UnprotectRequest {
        point_name: p.point_name.clone(),
        delete_points: false,
    };
    let client = match AgentClient::new(
        &host.host.address,
        &host.host.fingerprint,
        UNPROTECT_TIMEOUT,
    ) {
        Ok(c) => c.with_credential(&host.credential),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut report: Result<UnprotectReport, _> = client.unprotect(&p.vm, &req).await;
    // A sync asked for just before Disabling may have reached the agent after it
    // cancelled: if it runs, cancel it again.
    if let (Ok(_), Some(sync)) = (&report, &in_flight) {
        if let Ok(st) = client.sync_status(sync).await {
            if matches!(st.state, lifeboat_agent::sync::SyncState::Running { .. }) {
                report = client.unprotect(&p.vm, &req).await;
            }
        }
    }
    let mut report = match report {
        Ok(r) => r,
        Err(e) => {
            // Replication goes on; tracking may already be gone, and then the next sync
            // is a resync.
            let undone = Event::DisableUndone {
                has_point: p.last_point.is_some(),
            };
            let _ = s.db.apply_event(&p.id, undone, &Facts::default()).await;
            let msg = format!("{e}; replication goes on — try again");
            op.end(OperationStatus::Failed, &msg).await;
            return error(StatusCode::BAD_GATEWAY, msg);
        }
    };
    if q.delete_points {
        // The server deletes points, with its own storage credentials: agents only add.
        match crate::retention::delete_all(&p.vault_url, &p.point_name).await {
            Ok(n) => report.points_deleted = n,
            Err(e) => {
                let note = format!(
                    "the points were kept: {e} (the server deletes points with storage \
                     credentials of its own that may delete; see docs/security.md)"
                );
                report.note = Some(match report.note.take() {
                    Some(n) => format!("{n}; {note}"),
                    None => note,
                });
            }
        }
    }
    loop {
        match s.db.protection(&p.id).await {
            Ok(Some(now)) => match s.db.delete_protection(&now.id, now.generation).await {
                Ok(true) => break,
                Ok(false) => continue,
                Err(e) => return db_error(e),
            },
            Ok(None) => break,
            Err(e) => return db_error(e),
        }
    }
    let operation = op.id.clone();
    op.end(OperationStatus::Succeeded, "replication disabled")
        .await;
    tracing::info!(vm = %p.vm, deleted_points = report.points_deleted, "protection disabled");
    Json(Unprotected {
        vm: p.vm.clone(),
        operation,
        tracking_removed: report.tracking_removed,
        points_deleted: report.points_deleted,
        note: report.note,
    })
    .into_response()
}

/// How long `unprotect` waits for the agent (it may wait on a frozen guest).
const UNPROTECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::point_name;

    #[test]
    fn point_names_are_valid_and_long_ones_never_collide() {
        assert_eq!(point_name("Alpha", "web_1"), "alpha.web_1");
        let host = "hypervisor-01.rack-7.datacenter-east.example.com";
        let a = point_name(host, "database-primary");
        let b = point_name(host, "database-prod");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= 64, "{n}");
            lifeboat_vault::format::Name::new(n).unwrap();
        }
    }
}
