//! What the API, the dashboard and the audit layer share, below all three: the server's
//! state, the JSON error answer, how domain errors become HTTP statuses, and the hub that
//! draws the dashboard's live fragments once for every open page.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tokio::sync::watch;

use crate::db::{Database, DbError};
use crate::error::AppError;

pub struct ServerState {
    pub db: Database,
    /// The server's certificate fingerprint, given to agents at enrollment.
    pub fingerprint: String,
    /// Served over TLS: dashboard cookies are marked `Secure`.
    pub tls: bool,
    /// The dashboard's live updates, drawn once for every open page.
    pub live: Hub,
    /// Login throttling and the bounded queue of password checks.
    pub throttle: crate::auth::Throttle,
    /// What each host's agent said at its last greeting (`host_health`).
    pub health: std::sync::Arc<crate::host_health::HealthBoard>,
    /// A client kept per host for the pages and calls that ask every host (Hosts & VMs,
    /// `GET /api/v1/vms`), so they reuse their connections.
    pub agents: crate::agents::AgentClients,
}

/// An error: what went wrong and what to do.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    pub error: String,
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

pub(crate) fn db_error(e: DbError) -> Response {
    match e {
        DbError::Conflict(m) | DbError::Refused(m) => error(StatusCode::CONFLICT, m),
        e => {
            tracing::error!(error = %e, "database");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// A domain error as the API answers it; the message is the error's own.
pub(crate) fn app_error(e: AppError) -> Response {
    let status = match e {
        AppError::Db(e) => return db_error(e),
        AppError::NotFound(_) => StatusCode::NOT_FOUND,
        AppError::Conflict(_) => StatusCode::CONFLICT,
        AppError::Agent(_) => StatusCode::BAD_GATEWAY,
        AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// How often the live fragments are redrawn.
const EVERY: Duration = Duration::from_secs(1);

/// Every live fragment's HTML, by the id of the element it fills.
pub type Fragments = HashMap<String, String>;

/// Draws every live fragment (the dashboard's, `web::live`): given here, so that the
/// state the API holds does not depend on the pages.
pub type Draw = fn(Database) -> Pin<Box<dyn Future<Output = Result<Fragments, DbError>> + Send>>;

/// One renderer for every open page: the fragments are drawn once a second while anyone
/// watches, however many pages are open (at 1,000 VMs a drawing costs tens of
/// milliseconds); each page's stream only compares and sends.
pub struct Hub {
    tx: watch::Sender<Arc<Fragments>>,
    rendering: Arc<AtomicBool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: watch::channel(Arc::new(Fragments::new())).0,
            rendering: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Hub {
    /// The fragments as `draw` draws them; starts the renderer if no page was watching.
    pub fn subscribe(&self, db: &Database, draw: Draw) -> watch::Receiver<Arc<Fragments>> {
        let rx = self.tx.subscribe();
        if !self.rendering.swap(true, Ordering::SeqCst) {
            tokio::spawn(render(
                self.tx.clone(),
                self.rendering.clone(),
                db.clone(),
                draw,
            ));
        }
        rx
    }
}

/// Draws the fragments every second until no page watches.
async fn render(
    tx: watch::Sender<Arc<Fragments>>,
    rendering: Arc<AtomicBool>,
    db: Database,
    draw: Draw,
) {
    loop {
        match draw(db.clone()).await {
            Ok(f) => {
                tx.send_replace(Arc::new(f));
            }
            Err(e) => tracing::warn!(error = %e, "dashboard live update"),
        }
        tokio::time::sleep(EVERY).await;
        if tx.receiver_count() == 0 {
            rendering.store(false, Ordering::SeqCst);
            // A page that subscribed just now saw `rendering` still set and started no
            // renderer: go on for it, unless another renderer took over.
            if tx.receiver_count() == 0 || rendering.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }
}
