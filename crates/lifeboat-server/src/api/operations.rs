//! Operations (every one runs on the engine, `crate::ops`): listing, following and
//! cancelling them; and the protection policies.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{db_error, error, ApiError, ServerState};
use crate::db::{CancelAsked, Operation};
use crate::policy::Policy;

#[utoipa::path(get, path = "/api/v1/operations", tag = "operations",
    responses((status = 200, description = "The newest 100 operations", body = [Operation])))]
pub async fn list_operations(State(s): State<Arc<ServerState>>) -> Response {
    match s.db.operations(100).await {
        Ok(ops) => Json(ops).into_response(),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations",
    params(("id" = String, Path, description = "The operation's id")),
    responses((status = 200, description = "The operation with its log", body = Operation),
               (status = 404, description = "No such operation", body = ApiError)))]
pub async fn get_operation(State(s): State<Arc<ServerState>>, Path(id): Path<String>) -> Response {
    match s.db.operation(&id).await {
        Ok(Some(op)) => Json(op).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no operation {id}")),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(post, path = "/api/v1/operations/{id}/cancel", tag = "operations",
    params(("id" = String, Path, description = "The operation's id")),
    responses((status = 202, description = "Asked: it undoes what it did after the step that runs now; follow it at `/api/v1/operations/{id}`", body = Operation),
               (status = 404, description = "No such operation", body = ApiError),
               (status = 409, description = "It passed its point of no return, or it ended", body = ApiError)))]
pub async fn cancel_operation(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> Response {
    let refused = |why: String| error(StatusCode::CONFLICT, why);
    match s.db.operation(&id).await {
        Ok(Some(op)) if op.steps_total == 0 && !op.status.is_done() => {
            return refused(format!(
                "operation {id} ({}) cannot be cancelled: it does not run on the operation engine",
                op.kind
            ))
        }
        Ok(_) => {}
        Err(e) => return db_error(e),
    }
    match s.db.request_cancel(&id).await {
        Ok(CancelAsked::Asked) => match s.db.operation(&id).await {
            Ok(Some(op)) => (StatusCode::ACCEPTED, Json(op)).into_response(),
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no operation {id}")),
            Err(e) => db_error(e),
        },
        Ok(CancelAsked::PastNoReturn { step }) => refused(format!(
            "operation {id} is past its point of no return (now: {step}): undoing it could lose writes or leave two copies, so it finishes; undo it afterwards with the opposite operation (failback)"
        )),
        Ok(CancelAsked::Ended(status)) => refused(format!("operation {id} has ended already ({status})")),
        Ok(CancelAsked::NotFound) => error(StatusCode::NOT_FOUND, format!("no operation {id}")),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(get, path = "/api/v1/policies", tag = "protection",
    responses((status = 200, description = "The protection policies", body = [Policy])))]
pub async fn list_policies() -> Json<&'static [Policy]> {
    Json(crate::policy::POLICIES)
}

/// Starts an operation of saga `S` on `p`'s VM: 202 and the operation.
pub(crate) async fn start_op<S: crate::ops::Saga>(
    s: &ServerState,
    kind: lifeboat_types::OperationKind,
    p: &crate::db::Protection,
    params: &S::Params,
    first: String,
) -> Response {
    match crate::ops::start::<S>(&s.db, kind, &p.host_id, &p.vm, Some(&p.id), params, first).await {
        Ok(op) => (StatusCode::ACCEPTED, Json(op)).into_response(),
        Err(e) => db_error(e),
    }
}
