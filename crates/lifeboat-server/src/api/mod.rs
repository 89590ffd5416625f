//! The REST API, under `/api/v1`, every route but the API's own description behind an API
//! token (`Authorization: Bearer …`) or a dashboard session (cookie, plus the session's
//! CSRF token on every state-changing call), and the role the route needs (`access`:
//! viewers read, operators also run operations, admins also enroll hosts and manage
//! users and tokens). Every state-changing call is audited (`crate::audit`).
//!
//! | route | does |
//! |---|---|
//! | `GET /api/v1/hosts` | enrolled hosts |
//! | `POST /api/v1/hosts` | enroll the agent at `address` with its one-time `code` |
//! | `POST /api/v1/scan` | find agents in a range, from the server's network |
//! | `GET/POST /api/v1/tokens`, `DELETE /api/v1/tokens/{id}` | API tokens: list, create (shown once), revoke |
//! | `GET/POST /api/v1/users`, `PUT /api/v1/users/{name}/role`, `PUT …/password`, `DELETE /api/v1/users/{name}` | users and their roles |
//! | `GET /api/v1/audit` | the audit log, newest first, a page at a time |
//! | `GET /api/v1/vms` | every VM of every host, a page at a time (hosts that do not answer are listed with the reason) |
//! | `GET/POST /api/v1/protections` | protected VMs, a page at a time; enable replication of a VM |
//! | `GET/DELETE /api/v1/protections/{id}` | one protected VM; disable its replication |
//! | `GET /api/v1/protections/{id}/points` | its recovery points |
//! | `GET /api/v1/operations[/{id}]` | operations (enable, failover…) with their progress and logs |
//! | `POST /api/v1/operations/{id}/cancel` | undo an operation before its point of no return |
//! | `GET /api/v1/policies` | protection policies |
//! | `GET /api/v1/status` | overview: counts by state, worst RPO, running operations, the protections a page at a time |
//! | `GET /metrics` | Prometheus metrics (per-VM RPO, bytes replicated, sync duration, state) |
//! | `GET /api/v1/openapi.json` | this API as OpenAPI 3.1 (no token needed; `docs/openapi.json`) |
//!
//! Long lists come in pages (`?offset=&limit=`, `next_offset`): see [`page`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lifeboat_agent::client::AgentClient;
use serde::{Deserialize, Serialize};

use crate::agents::AGENT_TIMEOUT;
use crate::db::{Host, Operation, PointRow, ProtectionState};
use crate::policy::Policy;

pub mod access;
pub mod audit;
pub mod failover;
pub mod fleet;
pub mod network;
pub mod operations;
pub mod page;
pub mod protection;
pub mod status;
pub mod tokens;
pub mod users;

use crate::ops::unprotect::Unprotected;
// In `http`, below the audit layer and the dashboard, which use them too.
pub(crate) use crate::http::{app_error, db_error, error};
pub use crate::http::{ApiError, ServerState};
pub use fleet::{fleet, vm_list, Fleet, FleetVm, HostProblem, VmList, VmRow};
use page::Page;
use protection::{ProtectRequest, Protected, ProtectionList, ProtectionView, SyncProgress};
use status::{Overview, WorstRpo};

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollHost {
    /// `host:port` of the agent.
    pub address: String,
    /// The code the agent printed at first start.
    #[schema(value_type = String)]
    pub code: lifeboat_agent::secret::Secret,
    /// The agent's certificate fingerprint as the operator checked it (from `hosts scan`
    /// or the agent's banner). Without it the first certificate seen is trusted.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/api/v1/hosts", get(list_hosts).post(enroll_host))
        .route("/api/v1/scan", axum::routing::post(scan))
        .route(
            "/api/v1/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(tokens::revoke_token),
        )
        .route(
            "/api/v1/users",
            get(users::list_users).post(users::add_user),
        )
        .route(
            "/api/v1/users/{name}",
            axum::routing::delete(users::remove_user),
        )
        .route(
            "/api/v1/users/{name}/role",
            axum::routing::put(users::set_role),
        )
        .route(
            "/api/v1/users/{name}/password",
            axum::routing::put(users::set_password),
        )
        .route("/api/v1/audit", get(audit::list_audit))
        .route("/api/v1/vms", get(list_vms))
        .route(
            "/api/v1/protections",
            get(protection::list_protections).post(protection::protect),
        )
        .route(
            "/api/v1/protections/{id}",
            get(protection::get_protection).delete(protection::unprotect),
        )
        .route(
            "/api/v1/protections/{id}/points",
            get(protection::list_points),
        )
        .route(
            "/api/v1/protections/{id}/network",
            axum::routing::put(network::set_network),
        )
        .route(
            "/api/v1/protections/{id}/failover",
            axum::routing::post(failover::failover),
        )
        .route(
            "/api/v1/protections/{id}/failover/cleanup",
            axum::routing::post(failover::cleanup),
        )
        .route(
            "/api/v1/protections/{id}/failover/commit",
            axum::routing::post(failover::commit),
        )
        .route(
            "/api/v1/protections/{id}/failback",
            axum::routing::post(failover::failback),
        )
        .route(
            "/api/v1/protections/{id}/reprotect",
            axum::routing::post(failover::reprotect),
        )
        .route("/api/v1/recoveries", get(failover::list_recoveries))
        .route("/api/v1/operations", get(operations::list_operations))
        .route("/api/v1/operations/{id}", get(operations::get_operation))
        .route(
            "/api/v1/operations/{id}/events",
            get(operations::operation_events),
        )
        .route(
            "/api/v1/operations/{id}/cancel",
            axum::routing::post(operations::cancel_operation),
        )
        .route("/api/v1/policies", get(operations::list_policies))
        .route("/api/v1/status", get(status::overview))
        .route("/metrics", get(status::metrics))
        .route_layer(axum::middleware::from_fn(access::authenticate))
        // The API's description is public, like the agent's hello.
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

/// The API as an OpenAPI 3.1 document, generated from the handlers and types below.
/// `docs/openapi.json` is this document; a test fails when the two drift apart.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Lifeboat server API", description = "The control plane's REST API. Every route needs `Authorization: Bearer <API token>`, or a dashboard session cookie with the session's `X-CSRF-Token` header on state-changing calls. Each route needs a role, said in its description: viewers read, operators also run operations on VMs, admins also enroll hosts and manage users and everyone's tokens; a call above the caller's role is refused with 403 naming the role needed. Every login, logout and state-changing call is in the audit log (`GET /api/v1/audit`)."),
    paths(list_hosts, enroll_host, list_vms, protection::protect, protection::list_protections,
        protection::get_protection, protection::unprotect, protection::list_points,
        network::set_network,
        operations::list_operations, operations::get_operation, operations::operation_events, operations::cancel_operation, operations::list_policies,
        status::overview, failover::failover, failover::cleanup, failover::list_recoveries,
        failover::failback, failover::reprotect, failover::commit, scan, tokens::list_tokens,
        tokens::create_token, tokens::revoke_token, users::list_users, users::add_user,
        users::set_role, users::set_password, users::remove_user, audit::list_audit),
    components(schemas(Host, HostRow, crate::host_health::HostHealth, EnrollHost, VmRow, HostProblem, VmList, ApiError, ProtectRequest,
        Protected, ProtectionView, network::NetworkSettingsSet, lifeboat_types::NetworkSettings,
        lifeboat_types::NicSettings, lifeboat_types::Addressing, lifeboat_types::StaticAddress,
        ProtectionList, SyncProgress, Unprotected, PointRow, Operation, Policy,
        ProtectionState, Overview, WorstRpo, failover::FailoverRequest, failover::RecoveryView,
        failover::CleanedUp, crate::db::Recovery, failover::FailbackRequest, failover::StepDone, ScanRequest,
        crate::discovery::ScanReport, crate::discovery::Found, crate::db::TokenRow,
        tokens::NewToken, tokens::CreatedToken, crate::auth::Role, crate::db::UserRow,
        users::NewUser, users::SetRole, users::SetPassword, crate::db::AuditRow, audit::AuditPage)),
    modifiers(&BearerToken, &RolesNeeded)
)]
pub struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "api_token",
            Vec::<String>::new(),
        )]);
    }
}

/// Each operation says the role it needs (from `access`, the table the server enforces)
/// and documents the 403 a lower role gets.
struct RolesNeeded;

impl utoipa::Modify for RolesNeeded {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::ResponseBuilder;
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, op) in [
                (axum::http::Method::GET, &mut item.get),
                (axum::http::Method::POST, &mut item.post),
                (axum::http::Method::PUT, &mut item.put),
                (axum::http::Method::DELETE, &mut item.delete),
            ] {
                let Some(op) = op else { continue };
                let role = access::required_role(&method, path);
                let note = format!("Needs the `{role}` role.");
                op.description = Some(match op.description.take() {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                    _ => note,
                });
                if role > crate::auth::Role::Viewer && !op.responses.responses.contains_key("403") {
                    op.responses.responses.insert(
                        "403".into(),
                        ResponseBuilder::new()
                            .description(format!(
                                "The caller's role is below `{role}` (the message names it)"
                            ))
                            .into(),
                    );
                }
            }
        }
    }
}

/// The OpenAPI document, pretty-printed JSON.
pub fn openapi_json() -> String {
    use utoipa::OpenApi;
    let mut doc = ApiDoc::openapi();
    // The crate version would make the committed document change with every release.
    doc.info.version = "v1".into();
    doc.to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n"
}

/// An enrolled host and what its agent said at its last greeting.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostRow {
    #[serde(flatten)]
    pub host: Host,
    /// None until the server's first greeting after it started (within 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::host_health::HostHealth>,
}

#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts",
    responses((status = 200, description = "Enrolled hosts, each with its agent's last greeting", body = [HostRow]),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
async fn list_hosts(State(s): State<Arc<ServerState>>) -> Response {
    match s.db.hosts().await {
        Ok(hosts) => Json(
            hosts
                .into_iter()
                .map(|host| HostRow {
                    health: s.health.get(host.id.as_str()),
                    host,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(post, path = "/api/v1/hosts", tag = "hosts", request_body = EnrollHost,
    responses((status = 201, description = "Enrolled; the agent's certificate is pinned", body = Host),
               (status = 401, description = "Missing or wrong API token", body = ApiError),
               (status = 403, description = "The agent refused the code", body = ApiError),
               (status = 409, description = "A host at that address is enrolled already, or its agent runs another release line than the server's", body = ApiError),
               (status = 502, description = "No agent answered at that address", body = ApiError)))]
async fn enroll_host(State(s): State<Arc<ServerState>>, Json(req): Json<EnrollHost>) -> Response {
    match s.db.host_by_address(&req.address).await {
        Ok(Some(h)) => {
            return error(
                StatusCode::CONFLICT,
                format!("{} is enrolled already, as {}", h.address, h.hostname),
            )
        }
        Ok(None) => {}
        Err(e) => return db_error(e),
    }
    // The fingerprint to pin: the operator's, or the one the agent presents now.
    let fingerprint = match req.fingerprint.clone() {
        Some(fp) => fp.to_lowercase(),
        None => match first_seen_fingerprint(&req.address).await {
            Ok(fp) => fp,
            Err(e) => return error(StatusCode::BAD_GATEWAY, e),
        },
    };
    let client = match AgentClient::new(&req.address, &fingerprint, AGENT_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let hello = match client.hello().await {
        Ok(h) => h,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    // Another release line speaks another API: refused before the code is spent.
    if let Some(skew) = lifeboat_types::version::skew(env!("CARGO_PKG_VERSION"), &hello.version) {
        return error(StatusCode::CONFLICT, format!("not enrolled: {skew}"));
    }
    let credential = match client.enroll(&req.code, &s.fingerprint).await {
        Ok(c) => c,
        Err(lifeboat_agent::client::ClientError::Refused { status: 403, .. }) => {
            return error(
                StatusCode::FORBIDDEN,
                "the agent refused the code: check it (codes work once)",
            )
        }
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let host = Host {
        id: crate::db::HostId::random(),
        address: req.address.clone(),
        hostname: hello.hostname,
        fingerprint,
        enrolled_at: chrono::Utc::now().to_rfc3339(),
    };
    if let Err(e) = s.db.add_host(&host, credential.expose()).await {
        return db_error(e);
    }
    tracing::info!(host = %host.hostname, address = %host.address, "enrolled");
    (StatusCode::CREATED, Json(host)).into_response()
}

/// Trust on first use: the fingerprint of the certificate the agent presents now.
async fn first_seen_fingerprint(address: &str) -> Result<String, String> {
    let client = lifeboat_agent::client::client_builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .timeout(AGENT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(format!("https://{address}/api/v1/hello"))
        .send()
        .await
        .map_err(|e| format!("no agent answers at {address}: {e}"))?;
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(lifeboat_agent::identity::fingerprint)
        .ok_or_else(|| format!("{address} presented no certificate"))
}

#[utoipa::path(get, path = "/api/v1/vms", tag = "vms", params(Page),
    responses((status = 200, description = "One page of the VMs of every host (follow `next_offset`); every host that did not answer, with the reason. Each page asks every agent for its inventory", body = VmList),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
async fn list_vms(
    State(s): State<Arc<ServerState>>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    let listed = match fleet(&s).await {
        Ok(fleet) => fleet.page(&s.db, &page).await,
        Err(e) => Err(e),
    };
    match listed {
        Ok(list) => Json(list).into_response(),
        Err(e) => db_error(e),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ScanRequest {
    /// An IPv4 address or range (`192.168.1.0/24`, at most a /16).
    pub cidr: String,
    /// Agent ports to try on each address (default 7443).
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[utoipa::path(post, path = "/api/v1/scan", tag = "hosts", request_body = ScanRequest,
    responses((status = 200, description = "Agents that answered, from the server's network; enrolled ones with their VMs", body = crate::discovery::ScanReport),
               (status = 400, description = "Not a range, too wide, or no port", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
async fn scan(State(s): State<Arc<ServerState>>, Json(req): Json<ScanRequest>) -> Response {
    use crate::discovery;
    let ports = if req.ports.is_empty() {
        vec![discovery::DEFAULT_PORT]
    } else {
        req.ports
    };
    let mut report = match discovery::scan(
        &req.cidr,
        &ports,
        128,
        std::time::Duration::from_secs(2),
        std::sync::Arc::new(|| {}),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Enrolled agents show their VMs to this server only: ask them.
    let enrolled = report.agents.iter().any(|a| a.enrolled);
    if enrolled {
        let hosts = match s.db.hosts().await {
            Ok(h) => h,
            Err(e) => return db_error(e),
        };
        let list = vm_list(&s).await.ok();
        for a in &mut report.agents {
            let address = a.address.to_string();
            if hosts.iter().any(|h| h.address == address) {
                a.vms = list.as_ref().map(|l| {
                    l.vms
                        .iter()
                        .filter(|v| v.address == address)
                        .map(|v| v.vm.clone())
                        .collect()
                });
            }
        }
    }
    Json(report).into_response()
}
