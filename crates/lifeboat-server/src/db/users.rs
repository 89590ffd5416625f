//! Dashboard users with their roles, and their login sessions.
//!
//! "At least one admin" holds under concurrent changes: a change that could remove the
//! last admin first touches every admin row in its transaction (a row lock on
//! PostgreSQL, the write lock on SQLite), so two admins demoting each other at once are
//! serialized and the second sees the first's result.

use serde::Serialize;
use sqlx::Row;

use super::{Database, DbError};
use crate::role::Role;

/// A login session as the server keeps it (the cookie's value is never stored), with its
/// user's role now.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    pub expires_at: String,
}

/// A user as the API lists it: never the password hash.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UserRow {
    pub name: String,
    pub role: Role,
    /// When the password or role last changed.
    pub updated_at: String,
}

pub(crate) fn role_of(text: &str) -> Result<Role, sqlx::Error> {
    text.parse()
        .map_err(|e: crate::role::UnknownRole| sqlx::Error::Decode(Box::new(e)))
}

fn user_row(r: &sqlx::any::AnyRow) -> Result<UserRow, sqlx::Error> {
    Ok(UserRow {
        name: r.try_get("name")?,
        role: role_of(&r.try_get::<String, _>("role")?)?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

impl Database {
    pub async fn password_hash(&self, user: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("password_hash")).transpose()?)
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, DbError> {
        let rows = sqlx::query("SELECT name, role, updated_at FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(user_row).collect::<Result<_, _>>()?)
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>, DbError> {
        let row = sqlx::query("SELECT name, role, updated_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_row).transpose()?)
    }

    /// Adds a user; `Conflict` when the name is taken.
    pub async fn add_user(&self, name: &str, role: Role, hash: &str) -> Result<(), DbError> {
        let r = sqlx::query(
            "INSERT INTO users (name, password_hash, updated_at, role) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(hash)
        .bind(now())
        .bind(role.as_str())
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(DbError::Conflict(
                format!("a user named {name} exists already"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets `user`'s password hash and ends every session of theirs: a new password
    /// locks out whoever had the old one. False when there is no such user.
    pub async fn set_password_hash(&self, user: &str, hash: &str) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        let done =
            sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE name = $3")
                .bind(hash)
                .bind(now())
                .bind(user)
                .execute(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM sessions WHERE user_name = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// The break-glass path (`LIFEBOAT_ADMIN_PASSWORD` on the server's machine): user
    /// `name` exists, as an admin, with this password; its sessions end.
    pub async fn reset_admin(&self, name: &str, hash: &str) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        for q in [
            "DELETE FROM users WHERE name = $1",
            "DELETE FROM sessions WHERE user_name = $1",
        ] {
            sqlx::query(q).bind(name).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO users (name, password_hash, updated_at, role) VALUES ($1, $2, $3, 'admin')",
        )
        .bind(name)
        .bind(hash)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn user_count(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Gives `user` the role `role`; their tokens above it come down to it. Refuses to
    /// demote the last admin (`Conflict`); false when there is no such user.
    pub async fn set_role(&self, user: &str, role: Role) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        let Some(current) = admins_locked(&mut tx, user).await? else {
            return Ok(false);
        };
        if current.0 == Role::Admin && role != Role::Admin && current.1 <= 1 {
            return Err(DbError::Conflict(format!(
                "{user} is the last admin: make another user an admin first"
            )));
        }
        sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE name = $3")
            .bind(role.as_str())
            .bind(now())
            .bind(user)
            .execute(&mut *tx)
            .await?;
        for above in Role::ALL.into_iter().filter(|r| *r > role) {
            sqlx::query("UPDATE api_tokens SET role = $1 WHERE owner = $2 AND role = $3")
                .bind(role.as_str())
                .bind(user)
                .bind(above.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Removes `user` with their sessions and API tokens. Refuses to remove the last
    /// admin (`Conflict`); false when there is no such user.
    pub async fn delete_user(&self, user: &str) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        let Some(current) = admins_locked(&mut tx, user).await? else {
            return Ok(false);
        };
        if current.0 == Role::Admin && current.1 <= 1 {
            return Err(DbError::Conflict(format!(
                "{user} is the last admin: make another user an admin first"
            )));
        }
        for q in [
            "DELETE FROM users WHERE name = $1",
            "DELETE FROM sessions WHERE user_name = $1",
            "DELETE FROM api_tokens WHERE owner = $1",
        ] {
            sqlx::query(q).bind(user).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Opens a session for `user` only if their password is still the one that was
    /// checked (`password_hash`): a reset or a removal while the check ran wins, and no
    /// session outlives it. True when opened.
    pub async fn add_session(
        &self,
        id_sha256: &str,
        user: &str,
        csrf: &str,
        expires_at: &str,
        password_hash: &str,
    ) -> Result<bool, DbError> {
        let r = sqlx::query(
            "INSERT INTO sessions (id_sha256, user_name, csrf, created_at, expires_at) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS \
             (SELECT 1 FROM users WHERE name = $2 AND password_hash = $6)",
        )
        .bind(id_sha256)
        .bind(user)
        .bind(csrf)
        .bind(now())
        .bind(expires_at)
        .bind(password_hash)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The session, with its user's role now (none once the user is gone).
    pub async fn session(&self, id_sha256: &str) -> Result<Option<SessionRow>, DbError> {
        let row = sqlx::query(
            "SELECT s.user_name, s.csrf, s.expires_at, u.role FROM sessions s \
             JOIN users u ON u.name = s.user_name WHERE s.id_sha256 = $1",
        )
        .bind(id_sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| -> Result<SessionRow, sqlx::Error> {
                Ok(SessionRow {
                    user: r.try_get("user_name")?,
                    role: role_of(&r.try_get::<String, _>("role")?)?,
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
}

/// Inside `tx`: locks every admin row, then returns `user`'s role and how many admins
/// there are (None: no such user).
async fn admins_locked(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: &str,
) -> Result<Option<(Role, i64)>, DbError> {
    sqlx::query("UPDATE users SET updated_at = updated_at WHERE role = 'admin'")
        .execute(&mut **tx)
        .await?;
    let Some(row) = sqlx::query("SELECT role FROM users WHERE name = $1")
        .bind(user)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(None);
    };
    let role = role_of(&row.try_get::<String, _>("role")?)?;
    let admins: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE role = 'admin'")
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    Ok(Some((role, admins)))
}
