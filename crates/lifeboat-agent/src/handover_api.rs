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
    match crate::handover::shutdown(&s.driver, &vm, timeout).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => failure(e),
    }
}

pub async fn final_sync(
    State(s): State<Arc<AgentState>>,
    Path(vm): Path<String>,
    Json(req): Json<SyncRequest>,
) -> Response {
    let vm = match vm_name(&vm) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // A sync of the same VM must not run beside the final one.
    if s.syncs.cancel_vm(vm.as_str()) {
        tracing::warn!(%vm, "a sync was still running at the final sync; cancelled");
    }
    let vault = match s.vaults.open(&req.vault).await {
        Ok(v) => v,
        Err(e) => return failure(e),
    };
    match crate::handover::final_sync(&s.driver, &vault, &vm, &req, &s.records).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => failure(e),
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

pub async fn apply_point(
    State(s): State<Arc<AgentState>>,
    Path(vm): Path<String>,
    Json(req): Json<crate::handover::ApplyPointRequest>,
) -> Response {
    let vm = match vm_name(&vm) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let vault = match s.vaults.open(&req.vault).await {
        Ok(v) => v,
        Err(e) => return failure(e),
    };
    match crate::handover::apply_point(&s.driver, &vault, &vm, &req, &s.records).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => failure(e),
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StartRequest {
    /// Lift the fence first (the VM failed back home).
    #[serde(default)]
    pub unfence: bool,
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
    match s.driver.start(&vm).await {
        Ok(()) => Json(serde_json::json!({"started": true})).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}
