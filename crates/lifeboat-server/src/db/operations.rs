//! Operations and their persisted progress (DESIGN.md, "Operations").
//!
//! An operation run by the engine (`crate::ops`) keeps here everything a restarted server
//! needs to go on: what was asked (`params`), what its steps produced (`memory`), the next
//! step, which way it runs (forward, or undoing), whether it passed its point of no
//! return, and whether a cancel was asked. Its log is appended to in SQL (`log || line`),
//! so no line is ever lost to a concurrent writer.

use lifeboat_types::{HostId, OperationId, OperationKind, OperationStatus, ProtectionId};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::protections::{now, parse_column};
use super::{Database, DbError};

/// An operation as the API shows it (and the CLI reads it).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    #[schema(value_type = String)]
    pub id: OperationId,
    #[schema(value_type = String)]
    pub host_id: HostId,
    pub vm: String,
    #[schema(value_type = Option<String>)]
    pub protection_id: Option<ProtectionId>,
    pub kind: OperationKind,
    pub status: OperationStatus,
    /// What it does now (or how it ended), in words.
    pub step: String,
    /// One line per step and event, oldest first, each led by its time.
    pub log: String,
    pub created_at: String,
    pub updated_at: String,
    /// Steps done so far (forward), out of `steps_total` (0 for operations that do not
    /// run on the engine).
    pub steps_done: i64,
    pub steps_total: i64,
    /// It is undoing what it did (a step failed, or it was cancelled).
    pub undoing: bool,
    /// It passed its point of no return: it cannot be cancelled, failures retry forward.
    pub past_no_return: bool,
    pub cancel_requested: bool,
    /// Failed tries of the current step.
    pub attempts: i64,
    /// Its answer once it succeeded (for a failover, the recovered VM).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed, or what an undo could not do.
    pub error: String,
    /// What was asked, and what its steps produced so far: the engine's, not the API's.
    #[serde(skip, default)]
    pub params: String,
    #[serde(skip, default)]
    pub memory: String,
}

/// A new operation for the engine.
pub struct NewOperation<'a> {
    pub host_id: &'a str,
    pub vm: &'a str,
    pub protection_id: Option<&'a str>,
    pub kind: OperationKind,
    /// What was asked, as JSON.
    pub params: String,
    pub steps_total: i64,
    /// The first line of its log.
    pub step: String,
}

/// How a cancel request went.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelAsked {
    /// Asked: the operation undoes what it did before its next step.
    Asked,
    /// It passed its point of no return at step `step`: it finishes.
    PastNoReturn {
        step: String,
    },
    /// It had ended already.
    Ended(OperationStatus),
    NotFound,
}

fn operation(r: &sqlx::any::AnyRow) -> Result<Operation, sqlx::Error> {
    let result: Option<String> = r.try_get("result")?;
    Ok(Operation {
        id: OperationId::from(r.try_get::<String, _>("id")?),
        host_id: r.try_get::<String, _>("host_id")?.into(),
        vm: r.try_get("vm")?,
        protection_id: r
            .try_get::<Option<String>, _>("protection_id")?
            .map(Into::into),
        kind: parse_column(r, "kind")?,
        status: parse_column(r, "status")?,
        step: r.try_get("step")?,
        log: r.try_get("log")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        steps_done: r.try_get("next_step")?,
        steps_total: r.try_get("steps_total")?,
        undoing: r.try_get::<i64, _>("undoing")? != 0,
        past_no_return: r.try_get::<i64, _>("past_no_return")? != 0,
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
        attempts: r.try_get("attempts")?,
        result: result.and_then(|t| serde_json::from_str(&t).ok()),
        error: r.try_get("error")?,
        params: r.try_get("params")?,
        memory: r.try_get("memory")?,
    })
}

/// A log line: the time, then the words.
fn line(text: &str) -> String {
    format!("{} {text}\n", now())
}

impl Database {
    /// Starts an operation on a VM outside the engine; a conflict if one runs on it
    /// already.
    pub async fn start_operation(
        &self,
        host_id: &str,
        vm: &str,
        kind: OperationKind,
        step: &str,
    ) -> Result<String, DbError> {
        let id = self
            .create_operation(&NewOperation {
                host_id,
                vm,
                protection_id: None,
                kind,
                params: "{}".into(),
                steps_total: 0,
                step: step.to_string(),
            })
            .await?;
        Ok(id.to_string())
    }

    /// Records a new running operation; a conflict if one runs on the VM already (one
    /// active operation per VM, kept by a unique index).
    pub async fn create_operation(&self, new: &NewOperation<'_>) -> Result<OperationId, DbError> {
        let id = OperationId::random();
        let t = now();
        let r = sqlx::query(
            "INSERT INTO operations (id, host_id, vm, kind, status, step, log, created_at, \
             updated_at, generation, protection_id, params, steps_total) \
             VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $7, 1, $8, $9, $10)",
        )
        .bind(id.as_str())
        .bind(new.host_id)
        .bind(new.vm)
        .bind(new.kind.as_str())
        .bind(&new.step)
        .bind(line(&new.step))
        .bind(&t)
        .bind(new.protection_id)
        .bind(&new.params)
        .bind(new.steps_total)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(id),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let running = self.running_operation(new.host_id, new.vm).await?;
                Err(DbError::Conflict(match running {
                    Some(op) => format!(
                        "{} has an operation running already: {} ({}, {}); wait for it to end",
                        new.vm, op.kind, op.id, op.step
                    ),
                    None => format!("{} has an operation running already", new.vm),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Adds a line to a running operation's log and makes it its current step.
    pub async fn log_operation(&self, id: &str, step: &str) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE operations SET step = $1, log = log || $2, updated_at = $3, \
             generation = generation + 1 WHERE id = $4 AND status = 'running'",
        )
        .bind(step)
        .bind(line(step))
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves a running operation to `step` and `status` (an end when it is not
    /// `running`, with `step` as its error when it failed), adding `step` to its log.
    pub async fn advance_operation(
        &self,
        id: &str,
        status: OperationStatus,
        step: &str,
    ) -> Result<(), DbError> {
        match status {
            OperationStatus::Running => self.log_operation(id, step).await,
            OperationStatus::Failed => self.finish_operation(id, status, None, step, step).await,
            _ => self.finish_operation(id, status, None, "", step).await,
        }
    }

    /// Stores an engine operation's progress: what its steps produced, the next step,
    /// which way it runs and the tries of the current step; `step` goes to its log.
    pub async fn save_progress(
        &self,
        id: &str,
        progress: &Progress<'_>,
        step: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE operations SET memory = $1, next_step = $2, undoing = $3, attempts = $4, \
             error = CASE WHEN $5 = '' THEN error ELSE $5 END, \
             step = $6, log = log || $7, updated_at = $8, generation = generation + 1 \
             WHERE id = $9 AND status = 'running'",
        )
        .bind(progress.memory)
        .bind(progress.next_step)
        .bind(i64::from(progress.undoing))
        .bind(progress.attempts)
        .bind(progress.error)
        .bind(step)
        .bind(line(step))
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes the operation past its point of no return, unless a cancel was asked first:
    /// false then (the caller undoes instead). From here on a cancel is refused.
    pub async fn claim_no_return(&self, id: &str) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE operations SET past_no_return = 1, generation = generation + 1 \
             WHERE id = $1 AND status = 'running' AND cancel_requested = 0",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Asks a running operation to stop and undo what it did; refused once it passed its
    /// point of no return (the same row decides both, so the two never both win).
    pub async fn request_cancel(&self, id: &str) -> Result<CancelAsked, DbError> {
        let r = sqlx::query(
            "UPDATE operations SET cancel_requested = 1, log = log || $1, updated_at = $2, \
             generation = generation + 1 \
             WHERE id = $3 AND status = 'running' AND past_no_return = 0",
        )
        .bind(line(
            "cancel asked: undoing what was done, after the step that runs now",
        ))
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            return Ok(CancelAsked::Asked);
        }
        Ok(match self.operation(id).await? {
            None => CancelAsked::NotFound,
            Some(op) if op.status.is_done() => CancelAsked::Ended(op.status),
            Some(op) => CancelAsked::PastNoReturn { step: op.step },
        })
    }

    /// Ends a running operation: `status`, its answer (succeeded) or why it did not.
    pub async fn finish_operation(
        &self,
        id: &str,
        status: OperationStatus,
        result: Option<&serde_json::Value>,
        error: &str,
        step: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE operations SET status = $1, result = $2, error = $3, step = $4, \
             log = log || $5, updated_at = $6, generation = generation + 1 \
             WHERE id = $7 AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(result.map(|v| v.to_string()))
        .bind(error)
        .bind(step)
        .bind(line(step))
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The operation's generation (every change adds one), or `None` when there is no
    /// such operation: what a follower polls before reading the whole row again.
    pub async fn operation_generation(&self, id: &str) -> Result<Option<i64>, DbError> {
        let row = sqlx::query("SELECT generation FROM operations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("generation")).transpose()?)
    }

    pub async fn operation(&self, id: &str) -> Result<Option<Operation>, DbError> {
        let row = sqlx::query("SELECT * FROM operations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(operation).transpose()?)
    }

    pub async fn running_operation(
        &self,
        host_id: &str,
        vm: &str,
    ) -> Result<Option<Operation>, DbError> {
        let row = sqlx::query(
            "SELECT * FROM operations WHERE host_id = $1 AND vm = $2 AND status = 'running'",
        )
        .bind(host_id)
        .bind(vm)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(operation).transpose()?)
    }

    /// Every running operation, oldest first.
    pub async fn running_operations(&self) -> Result<Vec<Operation>, DbError> {
        let rows =
            sqlx::query("SELECT * FROM operations WHERE status = 'running' ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| operation(r).map_err(DbError::from))
            .collect()
    }

    /// At server start: ends the operations a previous server process left running where
    /// nothing will carry them on. Engine operations (`steps_total > 0`) are resumed by
    /// the engine. Of the others (written by an earlier version, which ran them in the
    /// request): an enable whose protection exists succeeded (replication runs; `status`
    /// shows its first point); any other failed.
    pub async fn recover_operations(&self) -> Result<u64, DbError> {
        let mut ended = 0;
        for op in self.running_operations().await? {
            if op.steps_total > 0 {
                continue;
            }
            let protected = self.protection_of(&op.host_id, &op.vm).await?.is_some();
            let (status, why) = match (op.kind, protected) {
                (OperationKind::Enable, true) => (
                    OperationStatus::Succeeded,
                    "replication is enabled; `lifeboat status` shows its first point",
                ),
                (OperationKind::Enable, false) => (
                    OperationStatus::Failed,
                    "interrupted by a server restart before replication was enabled; run `lifeboat protect` again",
                ),
                _ => (
                    OperationStatus::Failed,
                    "interrupted by a server restart; run the command again",
                ),
            };
            self.advance_operation(op.id.as_str(), status, why).await?;
            ended += 1;
        }
        Ok(ended)
    }

    /// The newest operations first.
    pub async fn operations(&self, limit: i64) -> Result<Vec<Operation>, DbError> {
        let rows = sqlx::query("SELECT * FROM operations ORDER BY created_at DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| operation(r).map_err(DbError::from))
            .collect()
    }
}

/// An engine operation's progress, as [`Database::save_progress`] stores it.
pub struct Progress<'a> {
    pub memory: &'a str,
    pub next_step: i64,
    pub undoing: bool,
    pub attempts: i64,
    /// Why it undoes (kept once set; empty keeps what is there).
    pub error: &'a str,
}

#[cfg(test)]
mod tests {
    use lifeboat_types::{
        OperationKind, OperationStatus, ProtectionState, RecoveryKind, RecoveryState,
    };

    /// The names a `CHECK (column IN (…))` of the migration allows.
    fn allowed(sql: &str, table: &str, column: &str) -> Vec<String> {
        let body = &sql[sql.find(&format!("CREATE TABLE {table}_new")).unwrap()..];
        let at = body.find(&format!("CHECK ({column} IN (")).unwrap();
        let list = &body[at + format!("CHECK ({column} IN (").len()..];
        let list = &list[..list.find(')').unwrap()];
        list.split(',')
            .map(|s| s.trim().trim_matches('\'').to_string())
            .collect()
    }

    fn names<T: Copy + std::fmt::Display>(all: &[T]) -> Vec<String> {
        all.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn the_database_checks_the_same_names_as_the_types() {
        let sql = include_str!("../../migrations/0010_operations_engine.sql");
        // 0011 widened two lists, and 0013 the protections' states again.
        let newest = include_str!("../../migrations/0011_reversed_protection.sql");
        let states = include_str!("../../migrations/0013_degraded_reversed.sql");
        assert_eq!(
            allowed(states, "protections", "state"),
            names(ProtectionState::ALL)
        );
        assert_eq!(
            allowed(sql, "operations", "kind"),
            names(OperationKind::ALL)
        );
        assert_eq!(
            allowed(sql, "operations", "status"),
            names(OperationStatus::ALL)
        );
        assert_eq!(allowed(sql, "recoveries", "kind"), names(RecoveryKind::ALL));
        assert_eq!(
            allowed(newest, "recoveries", "state"),
            names(RecoveryState::ALL)
        );
    }
}
