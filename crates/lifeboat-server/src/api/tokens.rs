//! API tokens: list them, make one (shown once; only its SHA-256 is kept), revoke one.
//!
//! Everyone may make tokens for themselves, with a role no higher than their own (a
//! token made with a token: no higher than that token's), and list and revoke their own;
//! admins see and revoke everyone's. A token acts as at most its owner's current role,
//! and goes when its owner does.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{db_error, error, ApiError, ServerState};
use crate::auth::{token_digest, Caller, Role};
use crate::db::TokenRow;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    /// What the token is for (`backup-script`, `grafana`…).
    pub name: String,
    /// What it may do: `viewer` (the default), `operator` or `admin`; never more than
    /// its maker.
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The token itself: shown this once, never again.
    pub token: String,
}

/// Whose tokens `caller` may see and revoke: everyone's for an admin, else their own.
fn scope(caller: &Caller) -> Option<&str> {
    (caller.role < Role::Admin).then_some(caller.user.as_str())
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, description = "API tokens (names, owners, roles and dates; never the tokens): the caller's own, or everyone's for an admin", body = [TokenRow]),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn list_tokens(
    State(s): State<Arc<ServerState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    match s.db.tokens(scope(&caller)).await {
        Ok(t) => Json(t).into_response(),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, description = "The new token, shown once", body = CreatedToken),
               (status = 400, description = "No name, or a name too long", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError),
               (status = 403, description = "A role above the caller's", body = ApiError)))]
pub async fn create_token(
    State(s): State<Arc<ServerState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<NewToken>,
) -> Response {
    let name = req.name.trim();
    // Shown in lists and in every audit row the token makes: no control characters (a
    // newline or an escape sequence could forge lines in a terminal).
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return error(
            StatusCode::BAD_REQUEST,
            "give the token a name of 1 to 64 characters, without control characters, saying what it is for",
        );
    }
    let role = req.role.unwrap_or(Role::Viewer);
    if role > caller.role {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "a token's role cannot exceed its maker's: {} is {}, so the token can be at most {}",
                caller.describe(),
                caller.role.with_article(),
                caller.role
            ),
        );
    }
    let token = crate::auth::random_secret();
    match s
        .db
        .add_token(name, &token_digest(&token), &caller.user, role)
        .await
    {
        Ok(id) => {
            // The owner removed while the token was being made: the removal wins (it
            // deleted the owner's tokens before or deletes this one now).
            match s.db.user(&caller.user).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = s.db.delete_token(&id).await;
                    return error(
                        StatusCode::CONFLICT,
                        format!("{} was removed meanwhile; no token was made", caller.user),
                    );
                }
                Err(e) => return db_error(e),
            }
            tracing::info!(name, owner = %caller.user, %role, "API token created");
            (
                StatusCode::CREATED,
                // The token is in the answer: no cache keeps it.
                [(axum::http::header::CACHE_CONTROL, "no-store")],
                Json(CreatedToken {
                    id,
                    name: name.to_string(),
                    role,
                    token,
                }),
            )
                .into_response()
        }
        Err(e) => db_error(e),
    }
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's id (not the token)")),
    responses((status = 204, description = "Revoked: calls with it are refused from now on"),
               (status = 404, description = "No such token (among the caller's own, unless an admin)", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn revoke_token(
    State(s): State<Arc<ServerState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let not_found = || error(StatusCode::NOT_FOUND, format!("no API token with id {id}"));
    match s.db.token(&id).await {
        Ok(Some(t)) if scope(&caller).is_none_or(|own| own == t.owner) => {}
        Ok(_) => return not_found(),
        Err(e) => return db_error(e),
    }
    match s.db.delete_token(&id).await {
        Ok(true) => {
            tracing::info!(token = %id, "API token revoked");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => not_found(),
        Err(e) => db_error(e),
    }
}
