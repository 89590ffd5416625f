//! API tokens: only their SHA-256 is kept, with the user who made them and a role that is
//! never above that user's.

use serde::Serialize;
use sqlx::AssertSqlSafe;
use sqlx::Row;

use super::users::role_of;
use super::{Database, DbError};
use crate::role::Role;

/// An API token as the API lists it: never the token, nor its digest.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    /// The user who made it: the token stops working when they are removed.
    pub owner: String,
    pub role: Role,
    pub created_at: String,
}

/// Who calls with a token: the token, and the role it acts with now — its own, or its
/// owner's when the owner was demoted below it since.
#[derive(Clone, Debug)]
pub struct TokenCaller {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub role: Role,
}

fn token_row(r: &sqlx::any::AnyRow) -> Result<TokenRow, sqlx::Error> {
    Ok(TokenRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        owner: r.try_get("owner")?,
        role: role_of(&r.try_get::<String, _>("role")?)?,
        created_at: r.try_get("created_at")?,
    })
}

impl Database {
    pub async fn token_count(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Adds a token (by its digest) and returns its id. The caller has checked that
    /// `role` is not above the owner's.
    pub async fn add_token(
        &self,
        name: &str,
        token_sha256: &str,
        owner: &str,
        role: Role,
    ) -> Result<String, DbError> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_sha256, created_at, owner, role) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(token_sha256)
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(owner)
        .bind(role.as_str())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// The token whose digest this is, if it exists and its owner does.
    pub async fn token_caller(&self, token_sha256: &str) -> Result<Option<TokenCaller>, DbError> {
        let row = sqlx::query(
            "SELECT t.id, t.name, t.owner, t.role, u.role AS owner_role FROM api_tokens t \
             JOIN users u ON u.name = t.owner WHERE t.token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let own = role_of(&r.try_get::<String, _>("role")?)?;
        let owner = role_of(&r.try_get::<String, _>("owner_role")?)?;
        Ok(Some(TokenCaller {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            owner: r.try_get("owner")?,
            role: own.min(owner),
        }))
    }

    /// Every token, or `owner`'s only.
    pub async fn tokens(&self, owner: Option<&str>) -> Result<Vec<TokenRow>, DbError> {
        const COLS: &str = "SELECT id, name, owner, role, created_at FROM api_tokens";
        let rows = match owner {
            Some(o) => {
                let sql = format!("{COLS} WHERE owner = $1 ORDER BY created_at");
                sqlx::query(AssertSqlSafe(sql))
                    .bind(o)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("{COLS} ORDER BY created_at");
                sqlx::query(AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(token_row).collect::<Result<_, _>>()?)
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>, DbError> {
        let row =
            sqlx::query("SELECT id, name, owner, role, created_at FROM api_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.as_ref().map(token_row).transpose()?)
    }

    /// Revokes a token; false when there was none with that id.
    pub async fn delete_token(&self, id: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
