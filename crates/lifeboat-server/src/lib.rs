//! `lifeboat server`, the control plane (DESIGN.md, "Processes and data flow"). It owns all
//! decisions and all state; agents are told what to do and report what is.
//!
//! - `db`: the state, in SQLite by default or PostgreSQL, with one set of migrations.
//! - `api`: the REST API under `/api/v1`, behind API tokens or a dashboard session, and
//!   `/metrics`.
//! - `auth`: users and their roles, passwords, login sessions (throttled), CSRF tokens,
//!   and API tokens.
//! - `audit`: the audit log's one writer, a layer around every route; it also finds who
//!   calls, for the gates (`api::access`, the pages') to decide what they may do.
//! - `web`: the dashboard (pages, login, live updates), which acts through the API.
//! - `discovery`: finding agents in an address range.
//! - `failover`: planned and unplanned failover (the source's side, fencing).
//! - `policy`: protection policies (sync interval, RPO threshold, retention).
//! - `replication`: the reconciler that keeps every protected VM syncing on schedule and
//!   moves it between Protected and Degraded.
//! - `vault_keys`: vault keys sealed to each agent; the server keeps no passphrase.
//! - `recovery_watch`: follows VMs brought up on recovery hosts (state, hydration) and
//!   keeps their point served across agent restarts.

pub mod api;
pub mod audit;
pub mod auth;
pub mod db;
pub mod discovery;
pub mod failover;
pub mod ops;
pub mod policy;
pub mod recovery_watch;
pub mod replication;
pub mod retention;
pub mod vault_keys;
pub mod web;

/// Everything the server serves: the REST API, `/metrics`, and the dashboard, every
/// route behind the audit layer (which also finds the caller the gates need).
pub fn app(state: std::sync::Arc<api::ServerState>) -> axum::Router {
    api::router(state.clone())
        .merge(web::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(state, audit::layer))
}
