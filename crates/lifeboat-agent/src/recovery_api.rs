//! The recovery routes of the agent's API (see `api` for the table).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{error, AgentState};
use crate::ids::RecoveryId;
use crate::provision::RecoveryError;
use crate::recovery::RecoveryRequest;

fn failure(e: RecoveryError) -> Response {
    error(status_of(&e), e.to_string())
}

/// The HTTP status a recovery's error answers with.
fn status_of(e: &RecoveryError) -> StatusCode {
    match e {
        RecoveryError::Invalid(_) => StatusCode::BAD_REQUEST,
        RecoveryError::Conflict(_) => StatusCode::CONFLICT,
        RecoveryError::NotFound(_) => StatusCode::NOT_FOUND,
        RecoveryError::Vault(_) => StatusCode::BAD_GATEWAY,
        RecoveryError::Hypervisor(_) | RecoveryError::Io { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// Brings a VM up from a point, or resumes serving one already brought up: in the
/// request, or as job `req.job_id` (202, polled at `GET /api/v1/jobs/{id}`).
pub async fn ensure(
    State(s): State<Arc<AgentState>>,
    Json(req): Json<RecoveryRequest>,
) -> Response {
    if let Some(job) = req.job_id.clone() {
        let id = match crate::ids::JobId::new(&job) {
            Ok(id) => id,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let vm = req.vm.clone();
        let work = {
            let s = s.clone();
            async move {
                let status = s
                    .recoveries
                    .ensure(&s.driver, &s.vaults, &s.records, &req)
                    .await
                    .map_err(|e| (status_of(&e).as_u16(), e.to_string()))?;
                serde_json::to_value(status).map_err(|e| (500, e.to_string()))
            }
        };
        return match s.jobs.start(&id, "provision", &vm, work) {
            Ok(st) => (StatusCode::ACCEPTED, Json(st)).into_response(),
            Err(e) => error(StatusCode::CONFLICT, e.to_string()),
        };
    }
    match s
        .recoveries
        .ensure(&s.driver, &s.vaults, &s.records, &req)
        .await
    {
        Ok(status) => Json(status).into_response(),
        Err(e) => failure(e),
    }
}

pub async fn list(State(s): State<Arc<AgentState>>) -> Response {
    let mut out = Vec::new();
    for r in s.recoveries.journal().all() {
        match s.recoveries.status(&s.driver, &r.recovery_id).await {
            Ok(st) => out.push(st),
            Err(RecoveryError::NotFound(_)) => {} // removed meanwhile
            Err(e) => return failure(e),
        }
    }
    Json(out).into_response()
}

pub async fn status(State(s): State<Arc<AgentState>>, Path(id): Path<String>) -> Response {
    // Checked before it names the journal file.
    let id = match RecoveryId::new(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match s.recoveries.status(&s.driver, &id).await {
        Ok(st) => Json(st).into_response(),
        Err(e) => failure(e),
    }
}

pub async fn remove(State(s): State<Arc<AgentState>>, Path(id): Path<String>) -> Response {
    // Checked before it names the journal file.
    let id = match RecoveryId::new(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match s.recoveries.remove(&s.driver, &id).await {
        Ok(report) => {
            // A removed VM's replication record goes with it.
            if let Some(vm) = report
                .vm
                .as_deref()
                .and_then(|v| lifeboat_hypervisor::VmName::new(v).ok())
            {
                let _ = s.records.forget(&vm);
                // So is the job that brought it up.
                s.jobs.forget_finished("provision", vm.as_str());
            }
            Json(report).into_response()
        }
        Err(e) => failure(e),
    }
}
