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
use lifeboat_agent::client::AgentClient;
use lifeboat_agent::sync::VaultAccess;
use lifeboat_types::{OperationKind, OperationStatus, ProtectionId};
use serde::{Deserialize, Serialize};

use super::page::Page;
use super::{db_error, error, ApiError, ServerState};
use crate::agents::AGENT_TIMEOUT;
use crate::db::{Event, HostAccess, PointRow, Protection, ProtectionState};
use crate::ops::enable::{Enable, EnableParams};
use crate::ops::unprotect::{Unprotect, UnprotectParams};
use crate::policy::Policy;
use crate::replication::rpo_seconds;

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

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProtectionView {
    #[schema(value_type = String)]
    pub id: lifeboat_types::ProtectionId,
    pub host: String,
    #[schema(value_type = String)]
    pub host_id: lifeboat_types::HostId,
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
    /// Each NIC's address after a failover and in a test copy (NICs not named keep
    /// theirs): `PUT /api/v1/protections/{id}/network` sets it.
    #[serde(default)]
    pub network_settings: lifeboat_types::NetworkSettings,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Protected {
    /// The new protection's id, chosen when the operation started.
    pub protection_id: ProtectionId,
    /// The protection as recorded by the operation's first step; absent when that took
    /// more than 10 s (follow the operation: the server may be busy or restarting).
    pub protection: Option<ProtectionView>,
    /// The enable operation, which ends when the first recovery point is committed.
    pub operation: lifeboat_types::OperationId,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UnprotectQuery {
    /// Also delete the VM's recovery points from the vault.
    #[serde(default)]
    pub delete_points: bool,
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
        // Shown empty when they do not read; every move refuses them, saying why.
        network_settings: crate::network::settings(p).unwrap_or_else(|e| {
            tracing::warn!(protection = %p.id, error = %e, "network settings");
            Default::default()
        }),
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
    crate::agents::agent_client(h, AGENT_TIMEOUT)
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
                "not every host answered ({}), so which host has {vm} is not certain; name its host as HOST/{vm} (`host` in the API)",
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
                "several hosts have a VM {vm} ({}); say which as HOST/{vm} (`host` in the API)",
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
    // Both the VM's agent (it writes) and the recovery host's (it will read) must open
    // the vault: find out now, not at failover. Each seals the vault's key to itself; the
    // server keeps those sealed keys and forgets the passphrase (crate::vault_keys). This
    // needs the passphrase, so it runs in the request, before the operation: a check
    // that fails starts nothing.
    let access = VaultAccess::passphrase(&req.vault, &req.vault_passphrase, &point_name);
    let mut sealed = Vec::new();
    for h in [host, recovery] {
        let checked = match agent(h) {
            Ok(a) => a.check_vault(&access).await,
            Err(r) => return r,
        };
        match checked {
            Ok(c) => match c.sealed_key {
                Some(key) => sealed.push((h.host.id.clone(), key)),
                // Older than this server: it would need the passphrase kept, which the
                // server never does.
                None => {
                    let why = format!("the agent on {} did not seal the vault's key (an older version?): upgrade it, then enable protection again", h.host.hostname);
                    return error(StatusCode::CONFLICT, why);
                }
            },
            Err(e) => {
                let status = match e {
                    lifeboat_agent::client::ClientError::Refused { .. } => StatusCode::BAD_REQUEST,
                    _ => StatusCode::BAD_GATEWAY,
                };
                return error(status, e.to_string());
            }
        }
    }
    let params = EnableParams {
        protection_id: lifeboat_types::ProtectionId::random(),
        host_id: host.host.id.clone(),
        vm: req.vm.clone(),
        point_name,
        vault_url: req.vault.clone(),
        recovery_host_id: recovery.host.id.clone(),
        policy: policy.name.to_string(),
        network_map: serde_json::to_string(&req.network_map).unwrap_or_else(|_| "{}".into()),
        sealed,
    };
    let first = format!(
        "protecting {} on {} into {} (policy {}), recovery host {}",
        req.vm, host.host.hostname, req.vault, policy.name, recovery.host.hostname
    );
    let op = match crate::ops::start::<Enable>(
        &s.db,
        OperationKind::Enable,
        &host.host.id,
        &req.vm,
        Some(&params.protection_id),
        &params,
        first,
    )
    .await
    {
        Ok(op) => op,
        Err(e) => return db_error(e),
    };
    // The answer shows the protection once the operation's first step recorded it, so a
    // client that reads it next (`protect --wait`) finds it. The operation is started
    // either way: past 10 s the answer is its id alone, never an error a client would
    // take for "not started" (a server killed at that step, in qemu_saga_campaign).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let p = loop {
        match s.db.protection(&params.protection_id).await {
            Ok(Some(p)) => break Some(p),
            Ok(None) => {}
            Err(e) => return db_error(e),
        }
        match s.db.operation(&op.id).await {
            Ok(Some(now)) if now.status.is_done() => {
                return error(StatusCode::CONFLICT, now.error);
            }
            Err(e) => return db_error(e),
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    (
        StatusCode::ACCEPTED,
        Json(Protected {
            protection_id: params.protection_id.clone(),
            protection: p.map(|p| view(&p, &hosts)),
            operation: op.id.clone(),
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
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{host}/{vm}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}-{hex}", &n[..64 - 13])
}

/// A page of the protected VMs (`GET /api/v1/protections`).
// An object, not the bare list it was before pages: a list cut to a page would show an
// older client its first rows only, and that client would take a VM past them for
// unprotected. An object it cannot misread; it fails to read it instead.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProtectionList {
    /// One page (`?offset=&limit=`), by VM, then host id.
    pub protections: Vec<ProtectionView>,
    /// Where this page starts.
    #[serde(default)]
    pub offset: usize,
    /// The next page's `offset`; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/protections", tag = "protection", params(Page),
    responses((status = 200, description = "One page of the protected VMs (follow `next_offset`)", body = ProtectionList),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn list_protections(
    State(s): State<Arc<ServerState>>,
    Query(page): Query<Page>,
) -> Response {
    let (mut all, hosts) = match (s.db.protections().await, s.db.hosts_with_access().await) {
        (Ok(a), Ok(h)) => (a, h),
        (Err(e), _) | (_, Err(e)) => return db_error(e),
    };
    // Only this page's rows get a view (the views read the clock and parse JSON).
    let next_offset = page.cut(&mut all);
    Json(ProtectionList {
        protections: all.iter().map(|p| view(p, &hosts)).collect(),
        offset: page.offset,
        next_offset,
    })
    .into_response()
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
pub async fn get_protection(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<ProtectionId>,
) -> Response {
    match load(&s, &id).await {
        Ok((p, hosts)) => Json(view(&p, &hosts)).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/api/v1/protections/{id}/points", tag = "protection",
    params(("id" = String, Path, description = "The protection's id")),
    responses((status = 200, description = "Its recovery points, oldest first", body = [PointRow]),
               (status = 404, description = "No such protection", body = ApiError)))]
pub async fn list_points(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<ProtectionId>,
) -> Response {
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
    responses((status = 202, description = "Runs as an operation: replication stops, tracking is removed, the points deleted if asked; its `result` says what was done (`Unprotected`)", body = crate::db::Operation),
               (status = 404, description = "No such protection", body = ApiError),
               (status = 409, description = "Another operation runs on the VM", body = ApiError),
               (status = 502, description = "The agent did not answer; nothing was changed", body = ApiError)))]
pub async fn unprotect(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<ProtectionId>,
    Query(q): Query<UnprotectQuery>,
) -> Response {
    let (p, hosts) = match load(&s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !hosts.iter().any(|h| h.host.id == p.host_id) {
        return error(StatusCode::CONFLICT, "the VM's host is no longer enrolled");
    }
    // The state machine decides, before anything starts: a VM that runs on its recovery
    // host, or that a move holds, is not unprotected under it.
    if p.state != ProtectionState::Disabling {
        if let Err(r) = p.state.on(Event::Disable) {
            return error(
                StatusCode::CONFLICT,
                format!("{} cannot be unprotected now: {r}", p.vm),
            );
        }
    }
    // Disabling ends an enable that is still waiting for its first point.
    if let Ok(Some(op)) = s.db.running_operation(&p.host_id, &p.vm).await {
        if op.kind == OperationKind::Enable {
            let _ =
                s.db.advance_operation(
                    &op.id,
                    OperationStatus::Cancelled,
                    "ended by unprotect before the first point (if unprotect fails, replication goes on)",
                )
                .await;
        }
    }
    let params = UnprotectParams {
        protection_id: p.id.clone(),
        delete_points: q.delete_points,
    };
    let first = format!(
        "stopping replication of {}{}",
        p.vm,
        if q.delete_points {
            ", deleting its points"
        } else {
            ""
        }
    );
    super::operations::start_op::<Unprotect>(&s, OperationKind::Disable, &p, &params, first).await
}

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
