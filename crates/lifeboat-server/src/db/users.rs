//! The dashboard's users and login sessions, and API tokens as the token page lists them.

use serde::Serialize;
use sqlx::Row;

use super::{Database, DbError};

/// A login session as the server keeps it (the cookie's value is never stored).
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub user: String,
    pub csrf: String,
    pub expires_at: String,
}

/// An API token as the API lists it: never the token, nor its digest.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

impl Database {
    pub async fn password_hash(&self, user: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("password_hash")).transpose()?)
    }

    /// Sets `user`'s password hash and ends every session of theirs: a new password
    /// locks out whoever had the old one.
    pub async fn set_password_hash(&self, user: &str, hash: &str) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO users (name, password_hash, updated_at) VALUES ($1, $2, $3)")
            .bind(user)
            .bind(hash)
            .bind(chrono::Utc::now().to_rfc3339())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE user_name = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_session(
        &self,
        id_sha256: &str,
        user: &str,
        csrf: &str,
        expires_at: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO sessions (id_sha256, user_name, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_sha256)
        .bind(user)
        .bind(csrf)
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn session(&self, id_sha256: &str) -> Result<Option<SessionRow>, DbError> {
        let row =
            sqlx::query("SELECT user_name, csrf, expires_at FROM sessions WHERE id_sha256 = $1")
                .bind(id_sha256)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .map(|r| -> Result<SessionRow, sqlx::Error> {
                Ok(SessionRow {
                    user: r.try_get("user_name")?,
                    csrf: r.try_get("csrf")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .transpose()?)
    }

    pub async fn delete_session(&self, id_sha256: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM sessions WHERE id_sha256 = $1")
            .bind(id_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes sessions past their end (RFC 3339 UTC text compares in time order).
    pub async fn delete_expired_sessions(&self, now: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRow>, DbError> {
        let rows = sqlx::query("SELECT id, name, created_at FROM api_tokens ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRow {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
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
