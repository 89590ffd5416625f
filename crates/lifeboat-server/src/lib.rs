//! `lifeboat server`, the control plane (DESIGN.md, "Processes and data flow"). It owns all
//! decisions and all state; agents are told what to do and report what is.
//!
//! The modules are layers, lowest first: each uses only those before it in this list
//! (`tests/layers.rs` keeps it so; docs/operations.md, "Layers").
//!
//! - `role`: viewer, operator, admin.
//! - `db`: the state, in SQLite by default or PostgreSQL, with one set of migrations.
//! - `policy`: protection policies (sync interval, RPO threshold, retention).
//! - `retention`: deleting the points a policy no longer keeps, in the vault.
//! - `discovery`: finding agents in an address range.
//! - `auth`: users and their roles, passwords, login sessions (throttled), CSRF tokens,
//!   and API tokens.
//! - `agents`: clients for the enrolled agents.
//! - `host_health`: whether each host's agent answers, and with which version.
//! - `error`: the domain's one error, `AppError`; the domain (up to `recovery_watch`)
//!   knows no HTTP.
//! - `vault_keys`: vault keys sealed to each agent; the server keeps no passphrase.
//! - `failover`: the source's side of a move (fencing), and settling moves left half-way.
//! - `ops`: the operation engine (enable, unprotect, failover, commit, failback…).
//! - `replication`: the scheduler that keeps every protected VM syncing on schedule and
//!   moves it between Protected and Degraded.
//! - `recovery_watch`: follows VMs brought up on recovery hosts (state, hydration) and
//!   keeps their point served across agent restarts.
//! - `http`: what the API, the dashboard and the audit layer share: the server's state,
//!   errors as HTTP answers, the live fragments' hub.
//! - `audit`: the audit log's one writer, a layer around every route; it also finds who
//!   calls, for the gates (`api::access`, the pages') to decide what they may do.
//! - `api`: the REST API under `/api/v1`, behind API tokens or a dashboard session, and
//!   `/metrics`.
//! - `web`: the dashboard (pages, login, live updates), which acts through the API.

pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod db;
pub mod discovery;
pub mod dns_switch;
pub mod error;
pub mod failover;
pub mod host_health;
pub mod http;
pub mod network;
pub mod ops;
pub mod policy;
pub mod recovery_watch;
pub mod replication;
pub mod retention;
pub mod role;
pub mod vault_keys;
pub mod web;

/// Everything the server serves: the REST API, `/metrics`, and the dashboard, every
/// route behind the audit layer (which also finds the caller the gates need).
pub fn app(state: std::sync::Arc<http::ServerState>) -> axum::Router {
    api::router(state.clone())
        .merge(web::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(state, audit::layer))
}
