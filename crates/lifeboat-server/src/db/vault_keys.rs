//! Vault keys sealed per (protection, host): see `crate::vault_keys`.

use sqlx::AssertSqlSafe;
use sqlx::Row;

use super::{Database, DbError};

impl Database {
    /// Keeps (or replaces) the key sealed to `host_id`'s agent for `protection_id`'s vault
    /// (at enable, before the protection's row is added).
    pub async fn put_vault_key(
        &self,
        protection_id: &str,
        host_id: &str,
        sealed: &str,
    ) -> Result<(), DbError> {
        self.upsert_vault_key(protection_id, host_id, sealed, "1 = 1")
            .await
            .map(drop)
    }

    /// The key sealed to `host_id`'s agent for `protection_id`'s vault.
    pub async fn vault_key(
        &self,
        protection_id: &str,
        host_id: &str,
    ) -> Result<Option<String>, DbError> {
        let row =
            sqlx::query("SELECT sealed FROM vault_keys WHERE protection_id = $1 AND host_id = $2")
                .bind(protection_id)
                .bind(host_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("sealed")).transpose()?)
    }

    /// `put_vault_key` for a protection that exists (the conversion of an old row): a key
    /// sealed while `unprotect` removed the protection is not kept. True when kept.
    pub async fn put_vault_key_of_existing(
        &self,
        protection_id: &str,
        host_id: &str,
        sealed: &str,
    ) -> Result<bool, DbError> {
        let exists = "EXISTS (SELECT 1 FROM protections WHERE id = $1)";
        self.upsert_vault_key(protection_id, host_id, sealed, exists)
            .await
    }

    /// One statement, when `condition` holds (SQLite and PostgreSQL both take
    /// `ON CONFLICT … DO UPDATE`). True when a key was kept. `condition` is SQL text of
    /// this file (`'static`), never a value: values are bound.
    async fn upsert_vault_key(
        &self,
        protection_id: &str,
        host_id: &str,
        sealed: &str,
        condition: &'static str,
    ) -> Result<bool, DbError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO vault_keys (protection_id, host_id, sealed, sealed_at) \
             SELECT $1, $2, $3, $4 WHERE {condition} \
             ON CONFLICT (protection_id, host_id) DO UPDATE SET sealed = excluded.sealed, sealed_at = excluded.sealed_at"
        )))
        .bind(protection_id)
        .bind(host_id)
        .bind(sealed)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Removes keys whose protection is gone (a crash between sealing and recording).
    pub async fn delete_orphan_vault_keys(&self) -> Result<u64, DbError> {
        let r = sqlx::query(
            "DELETE FROM vault_keys WHERE protection_id NOT IN (SELECT id FROM protections)",
        )
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn delete_vault_keys(&self, protection_id: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM vault_keys WHERE protection_id = $1")
            .bind(protection_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets the vault passphrase of a protection whose agents hold sealed keys.
    pub async fn forget_vault_passphrase(&self, protection_id: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE protections SET vault_passphrase = '' WHERE id = $1")
            .bind(protection_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
