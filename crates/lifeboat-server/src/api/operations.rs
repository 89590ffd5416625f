//! Operations (every one runs on the engine, `crate::ops`): listing, following (a GET,
//! or an event stream) and cancelling them; and the protection policies.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
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
pub async fn get_operation(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<lifeboat_types::OperationId>,
) -> Response {
    match s.db.operation(&id).await {
        Ok(Some(op)) => Json(op).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no operation {id}")),
        Err(e) => db_error(e),
    }
}

/// How often a followed operation's generation is read: cheap (one integer), and quick
/// enough that a step shows within a blink of the engine writing it.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[utoipa::path(get, path = "/api/v1/operations/{id}/events", tag = "operations",
    params(("id" = String, Path, description = "The operation's id")),
    responses((status = 200, description = "Server-Sent Events until the operation ends: \
        `operation` (the operation as `GET /api/v1/operations/{id}` shows it) first and at \
        every change, and `log` (one new log line, oldest first) before each `operation` \
        that added lines. The stream ends after the `operation` event that shows it ended; \
        a client that goes away cancels nothing.", content_type = "text/event-stream", body = String),
               (status = 404, description = "No such operation", body = ApiError)))]
pub async fn operation_events(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<lifeboat_types::OperationId>,
) -> Response {
    match s.db.operation(&id).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no operation {id}")),
        Err(e) => return db_error(e),
    }
    Sse::new(follow(s, id))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What a follower has sent so far.
struct Follower {
    s: Arc<ServerState>,
    id: lifeboat_types::OperationId,
    /// The generation last sent; `None` before the first event.
    sent: Option<i64>,
    /// Log lines sent.
    lines: usize,
    queue: VecDeque<Event>,
    ended: bool,
    /// Database reads that failed in a row.
    failures: u32,
}

/// Failed reads in a row after which the stream ends (about 10 s): the client then asks
/// for the operation, and says what it gets.
const FOLLOW_MAX_FAILURES: u32 = 50;

/// The operation's events, read from the database (so a restarted server's engine, or
/// another's, is followed alike).
fn follow(
    s: Arc<ServerState>,
    id: lifeboat_types::OperationId,
) -> impl futures::Stream<Item = Result<Event, std::convert::Infallible>> {
    let start = Follower {
        s,
        id,
        sent: None,
        lines: 0,
        queue: VecDeque::new(),
        ended: false,
        failures: 0,
    };
    futures::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(ev) = f.queue.pop_front() {
                return Some((Ok(ev), f));
            }
            if f.ended || f.failures >= FOLLOW_MAX_FAILURES {
                return None;
            }
            if f.sent.is_some() || f.failures > 0 {
                tokio::time::sleep(FOLLOW_POLL).await;
            }
            // The generation is read before the row: a change in between shows next time.
            let read = match f.s.db.operation_generation(&f.id).await {
                Ok(None) => return None, // deleted under us: nothing more to say
                Ok(Some(generation)) if f.sent == Some(generation) => {
                    f.failures = 0;
                    continue;
                }
                Ok(Some(generation)) => f.s.db.operation(&f.id).await.map(|op| (generation, op)),
                Err(e) => Err(e),
            };
            let (generation, op) = match read {
                Ok((generation, Some(op))) => (generation, op),
                Ok((_, None)) => return None,
                Err(e) => {
                    f.failures += 1;
                    tracing::warn!(operation = %f.id, error = %e, "following an operation: reading it failed");
                    continue;
                }
            };
            f.failures = 0;
            for line in op.log.lines().skip(f.lines) {
                f.queue.push_back(Event::default().event("log").data(line));
            }
            f.lines = op.log.lines().count();
            let json = serde_json::to_string(&op).unwrap_or_else(|_| "{}".into());
            f.queue
                .push_back(Event::default().event("operation").data(json));
            f.sent = Some(generation);
            f.ended = op.status.is_done();
        }
    })
}

#[utoipa::path(post, path = "/api/v1/operations/{id}/cancel", tag = "operations",
    params(("id" = String, Path, description = "The operation's id")),
    responses((status = 202, description = "Asked: it undoes what it did after the step that runs now; follow it at `/api/v1/operations/{id}`", body = Operation),
               (status = 404, description = "No such operation", body = ApiError),
               (status = 409, description = "It passed its point of no return, or it ended", body = ApiError)))]
pub async fn cancel_operation(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<lifeboat_types::OperationId>,
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
