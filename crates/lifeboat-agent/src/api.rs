//! The agent's routes, under `/api/v1`.
//!
//! | route | who may call |
//! |---|---|
//! | `GET /api/v1/hello` | anyone: the discovery hello (hostname, version, fingerprint, enrolled) |
//! | `POST /api/v1/enroll` | anyone holding the one-time code, once |
//! | `GET /api/v1/inventory` | the enrolling server, with the agent's credential |
//! | `POST /api/v1/vms/{vm}/syncs` | the server: start a sync of the VM into a vault (idempotent by sync id) |
//! | `GET /api/v1/syncs/{id}` | the server: a sync's progress or result |
//! | `POST /api/v1/vms/{vm}/unprotect` | the server: stop a VM's sync, drop its tracking, maybe its points |
//! | `POST /api/v1/vault/check` | the server: can this agent open that vault? |
//! | `POST /api/v1/recoveries` | the server: bring a VM up from a point here (idempotent by recovery id; asking again resumes serving it) |
//! | `GET /api/v1/recoveries[/{id}]` | the server: recovered VMs, their state and hydration |
//! | `POST /api/v1/vms/{vm}/shutdown` | the server: ACPI shutdown, forced after a timeout (a planned failover) |
//! | `POST /api/v1/vms/{vm}/final-sync` | the server: the stopped VM's last point, proven equal to its disks (a job, 202) |
//! | `POST /api/v1/vms/{vm}/apply-point` | the server: make the stopped VM's disks equal to a point, writing only what differs (failback; a job, 202) |
//! | `GET /api/v1/jobs/{id}` | the server: a job's status, or its answer once it ended |
//! | `POST /api/v1/vms/{vm}/start` | the server: start a VM (lifting its fence when failing back) |
//! | `POST /api/v1/vms/{vm}/fence` | the server: the VM was failed over; kill it if it runs, never start it here |
//! | `DELETE /api/v1/recoveries/{id}` | the server: remove a recovered VM and everything created for it |
//!
//! Errors are JSON `{"error": "..."}` with a message that says what to do.
//!
//! Every id and name a request carries is checked before it becomes part of a path: sync
//! and recovery ids are `ids::SyncId` / `ids::RecoveryId` (1 to 64 of `A-Z a-z 0-9 . _ -`,
//! no leading dot), VM names `VmName`, point names and ids the vault's own types. Anything
//! else is a 400 that says what the id may be.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use lifeboat_hypervisor::{Driver, Hypervisor, VmInfo};
use serde::{Deserialize, Serialize};

use crate::enrollment::{Enrollment, EnrollmentError};
use crate::ids::SyncId;
use crate::replicate::{sync_vm, vm_name, Records, SyncError, SyncOptions, VaultCache};
use crate::sync::{StartError, SyncRequest, SyncState, Syncs, VaultAccess};

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
    pub code: crate::secret::Secret,
    /// The server's certificate fingerprint, which the agent pins.
    pub server_fingerprint: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The agent's credential: present it as `Authorization: Bearer …`. Shown once.
    pub credential: crate::secret::Secret,
}

#[derive(Debug, Serialize)]
pub struct Inventory {
    pub hostname: String,
    pub vms: Vec<VmInfo>,
}

/// The largest body a caller that has not proven who it is may send.
pub const UNAUTHENTICATED_BODY: usize = 16 << 10;

/// The `service` value of every Lifeboat agent's hello.
pub const SERVICE: &str = "lifeboat-agent";

pub struct AgentState {
    pub hostname: String,
    pub fingerprint: String,
    pub enrollment: Enrollment,
    pub driver: Driver,
    pub syncs: Syncs,
    pub vaults: VaultCache,
    /// The point each VM's last sync wrote.
    pub records: Records,
    /// Bytes per second a sync may read at most (the operator's bandwidth cap).
    pub max_rate: Option<u64>,
    /// VMs brought up here from recovery points.
    pub recoveries: Arc<crate::provision::Recoveries>,
    /// The long calls (final sync, apply point) running or finished, by id.
    pub jobs: Arc<crate::jobs::Jobs>,
}

/// Stops protecting a VM on this host. An agent never deletes points (it may hold an
/// append-only credential): the server deletes them when asked to.
#[derive(Debug, Serialize, Deserialize)]
pub struct UnprotectRequest {
    pub point_name: String,
    /// Sent by servers older than this agent, which left deleting points to it: refused,
    /// so such a server does not report points deleted that were kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_points: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UnprotectReport {
    pub sync_cancelled: bool,
    pub tracking_removed: bool,
    pub points_deleted: u64,
    pub note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VaultCheck {
    pub url: String,
    pub chunk_size: u32,
    /// When asked with a passphrase: the vault's key sealed to this agent (base64), for
    /// the server to keep instead of the passphrase.
    #[serde(default)]
    pub sealed_key: Option<String>,
    /// The one VM (point name) whose points the sealed key opens; none when it is the
    /// vault's master key (a format-1 vault, one key for every VM).
    #[serde(default)]
    pub key_scope: Option<String>,
}

pub fn router(state: Arc<AgentState>) -> Router {
    let enrolled_only = Router::new()
        .route("/api/v1/inventory", get(inventory))
        .route("/api/v1/networks", get(networks))
        .route("/api/v1/vms/{vm}/syncs", post(start_sync))
        .route("/api/v1/syncs/{id}", get(sync_status))
        .route("/api/v1/vms/{vm}/unprotect", post(unprotect))
        .route("/api/v1/vault/check", post(check_vault))
        .route(
            "/api/v1/vms/{vm}/shutdown",
            post(crate::handover_api::shutdown),
        )
        .route(
            "/api/v1/vms/{vm}/final-sync",
            post(crate::handover_api::final_sync),
        )
        .route("/api/v1/vms/{vm}/fence", post(crate::handover_api::fence))
        .route(
            "/api/v1/vms/{vm}/apply-point",
            post(crate::handover_api::apply_point),
        )
        .route("/api/v1/vms/{vm}/start", post(crate::handover_api::start))
        .route("/api/v1/jobs/{id}", get(crate::handover_api::job_status))
        .route(
            "/api/v1/recoveries",
            post(crate::recovery_api::ensure).get(crate::recovery_api::list),
        )
        .route(
            "/api/v1/recoveries/{id}",
            get(crate::recovery_api::status).merge(delete(crate::recovery_api::remove)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_credential,
        ));
    Router::new()
        .route("/api/v1/hello", get(hello))
        // Anyone may call it: an enrollment request is a few hundred bytes.
        .route(
            "/api/v1/enroll",
            post(enroll).layer(axum::extract::DefaultBodyLimit::max(UNAUTHENTICATED_BODY)),
        )
        .merge(enrolled_only)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route; see /api/v1/hello") })
        .with_state(state)
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
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
    match s
        .enrollment
        .enroll(req.code.expose(), &req.server_fingerprint)
    {
        Ok(credential) => {
            tracing::info!(server = %req.server_fingerprint, "enrolled");
            Json(EnrollResponse {
                credential: credential.into(),
            })
            .into_response()
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

/// The networks this host offers recovered VMs, with their subnets (`networks`).
async fn networks(State(s): State<Arc<AgentState>>) -> Response {
    match crate::networks::host_networks(&s.driver).await {
        Ok(nets) => Json(nets).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing networks: {e}"),
        ),
    }
}

async fn start_sync(
    State(s): State<Arc<AgentState>>,
    Path(vm): Path<String>,
    Json(req): Json<SyncRequest>,
) -> Response {
    let sync_id = match SyncId::new(&req.sync_id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let vm = match vm_name(&vm) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let name = match lifeboat_vault::format::Name::new(&req.point_name) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("point_name: {e}")),
    };
    if let Err(e) = s.driver.spec(&vm).await {
        return error(StatusCode::NOT_FOUND, e.to_string());
    }
    let state = s.clone();
    let vm_text = vm.as_str().to_string();
    let id = sync_id.clone();
    let started = s.syncs.start(&id, &vm_text, move |progress| {
        tokio::spawn(async move {
            let outcome = async {
                let vault = state.vaults.open(&req.vault).await?;
                sync_vm(
                    &state.driver,
                    &vault,
                    &vm,
                    &name,
                    &SyncOptions {
                        app_consistent: req.app_consistent,
                        max_rate: state.max_rate,
                    },
                    &state.records,
                    &progress,
                ).await
            }
            .await;
            let end = match outcome {
                Ok(r) => {
                    tracing::info!(vm = %vm, point = %r.point, kind = ?r.kind, bytes = r.bytes_read, "sync committed");
                    SyncState::Committed(r)
                }
                Err(e) => {
                    tracing::warn!(vm = %vm, error = %e, "sync failed");
                    SyncState::Failed { error: e.to_string() }
                }
            };
            state.syncs.finish(&sync_id, end);
        })
        .abort_handle()
    });
    match started {
        Ok(status) => (StatusCode::ACCEPTED, Json(status)).into_response(),
        Err(e @ StartError::Busy { .. }) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn sync_status(State(s): State<Arc<AgentState>>, Path(id): Path<String>) -> Response {
    let id = match SyncId::new(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match s.syncs.status(&id) {
        Some(status) => Json(status).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!(
                "no sync {id} here (the agent may have restarted while it ran); start a new one"
            ),
        ),
    }
}

async fn unprotect(
    State(s): State<Arc<AgentState>>,
    Path(vm): Path<String>,
    Json(req): Json<UnprotectRequest>,
) -> Response {
    if req.delete_points {
        return error(
            StatusCode::BAD_REQUEST,
            "this agent never deletes points (it may hold an append-only credential); \
             the server deletes them: upgrade the server to this version",
        );
    }
    let vm = match vm_name(&vm) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let sync_cancelled = s.syncs.cancel_vm(vm.as_str());
    // A cancelled sync cannot stop while the guest is frozen, but an earlier process
    // may have: make sure the guest writes again.
    if let Err(e) = s
        .driver
        .thaw_guest(&vm, std::time::Duration::from_secs(10))
        .await
    {
        return error(StatusCode::CONFLICT, e.to_string());
    }
    if let Err(e) = s.records.forget(&vm) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("forgetting {vm}'s last point: {e}"),
        );
    }
    let mut report = UnprotectReport {
        sync_cancelled,
        tracking_removed: false,
        points_deleted: 0,
        note: None,
    };
    match s.driver.reset_tracking(&vm).await {
        Ok(()) => report.tracking_removed = true,
        // A stopped VM keeps its bitmaps in its qcow2 until it runs again; they only cost
        // a little space, and the next protection resyncs whatever they say.
        Err(e) => report.note = Some(format!("tracking left in place: {e}")),
    }
    Json(report).into_response()
}

async fn check_vault(
    State(s): State<Arc<AgentState>>,
    Json(access): Json<VaultAccess>,
) -> Response {
    let url = access.url.clone();
    let cannot = |e: SyncError| {
        error(
            StatusCode::BAD_REQUEST,
            format!("this agent cannot open vault {url}: {e}"),
        )
    };
    // A passphrase: seal the vault's key to this agent, and prove the sealed key opens it.
    let (access, sealed_key) = match (&access.passphrase, &access.sealed_key) {
        (Some(p), None) => match s
            .vaults
            .seal_key(&access.url, p, access.scope.as_deref())
            .await
        {
            Ok(sealed) => (VaultAccess::sealed(&access.url, &sealed), Some(sealed)),
            Err(e) => return cannot(e),
        },
        _ => (access, None),
    };
    match s.vaults.open(&access).await {
        Ok(v) => Json(VaultCheck {
            url: access.url.clone(),
            chunk_size: v.chunk_size(),
            sealed_key,
            key_scope: v.scope().map(|n| n.to_string()),
        })
        .into_response(),
        Err(e) => cannot(e),
    }
}
