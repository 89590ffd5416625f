//! The agent's routes, under `/api/v1`.
//!
//! | route | who may call |
//! |---|---|
//! | `GET /api/v1/hello` | anyone: the discovery hello (hostname, version, fingerprint, enrolled) |
//! | `POST /api/v1/enroll` | anyone holding the one-time code, once |
//! | `GET /api/v1/inventory` | the enrolling server, with the agent's credential |
//!
//! Errors are JSON `{"error": "..."}` with a message that says what to do.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lifeboat_hypervisor::{Hypervisor, QemuDriver, VmInfo};
use serde::{Deserialize, Serialize};

use crate::enrollment::{Enrollment, EnrollmentError};

/// What an agent says to anyone who asks: enough for a scan to list it and for the
/// operator to check the fingerprint before enrolling.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub service: String,
    pub hostname: String,
    pub version: String,
    /// SHA-256 of the agent's TLS certificate (empty when serving plain HTTP).
    pub fingerprint: String,
    pub enrolled: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub code: String,
    /// The server's certificate fingerprint, which the agent pins.
    pub server_fingerprint: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The agent's credential: present it as `Authorization: Bearer …`. Shown once.
    pub credential: String,
}

#[derive(Debug, Serialize)]
pub struct Inventory {
    pub hostname: String,
    pub vms: Vec<VmInfo>,
}

/// The `service` value of every Lifeboat agent's hello.
pub const SERVICE: &str = "lifeboat-agent";

pub struct AgentState {
    pub hostname: String,
    pub fingerprint: String,
    pub enrollment: Enrollment,
    pub driver: QemuDriver,
}

pub fn router(state: Arc<AgentState>) -> Router {
    let enrolled_only = Router::new()
        .route("/api/v1/inventory", get(inventory))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_credential,
        ));
    Router::new()
        .route("/api/v1/hello", get(hello))
        .route("/api/v1/enroll", post(enroll))
        .merge(enrolled_only)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route; see /api/v1/hello") })
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn hello(State(s): State<Arc<AgentState>>) -> Json<Hello> {
    Json(Hello {
        service: SERVICE.into(),
        hostname: s.hostname.clone(),
        version: crate::VERSION.into(),
        fingerprint: s.fingerprint.clone(),
        enrolled: s.enrollment.enrolled().is_some(),
    })
}

async fn enroll(State(s): State<Arc<AgentState>>, Json(req): Json<EnrollRequest>) -> Response {
    if req.server_fingerprint.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "server_fingerprint is empty");
    }
    match s.enrollment.enroll(&req.code, &req.server_fingerprint) {
        Ok(credential) => {
            tracing::info!(server = %req.server_fingerprint, "enrolled");
            Json(EnrollResponse { credential }).into_response()
        }
        Err(EnrollmentError::WrongCode) => {
            tracing::warn!("an enrollment with a wrong code was refused");
            error(StatusCode::FORBIDDEN, "wrong enrollment code")
        }
        Err(e @ EnrollmentError::AlreadyEnrolled { .. }) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn require_credential(
    State(s): State<Arc<AgentState>>,
    req: Request,
    next: Next,
) -> Response {
    if s.enrollment.enrolled().is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "this agent is not enrolled: enroll it from the server with the code it printed at first start",
        );
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if s.enrollment.check(t) => next.run(req).await,
        Some(_) => error(StatusCode::UNAUTHORIZED, "wrong agent credential"),
        None => error(
            StatusCode::UNAUTHORIZED,
            "missing credential: send the agent's credential as `Authorization: Bearer …`",
        ),
    }
}

async fn inventory(State(s): State<Arc<AgentState>>) -> Response {
    match s.driver.list().await {
        Ok(vms) => Json(Inventory {
            hostname: s.hostname.clone(),
            vms,
        })
        .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing VMs: {e}"),
        ),
    }
}
