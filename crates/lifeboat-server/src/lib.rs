//! `lifeboat server`, the control plane (DESIGN.md, "Processes and data flow"). It owns all
//! decisions and all state; agents are told what to do and report what is.
//!
//! - `db`: the state, in SQLite by default or PostgreSQL, with one set of migrations.
//! - `api`: the REST API under `/api/v1`, behind API tokens or a dashboard session, and
//!   `/metrics`.
//! - `auth`: the dashboard's password, login sessions and CSRF tokens, which the API
//!   accepts beside API tokens.
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
pub mod auth;
pub mod db;
pub mod discovery;
pub mod failover;
pub mod policy;
pub mod recovery_watch;
pub mod replication;
pub mod vault_keys;
pub mod web;

/// Everything the server serves: the REST API, `/metrics`, and the dashboard.
pub fn app(state: std::sync::Arc<api::ServerState>) -> axum::Router {
    api::router(state.clone()).merge(web::router(state))
}
