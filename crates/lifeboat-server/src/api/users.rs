//! Users of the dashboard and the API, with their roles: list, add, set a role, reset a
//! password, remove (admins only: `access`). The last admin can be neither demoted nor
//! removed (`db::users` keeps that true under concurrent changes).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{db_error, error, ApiError, ServerState};
use crate::auth::{hash_password, PasswordError, Role};
use crate::db::UserRow;

/// No `Debug`: it holds a password.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewUser {
    /// 1 to 64 letters, digits, `.`, `_`, `-` or `@`.
    pub name: String,
    pub role: Role,
    /// At least 10 characters; only its argon2id hash is kept.
    pub password: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SetRole {
    pub role: Role,
}

/// No `Debug`: it holds a password.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct SetPassword {
    /// At least 10 characters. The user's sessions end.
    pub password: String,
}

/// Names appear in logs, pages and the audit log: plain characters only.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// The argon2id hash of `password`, made off the async workers.
async fn hash(s: &ServerState, password: String) -> Result<String, Response> {
    match s.throttle.hash(move || hash_password(&password)).await {
        Ok(h) => Ok(h),
        Err(e @ PasswordError::TooShort) => Err(error(StatusCode::BAD_REQUEST, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, description = "Users and their roles (never a password or its hash)", body = [UserRow]),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn list_users(State(s): State<Arc<ServerState>>) -> Response {
    match s.db.users().await {
        Ok(u) => Json(u).into_response(),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, description = "Added; the user can log in", body = UserRow),
               (status = 400, description = "A name that is not plain, or a password too short", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError),
               (status = 409, description = "A user of that name exists", body = ApiError)))]
pub async fn add_user(State(s): State<Arc<ServerState>>, Json(req): Json<NewUser>) -> Response {
    if !valid_name(&req.name) {
        return error(
            StatusCode::BAD_REQUEST,
            "a user name has 1 to 64 letters, digits, '.', '_', '-' or '@'",
        );
    }
    let hash = match hash(&s, req.password).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    if let Err(e) = s.db.add_user(&req.name, req.role, &hash).await {
        return db_error(e);
    }
    tracing::info!(user = %req.name, role = %req.role, "user added");
    match s.db.user(&req.name).await {
        Ok(Some(u)) => (StatusCode::CREATED, Json(u)).into_response(),
        Ok(None) => error(StatusCode::CONFLICT, "the user was removed meanwhile"),
        Err(e) => db_error(e),
    }
}

fn no_such_user(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no user named {name}; see `lifeboat users list`"),
    )
}

#[utoipa::path(put, path = "/api/v1/users/{name}/role", tag = "users", request_body = SetRole,
    params(("name" = String, Path, description = "The user")),
    responses((status = 200, description = "The new role holds now, in open sessions too; the user's tokens above it come down to it", body = UserRow),
               (status = 404, description = "No such user", body = ApiError),
               (status = 409, description = "The last admin cannot be demoted", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn set_role(
    State(s): State<Arc<ServerState>>,
    Path(name): Path<String>,
    Json(req): Json<SetRole>,
) -> Response {
    match s.db.set_role(&name, req.role).await {
        Ok(true) => {}
        Ok(false) => return no_such_user(&name),
        Err(e) => return db_error(e),
    }
    tracing::info!(user = %name, role = %req.role, "role set");
    match s.db.user(&name).await {
        Ok(Some(u)) => Json(u).into_response(),
        Ok(None) => no_such_user(&name),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(put, path = "/api/v1/users/{name}/password", tag = "users", request_body = SetPassword,
    params(("name" = String, Path, description = "The user")),
    responses((status = 204, description = "Set; the user's sessions have ended"),
               (status = 400, description = "Too short a password", body = ApiError),
               (status = 404, description = "No such user", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn set_password(
    State(s): State<Arc<ServerState>>,
    Path(name): Path<String>,
    Json(req): Json<SetPassword>,
) -> Response {
    let hash = match hash(&s, req.password).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    match s.db.set_password_hash(&name, &hash).await {
        Ok(true) => {
            tracing::info!(user = %name, "password reset");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => no_such_user(&name),
        Err(e) => db_error(e),
    }
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "The user")),
    responses((status = 204, description = "Removed, with the user's sessions and API tokens"),
               (status = 404, description = "No such user", body = ApiError),
               (status = 409, description = "The last admin cannot be removed", body = ApiError),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn remove_user(State(s): State<Arc<ServerState>>, Path(name): Path<String>) -> Response {
    match s.db.delete_user(&name).await {
        Ok(true) => {
            tracing::info!(user = %name, "user removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => no_such_user(&name),
        Err(e) => db_error(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn user_names_are_plain() {
        for ok in ["alice", "ops.team-1", "a_b@example.org"] {
            assert!(super::valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a\nb", "ä", &"x".repeat(65), "<script>"] {
            assert!(!super::valid_name(bad), "{bad:?}");
        }
    }
}
