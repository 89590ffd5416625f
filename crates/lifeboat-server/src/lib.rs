//! `lifeboat server`, the control plane (DESIGN.md, "Processes and data flow"). It owns all
//! decisions and all state; agents are told what to do and report what is.
//!
//! - `db`: the state, in SQLite by default or PostgreSQL, with one set of migrations.
//! - `api`: the REST API under `/api/v1`, behind API tokens.
//!
//! So far: enrolling hosts (the agent's one-time code for its credential, its certificate
//! pinned) and listing hosts and their VMs. Protection, operations and the scheduler come
//! next (issue 4).

pub mod api;
pub mod db;
