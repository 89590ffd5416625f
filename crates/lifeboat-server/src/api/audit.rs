//! `GET /api/v1/audit`: the audit log, newest first, a page at a time (operators and
//! admins: `access`). The rows are written by `crate::audit`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{db_error, ApiError, ServerState};
use crate::db::AuditRow;

/// Rows per page when the call names no limit, and the most it may name.
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Rows to return (default 100, at most 1000).
    pub limit: Option<i64>,
    /// Only rows older than this one (a row's `id`; `next_before` of the last page).
    pub before: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditRow>,
    /// Pass as `before` for the next, older page; absent when this page reaches the
    /// oldest row.
    pub next_before: Option<String>,
}

/// A page of the log: the newest `limit` rows (clamped), or those before `before`.
pub async fn page(
    db: &crate::db::Database,
    limit: Option<i64>,
    before: Option<&str>,
) -> Result<AuditPage, crate::db::DbError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let entries = db.audit_log(limit, before).await?;
    let next_before = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(AuditPage {
        entries,
        next_before,
    })
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "Logins, logouts and state-changing calls, newest first: who, what, when, from where, and the status answered", body = AuditPage),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn list_audit(
    State(s): State<Arc<ServerState>>,
    Query(q): Query<AuditQuery>,
) -> Response {
    match page(&s.db, q.limit, q.before.as_deref()).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => db_error(e),
    }
}
