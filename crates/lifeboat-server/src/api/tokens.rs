//! API tokens: list them, make one (shown once; only its SHA-256 is kept), revoke one.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{db_error, error, token_digest, ApiError, ServerState};
use crate::db::TokenRow;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    /// What the token is for (`backup-script`, `grafana`…).
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub id: String,
    pub name: String,
    /// The token itself: shown this once, never again.
    pub token: String,
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, description = "API tokens (names and dates; never the tokens)", body = [TokenRow]),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn list_tokens(State(s): State<Arc<ServerState>>) -> Response {
    match s.db.tokens().await {
        Ok(t) => Json(t).into_response(),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, description = "The new token, shown once", body = CreatedToken),
               (status = 400, description = "No name, or a name too long", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn create_token(
    State(s): State<Arc<ServerState>>,
    Json(req): Json<NewToken>,
) -> Response {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return error(
            StatusCode::BAD_REQUEST,
            "give the token a name of 1 to 64 characters, saying what it is for",
        );
    }
    let token = crate::auth::random_secret();
    match s.db.add_token(name, &token_digest(&token)).await {
        Ok(id) => {
            tracing::info!(name, "API token created");
            (
                StatusCode::CREATED,
                // The token is in the answer: no cache keeps it.
                [(axum::http::header::CACHE_CONTROL, "no-store")],
                Json(CreatedToken {
                    id,
                    name: name.to_string(),
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
               (status = 404, description = "No such token", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn revoke_token(State(s): State<Arc<ServerState>>, Path(id): Path<String>) -> Response {
    match s.db.delete_token(&id).await {
        Ok(true) => {
            tracing::info!(token = %id, "API token revoked");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no API token with id {id}")),
        Err(e) => db_error(e),
    }
}
