//! VMs brought up from recovery points (test copies and failed-over VMs). Updates are
//! generation-guarded like protections'.

use serde::Serialize;
use sqlx::AssertSqlSafe;
use sqlx::Row;

use lifeboat_types::{HostId, PortForward, ProtectionId, RecoveryId, RecoveryKind, RecoveryState};

use super::{Database, DbError};

/// A recovered VM as the server keeps it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Recovery {
    #[schema(value_type = String)]
    pub id: RecoveryId,
    #[schema(value_type = String)]
    pub protection_id: ProtectionId,
    pub kind: RecoveryKind,
    /// The recovery host's id, and the VM's name there.
    #[schema(value_type = String)]
    pub host_id: HostId,
    pub vm: String,
    /// The protected VM this is a copy of.
    #[schema(value_type = String)]
    pub origin_host_id: HostId,
    pub origin_vm: String,
    /// The recovery point it started from, and that point's cut time.
    pub point: String,
    pub point_time: String,
    pub state: RecoveryState,
    /// As the recovery host's agent last reported it (`running`, `stopped`, …).
    pub vm_state: String,
    pub hydrated_bytes: i64,
    pub hydration_total: i64,
    /// The VM needs nothing from the vault any more.
    pub hydrated: bool,
    /// Where the guest answers on its host (its user-network NICs' ports).
    pub forwards: Vec<PortForward>,
    pub error: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub generation: i64,
}

impl Recovery {
    /// It is (becoming) the VM: starting, running or committed, not removed or fenced.
    pub fn is_the_vm(&self) -> bool {
        use lifeboat_types::RecoveryState as S;
        matches!(self.state, S::Starting | S::Running | S::Committed)
    }
}

const COLUMNS: &str = "id, protection_id, kind, host_id, vm, origin_host_id, origin_vm, \
    point, point_time, state, vm_state, hydrated_bytes, hydration_total, hydrated, forwards, \
    error, created_at, updated_at, generation";

/// A checked column read as its type (the database's CHECK holds the same names).
fn checked<T>(r: &sqlx::any::AnyRow, column: &str) -> Result<T, sqlx::Error>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = r.try_get(column)?;
    text.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn recovery(r: &sqlx::any::AnyRow) -> Result<Recovery, sqlx::Error> {
    Ok(Recovery {
        id: r.try_get::<String, _>("id")?.into(),
        protection_id: r.try_get::<String, _>("protection_id")?.into(),
        kind: checked(r, "kind")?,
        host_id: r.try_get::<String, _>("host_id")?.into(),
        vm: r.try_get("vm")?,
        origin_host_id: r.try_get::<String, _>("origin_host_id")?.into(),
        origin_vm: r.try_get("origin_vm")?,
        point: r.try_get("point")?,
        point_time: r.try_get("point_time")?,
        state: checked(r, "state")?,
        vm_state: r.try_get("vm_state")?,
        hydrated_bytes: r.try_get("hydrated_bytes")?,
        hydration_total: r.try_get("hydration_total")?,
        hydrated: r.try_get::<i64, _>("hydrated")? != 0,
        forwards: forwards_from(&r.try_get::<String, _>("forwards")?),
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        generation: r.try_get("generation")?,
    })
}

/// The stored JSON list of forwards. Observations only: one that does not read (an
/// older or damaged row) is shown as none rather than failing every recovery query.
fn forwards_from(text: &str) -> Vec<PortForward> {
    serde_json::from_str(text).unwrap_or_else(|e| {
        if !text.is_empty() {
            tracing::warn!("a recovery's stored forwards do not read ({e}): {text}");
        }
        Vec::new()
    })
}

fn forwards_json(forwards: &[PortForward]) -> String {
    serde_json::to_string(forwards).unwrap_or_else(|_| "[]".into())
}

impl Database {
    /// Stores a new recovery at generation 1. A second test copy of one VM, or a VM name
    /// taken on the recovery host, is a conflict.
    pub async fn add_recovery(&self, r: &Recovery) -> Result<(), DbError> {
        let t = chrono::Utc::now().to_rfc3339();
        let res = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO recoveries ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $17, 1)"
        )))
        .bind(r.id.as_str())
        .bind(r.protection_id.as_str())
        .bind(r.kind.as_str())
        .bind(r.host_id.as_str())
        .bind(&r.vm)
        .bind(r.origin_host_id.as_str())
        .bind(&r.origin_vm)
        .bind(&r.point)
        .bind(&r.point_time)
        .bind(r.state.as_str())
        .bind(&r.vm_state)
        .bind(r.hydrated_bytes)
        .bind(r.hydration_total)
        .bind(i64::from(r.hydrated))
        .bind(forwards_json(&r.forwards))
        .bind(&r.error)
        .bind(&t)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(DbError::Conflict(if r.kind == RecoveryKind::Test {
                    format!(
                        "{} has a test copy running already; remove it with `lifeboat failover cleanup {}`",
                        r.origin_vm, r.origin_vm
                    )
                } else {
                    format!("the recovery host already has a VM named {}", r.vm)
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records what the recovery host's agent last said of the VM (its state, hydration,
    /// forwards, error). Observations only: they never change the recovery's own state,
    /// so a watcher and an operation never overwrite each other.
    pub async fn record_observation(&self, r: &Recovery) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE recoveries SET vm_state = $1, hydrated_bytes = $2, hydration_total = $3, \
             hydrated = $4, forwards = $5, error = $6, updated_at = $7, \
             generation = generation + 1 WHERE id = $8",
        )
        .bind(&r.vm_state)
        .bind(r.hydrated_bytes)
        .bind(r.hydration_total)
        .bind(i64::from(r.hydrated))
        .bind(forwards_json(&r.forwards))
        .bind(&r.error)
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(r.id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves a recovery from one of `from` to `to`, a compare-and-set on its state: false
    /// when it is in none of them (another actor moved it, or it is gone).
    pub async fn move_recovery(
        &self,
        id: &str,
        from: &[RecoveryState],
        to: RecoveryState,
    ) -> Result<bool, DbError> {
        for f in from {
            let res = sqlx::query(
                "UPDATE recoveries SET state = $1, updated_at = $2, generation = generation + 1 \
                 WHERE id = $3 AND state = $4",
            )
            .bind(to.as_str())
            .bind(chrono::Utc::now().to_rfc3339())
            .bind(id)
            .bind(f.as_str())
            .execute(&self.pool)
            .await?;
            if res.rows_affected() == 1 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub async fn recovery(&self, id: &str) -> Result<Option<Recovery>, DbError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM recoveries WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(recovery).transpose()?)
    }

    /// Every recovery, oldest first.
    pub async fn recoveries(&self) -> Result<Vec<Recovery>, DbError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM recoveries ORDER BY created_at"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| recovery(r).map_err(DbError::from))
            .collect()
    }

    /// The recoveries of one protected VM.
    pub async fn recoveries_of(&self, protection_id: &str) -> Result<Vec<Recovery>, DbError> {
        Ok(self
            .recoveries()
            .await?
            .into_iter()
            .filter(|r| r.protection_id == protection_id)
            .collect())
    }

    pub async fn delete_recovery(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM recoveries WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_forwards_read_old_and_odd_rows() {
        let old = super::forwards_from(r#"[{"host_port":1,"guest_port":2}]"#);
        assert_eq!(
            (old[0].host_port, old[0].guest_port, old[0].public),
            (1, 2, false)
        );
        assert!(super::forwards_from("").is_empty());
        assert!(super::forwards_from("not json").is_empty());
    }
}
