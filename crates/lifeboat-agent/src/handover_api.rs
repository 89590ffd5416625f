//! The routes of a VM's source side when it moves away (see `api` for the table).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lifeboat_hypervisor::Hypervisor;

use crate::api::{error, AgentState};
use crate::handover::{FenceReport, FenceRequest, ShutdownRequest};
use crate::ids::JobId;
use crate::replicate::{vm_name, SyncError};
use crate::sync::SyncRequest;

fn failure(e: SyncError) -> Response {
    let status = match &e {
        SyncError::Invalid(_) => StatusCode::CONFLICT,
        SyncError::Vault(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

pub async fn shutdown(
    State(s): State<Arc<AgentState>>,
    Path(vm): Path<String>,
    Json(req): Json<ShutdownRequest>,
) -> Response {
    let vm = match vm_name(&vm) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let timeout = Duration::from_secs(req.timeout_secs.clamp(1, 3600));
    let Some(id) = req.job_id else {
        return match crate::handover::shutdown(&s.driver, &vm, timeout).await {
            Ok(r) => Json(r).into_response(),
            Err(e) => failure(e),
        };
    };
    let work = {
        let (s, vm) = (s.clone(), vm.clone());
        async move { as_result(crate::handover::shutdown(&s.driver, &vm, timeout).await) }
    };
    start_job(&s, &id, "shutdown", vm.as_str(), work)
}

/// How a failed handover call answers: its status and words.
fn job_failure(e: SyncError) -> (u16, String) {
    let status = match &e {
        SyncError::Invalid(_) => StatusCode::CONFLICT,
        SyncError::Vault(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status.as_u16(), e.to_string())
}

/// Starts `work` as job `id` (or answers the job already known by that id): 202 and its
/// status, which the server polls at `GET /api/v1/jobs/{id}`.
fn start_job<F>(s: &AgentState, id: &str, kind: &str, vm: &str, work: F) -> Response
where
    F: std::future::Future<Output = Result<serde_json::Value, (u16, String)>> + Send + 'static,
{
    let id = match JobId::new(id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match s.jobs.start(&id, kind, vm, work) {
        Ok(st) => (StatusCode::ACCEPTED, Json(st)).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

fn as_result<T: serde::Serialize>(
    r: Result<T, SyncError>,
) -> Result<serde_json::Value, (u16, String)> {
    let r = r.map_err(job_failure)?;
    serde_json::to_value(r).map_err(|e| (500, e.to_string()))
}

/// The final sync of the stopped VM, as job `req.sync_id`.
pub async fn final_sync(
    State(s): State<Arc<AgentState>>,
    Path(vm): Path<String>,
    Json(req): Json<SyncRequest>,
) -> Response {
    let vm = match vm_name(&vm) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let id = req.sync_id.clone();
    let work = {
        let (s, vm) = (s.clone(), vm.clone());
        async move {
            // A sync of the same VM must not run beside the final one.
            if s.syncs.cancel_vm(vm.as_str()) {
                tracing::warn!(%vm, "a sync was still running at the final sync; cancelled");
            }
            let vault = s.vaults.open(&req.vault).await.map_err(job_failure)?;
            as_result(crate::handover::final_sync(&s.driver, &vault, &vm, &req, &s.records).await)
        }
    };
    start_job(&s, &id, "final-sync", vm.as_str(), work)
}

/// A job's status: running, or its answer (`GET /api/v1/jobs/{id}`); 404 when this agent
/// does not know it (it was running when the agent stopped: start it again).
pub async fn job_status(State(s): State<Arc<AgentState>>, Path(id): Path<String>) -> Response {
    let id = match JobId::new(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match s.jobs.status(&id) {
        Some(st) => Json(st).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no job {id} on this host (the agent restarted while it ran?)"),
        ),
    }
}

pub async fn fence(
    State(s): State<Arc<AgentState>>,
    Path(vm): Path<String>,
    Json(req): Json<FenceRequest>,
) -> Response {
    let vm = match vm_name(&vm) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match s.driver.fence(&vm, &req.reason).await {
        Ok(killed) => {
            tracing::warn!(%vm, killed, reason = %req.reason, "VM fenced");
            Json(FenceReport { killed }).into_response()
        }
        Err(lifeboat_hypervisor::HypervisorError::UnknownVm(_)) => {
            error(StatusCode::NOT_FOUND, format!("no VM {vm} on this host"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A point written over the stopped VM's disks where they differ, as job `req.job_id`.
pub async fn apply_point(
    State(s): State<Arc<AgentState>>,
    Path(vm): Path<String>,
    Json(req): Json<crate::handover::ApplyPointRequest>,
) -> Response {
    let vm = match vm_name(&vm) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let id = req.job_id.clone();
    let work = {
        let (s, vm) = (s.clone(), vm.clone());
        async move {
            let vault = s.vaults.open(&req.vault).await.map_err(job_failure)?;
            as_result(crate::handover::apply_point(&s.driver, &vault, &vm, &req, &s.records).await)
        }
    };
    start_job(&s, &id, "apply-point", vm.as_str(), work)
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StartRequest {
    /// Lift the fence first (the VM failed back home).
    #[serde(default)]
    pub unfence: bool,
    /// Each re-addressed NIC's addressing for this start (a failback restoring the home
    /// address): written into a cloud-init seed with `instance_id`, attached before the
    /// VM starts. Empty: the VM's definition is left as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_network: Vec<lifeboat_types::NicAddressing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

pub async fn start(
    State(s): State<Arc<AgentState>>,
    Path(vm): Path<String>,
    Json(req): Json<StartRequest>,
) -> Response {
    let vm = match vm_name(&vm) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if req.unfence {
        if let Err(e) = s.driver.unfence(&vm).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }

    match s.driver.state(&vm).await {
        Ok(lifeboat_hypervisor::VmState::Running) => {
            return Json(serde_json::json!({"started": false})).into_response()
        }
        // QEMU held (started paused) by a final sync that never ended — this agent was
        // killed: the guest never ran in it; it goes, and the VM starts for real.
        Ok(state) if state.held() => {
            if let Err(e) = s.driver.shutdown(&vm, Duration::from_secs(1)).await {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
        }
        Err(e) => return error(StatusCode::NOT_FOUND, e.to_string()),
        _ => {}
    }
    if !req.guest_network.is_empty() {
        let instance = req.instance_id.as_deref().unwrap_or("lifeboat-start");
        let seed = match s.recoveries.write_seed(&vm, instance, &req.guest_network) {
            Ok(p) => p,
            Err(e @ crate::provision::RecoveryError::Invalid(_)) => {
                return error(StatusCode::BAD_REQUEST, e.to_string())
            }
            // Not the request's fault (a full disk): the caller may try again.
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        if let Err(e) = s.driver.set_seed(&vm, Some(seed)).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    match s.driver.start(&vm).await {
        Ok(()) => Json(serde_json::json!({"started": true})).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}
