//! Protected VMs, their recovery points, and operations.
//!
//! Every change to a protection is a whole-row update guarded by its generation: the
//! caller read the row at generation G and writes `WHERE generation = G`, bumping it. A
//! caller that lost the race gets `false` and reads again.

use lifeboat_agent::secret::Secret;
use serde::Serialize;
use sqlx::Row;

use super::{Database, DbError};

/// The kind of a point the server found in the vault but no sync of its own reported.
pub const UNREPORTED: &str = "unknown";

/// `Unprotected → Enabling → InitialSync → Protected ⇄ Degraded` (DESIGN.md, "Operations").
/// Unprotected is the absence of a row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProtectionState {
    #[default]
    Enabling,
    InitialSync,
    Protected,
    Degraded,
    /// `unprotect` is stopping it: no new sync starts.
    Disabling,
    /// A planned or unplanned failover is moving it to its recovery host: no new sync.
    FailingOver,
    /// It runs on its recovery host; the source is fenced and not replicated.
    FailedOver,
    /// `failback` is bringing it home: no sync.
    FailingBack,
    /// Home again, replication paused until `reprotect`.
    FailedBack,
}

impl ProtectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtectionState::Enabling => "enabling",
            ProtectionState::InitialSync => "initial_sync",
            ProtectionState::Protected => "protected",
            ProtectionState::Degraded => "degraded",
            ProtectionState::Disabling => "disabling",
            ProtectionState::FailingOver => "failing_over",
            ProtectionState::FailedOver => "failed_over",
            ProtectionState::FailingBack => "failing_back",
            ProtectionState::FailedBack => "failed_back",
        }
    }

    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        Ok(match s {
            "enabling" => ProtectionState::Enabling,
            "initial_sync" => ProtectionState::InitialSync,
            "protected" => ProtectionState::Protected,
            "degraded" => ProtectionState::Degraded,
            "disabling" => ProtectionState::Disabling,
            "failing_over" => ProtectionState::FailingOver,
            "failed_over" => ProtectionState::FailedOver,
            "failing_back" => ProtectionState::FailingBack,
            "failed_back" => ProtectionState::FailedBack,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown protection state {other:?}").into(),
                ))
            }
        })
    }

    pub const ALL: [ProtectionState; 9] = [
        ProtectionState::Enabling,
        ProtectionState::InitialSync,
        ProtectionState::Protected,
        ProtectionState::Degraded,
        ProtectionState::Disabling,
        ProtectionState::FailingOver,
        ProtectionState::FailedOver,
        ProtectionState::FailingBack,
        ProtectionState::FailedBack,
    ];

    /// The VM is (being) moved away or back: replication does not start syncs.
    pub fn is_failover(self) -> bool {
        matches!(
            self,
            ProtectionState::FailingOver
                | ProtectionState::FailedOver
                | ProtectionState::FailingBack
                | ProtectionState::FailedBack
        )
    }
}

/// One protected VM, as stored. `Default` is a new protection before its first sync
/// (generation 1), so callers name only what they know.
#[derive(Clone, Debug)]
pub struct Protection {
    pub id: String,
    pub host_id: String,
    pub vm: String,
    pub point_name: String,
    pub vault_url: String,
    pub vault_passphrase: Secret,
    pub recovery_host_id: String,
    pub policy: String,
    pub state: ProtectionState,
    pub reason: String,
    pub current_sync: Option<String>,
    pub sync_started_at: Option<String>,
    pub sync_done: i64,
    pub sync_total: i64,
    pub next_sync_at: String,
    pub failures: i64,
    pub last_error: String,
    pub last_point: Option<String>,
    pub last_point_time: Option<String>,
    pub last_consistency: Option<String>,
    pub bytes_replicated: i64,
    pub syncs_committed: i64,
    pub last_sync_ms: i64,
    pub created_at: String,
    pub generation: i64,
    /// When a sync last asked for an app-consistent point.
    pub app_attempt_at: Option<String>,
    /// JSON object: source network -> recovery host network, the failover default.
    pub network_map: String,
}

impl Default for Protection {
    fn default() -> Self {
        Protection {
            id: String::new(),
            host_id: String::new(),
            vm: String::new(),
            point_name: String::new(),
            vault_url: String::new(),
            vault_passphrase: Secret::default(),
            recovery_host_id: String::new(),
            policy: "default".into(),
            state: ProtectionState::Enabling,
            reason: String::new(),
            current_sync: None,
            sync_started_at: None,
            sync_done: 0,
            sync_total: 0,
            next_sync_at: String::new(),
            failures: 0,
            last_error: String::new(),
            last_point: None,
            last_point_time: None,
            last_consistency: None,
            bytes_replicated: 0,
            syncs_committed: 0,
            last_sync_ms: 0,
            created_at: String::new(),
            generation: 1,
            app_attempt_at: None,
            network_map: "{}".into(),
        }
    }
}

/// A recovery point as the server knows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PointRow {
    pub point: String,
    pub cut_time: String,
    /// `crash` or `app`.
    pub consistency: String,
    /// `full`, `incremental` or `resync`.
    pub kind: String,
    pub bytes_read: i64,
    pub new_bytes: i64,
    /// Why the point is what it is, when that is worth saying (a resync and its cause,
    /// no guest agent for an app-consistent point).
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: String,
    pub host_id: String,
    pub vm: String,
    pub kind: String,
    pub status: String,
    pub step: String,
    pub log: String,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str =
    "id, host_id, vm, point_name, vault_url, vault_passphrase, recovery_host_id, \
    policy, state, reason, current_sync, sync_started_at, sync_done, sync_total, next_sync_at, \
    failures, last_error, last_point, last_point_time, last_consistency, bytes_replicated, \
    syncs_committed, last_sync_ms, created_at, generation, app_attempt_at, network_map";

fn protection(r: &sqlx::any::AnyRow) -> Result<Protection, sqlx::Error> {
    Ok(Protection {
        id: r.try_get("id")?,
        host_id: r.try_get("host_id")?,
        vm: r.try_get("vm")?,
        point_name: r.try_get("point_name")?,
        vault_url: r.try_get("vault_url")?,
        vault_passphrase: Secret::from(r.try_get::<String, _>("vault_passphrase")?),
        recovery_host_id: r.try_get("recovery_host_id")?,
        policy: r.try_get("policy")?,
        state: ProtectionState::parse(&r.try_get::<String, _>("state")?)?,
        reason: r.try_get("reason")?,
        current_sync: r.try_get("current_sync")?,
        sync_started_at: r.try_get("sync_started_at")?,
        sync_done: r.try_get("sync_done")?,
        sync_total: r.try_get("sync_total")?,
        next_sync_at: r.try_get("next_sync_at")?,
        failures: r.try_get("failures")?,
        last_error: r.try_get("last_error")?,
        last_point: r.try_get("last_point")?,
        last_point_time: r.try_get("last_point_time")?,
        last_consistency: r.try_get("last_consistency")?,
        bytes_replicated: r.try_get("bytes_replicated")?,
        syncs_committed: r.try_get("syncs_committed")?,
        last_sync_ms: r.try_get("last_sync_ms")?,
        created_at: r.try_get("created_at")?,
        generation: r.try_get("generation")?,
        app_attempt_at: r.try_get("app_attempt_at")?,
        network_map: r.try_get("network_map")?,
    })
}

fn operation(r: &sqlx::any::AnyRow) -> Result<Operation, sqlx::Error> {
    Ok(Operation {
        id: r.try_get("id")?,
        host_id: r.try_get("host_id")?,
        vm: r.try_get("vm")?,
        kind: r.try_get("kind")?,
        status: r.try_get("status")?,
        step: r.try_get("step")?,
        log: r.try_get("log")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// An RFC 3339 time in the one shape whose text order is time order (UTC, `Z`, six
/// fraction digits), for times compared in SQL; text that is not a time is kept.
pub(crate) fn sortable_time(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        })
        .unwrap_or_else(|_| t.to_string())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

impl Database {
    /// Stores a new protection at generation 1; a VM protected already is a conflict.
    pub async fn add_protection(&self, p: &Protection) -> Result<(), DbError> {
        let r = sqlx::query(&format!(
            "INSERT INTO protections ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, 1, $25, $26)"
        ))
        .bind(&p.id)
        .bind(&p.host_id)
        .bind(&p.vm)
        .bind(&p.point_name)
        .bind(&p.vault_url)
        .bind(p.vault_passphrase.expose())
        .bind(&p.recovery_host_id)
        .bind(&p.policy)
        .bind(p.state.as_str())
        .bind(&p.reason)
        .bind(&p.current_sync)
        .bind(&p.sync_started_at)
        .bind(p.sync_done)
        .bind(p.sync_total)
        .bind(&p.next_sync_at)
        .bind(p.failures)
        .bind(&p.last_error)
        .bind(&p.last_point)
        .bind(&p.last_point_time)
        .bind(&p.last_consistency)
        .bind(p.bytes_replicated)
        .bind(p.syncs_committed)
        .bind(p.last_sync_ms)
        .bind(&p.created_at)
        .bind(&p.app_attempt_at)
        .bind(&p.network_map)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(DbError::Conflict(format!("{} is protected already", p.vm)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `p` if the stored row is still at `p.generation`; then `p.generation` is the
    /// new one. False when another actor changed the row first (or it is gone).
    pub async fn save_protection(&self, p: &mut Protection) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE protections SET state = $1, reason = $2, current_sync = $3, \
             sync_started_at = $4, sync_done = $5, sync_total = $6, next_sync_at = $7, \
             failures = $8, last_error = $9, last_point = $10, last_point_time = $11, \
             last_consistency = $12, bytes_replicated = $13, syncs_committed = $14, \
             last_sync_ms = $15, app_attempt_at = $16, generation = generation + 1 \
             WHERE id = $17 AND generation = $18",
        )
        .bind(p.state.as_str())
        .bind(&p.reason)
        .bind(&p.current_sync)
        .bind(&p.sync_started_at)
        .bind(p.sync_done)
        .bind(p.sync_total)
        .bind(&p.next_sync_at)
        .bind(p.failures)
        .bind(&p.last_error)
        .bind(&p.last_point)
        .bind(&p.last_point_time)
        .bind(&p.last_consistency)
        .bind(p.bytes_replicated)
        .bind(p.syncs_committed)
        .bind(p.last_sync_ms)
        .bind(&p.app_attempt_at)
        .bind(&p.id)
        .bind(p.generation)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            p.generation += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    pub async fn protection(&self, id: &str) -> Result<Option<Protection>, DbError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM protections WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(protection).transpose()?)
    }

    pub async fn protection_of(
        &self,
        host_id: &str,
        vm: &str,
    ) -> Result<Option<Protection>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM protections WHERE host_id = $1 AND vm = $2"
        ))
        .bind(host_id)
        .bind(vm)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(protection).transpose()?)
    }

    pub async fn protections(&self) -> Result<Vec<Protection>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM protections ORDER BY vm, host_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| protection(r).map_err(DbError::from))
            .collect()
    }

    /// Removes a protection and its points' records if it is still at `generation`.
    pub async fn delete_protection(&self, id: &str, generation: i64) -> Result<bool, DbError> {
        let r = sqlx::query("DELETE FROM protections WHERE id = $1 AND generation = $2")
            .bind(id)
            .bind(generation)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 1 {
            for table in ["points", "point_cuts", "vault_keys"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE protection_id = $1"))
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(r.rows_affected() == 1)
    }

    /// Records a point; recording the same point twice is not an error.
    pub async fn add_point(&self, protection_id: &str, p: &PointRow) -> Result<(), DbError> {
        let r = sqlx::query(
            // Only while the protection exists: a watcher that finishes after `unprotect`
            // leaves no orphan rows.
            "INSERT INTO points (protection_id, point, cut_time, consistency, kind, bytes_read, new_bytes, note) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM protections WHERE id = $1)",
        )
        .bind(protection_id)
        .bind(&p.point)
        .bind(&p.cut_time)
        .bind(&p.consistency)
        .bind(&p.kind)
        .bind(p.bytes_read)
        .bind(p.new_bytes)
        .bind(&p.note)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.add_point_cut(protection_id, p).await
    }

    /// Keeps the point's cut time for the RPO chart, and forgets cuts older than two days.
    async fn add_point_cut(&self, protection_id: &str, p: &PointRow) -> Result<(), DbError> {
        let r = sqlx::query(
            "INSERT INTO point_cuts (protection_id, point, cut_time) \
             SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM protections WHERE id = $1)",
        )
        .bind(protection_id)
        .bind(&p.point)
        .bind(sortable_time(&p.cut_time))
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
            Err(e) => return Err(e.into()),
        }
        let horizon = sortable_time(&(chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339());
        sqlx::query("DELETE FROM point_cuts WHERE protection_id = $1 AND cut_time < $2")
            .bind(protection_id)
            .bind(horizon)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Cut times of a protection's points since `since` (RFC 3339), oldest first, led by
    /// the last cut before it when there is one: what the RPO over that window needs.
    pub async fn point_cuts(
        &self,
        protection_id: &str,
        since: &str,
    ) -> Result<Vec<String>, DbError> {
        let since = sortable_time(since);
        let before = sqlx::query(
            "SELECT MAX(cut_time) AS t FROM point_cuts WHERE protection_id = $1 AND cut_time < $2",
        )
        .bind(protection_id)
        .bind(&since)
        .fetch_one(&self.pool)
        .await?;
        let mut cuts: Vec<String> = before
            .try_get::<Option<String>, _>("t")?
            .into_iter()
            .collect();
        let rows = sqlx::query(
            "SELECT cut_time FROM point_cuts WHERE protection_id = $1 AND cut_time >= $2 \
             ORDER BY cut_time",
        )
        .bind(protection_id)
        .bind(&since)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            cuts.push(r.try_get("cut_time")?);
        }
        Ok(cuts)
    }

    /// Makes the recorded points those the vault has: forgets the ones retention deleted,
    /// and records any the server missed (a point committed by a sync whose answer was
    /// lost, or one another host created under this name) with the time its id carries,
    /// as kind [`UNREPORTED`]: retention never counts nor deletes those.
    pub async fn sync_points(
        &self,
        protection_id: &str,
        in_vault: &[String],
    ) -> Result<(), DbError> {
        let known = self.points(protection_id).await?;
        for v in in_vault {
            if known.iter().any(|k| &k.point == v) {
                continue;
            }
            let Ok(id) = v.parse::<lifeboat_vault::format::PointId>() else {
                continue;
            };
            let row = PointRow {
                point: v.clone(),
                cut_time: id.time().to_rfc3339(),
                consistency: "unknown".into(),
                kind: UNREPORTED.into(),
                bytes_read: 0,
                new_bytes: 0,
                note: Some("found in the vault; the sync that wrote it did not report".into()),
            };
            self.add_point(protection_id, &row).await?;
        }
        for p in known {
            if !in_vault.contains(&p.point) {
                sqlx::query("DELETE FROM points WHERE protection_id = $1 AND point = $2")
                    .bind(protection_id)
                    .bind(&p.point)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// A protection's points, oldest first.
    pub async fn points(&self, protection_id: &str) -> Result<Vec<PointRow>, DbError> {
        let rows = sqlx::query(
            "SELECT point, cut_time, consistency, kind, bytes_read, new_bytes, note FROM points \
             WHERE protection_id = $1 ORDER BY point",
        )
        .bind(protection_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PointRow {
                    point: r.try_get("point")?,
                    cut_time: r.try_get("cut_time")?,
                    consistency: r.try_get("consistency")?,
                    kind: r.try_get("kind")?,
                    bytes_read: r.try_get("bytes_read")?,
                    new_bytes: r.try_get("new_bytes")?,
                    note: r.try_get("note")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Whether another protection already writes points under `point_name`.
    pub async fn point_name_taken(&self, point_name: &str) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM protections WHERE point_name = $1")
            .bind(point_name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Starts an operation on a VM; a conflict if one is running on it already.
    pub async fn start_operation(
        &self,
        host_id: &str,
        vm: &str,
        kind: &str,
        step: &str,
    ) -> Result<String, DbError> {
        let id = uuid::Uuid::new_v4().to_string();
        let t = now();
        let r = sqlx::query(
            "INSERT INTO operations (id, host_id, vm, kind, status, step, log, created_at, updated_at, generation) \
             VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $7, 1)",
        )
        .bind(&id)
        .bind(host_id)
        .bind(vm)
        .bind(kind)
        .bind(step)
        .bind(format!("{t} {step}\n"))
        .bind(&t)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(id),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let running = self.running_operation(host_id, vm).await?;
                Err(DbError::Conflict(match running {
                    Some(op) => format!(
                        "{vm} has an operation running already: {} ({}, {}); wait for it to end",
                        op.kind, op.id, op.step
                    ),
                    None => format!("{vm} has an operation running already"),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a running operation to `step` (and `status`), adding `step` to its log.
    pub async fn advance_operation(
        &self,
        id: &str,
        status: &str,
        step: &str,
    ) -> Result<(), DbError> {
        let t = now();
        let op = self.operation(id).await?;
        let Some(op) = op else { return Ok(()) };
        if op.step == step && op.status == status {
            return Ok(());
        }
        sqlx::query(
            "UPDATE operations SET status = $1, step = $2, log = $3, updated_at = $4, \
             generation = generation + 1 WHERE id = $5 AND status = 'running'",
        )
        .bind(status)
        .bind(step)
        .bind(format!("{}{t} {step}\n", op.log))
        .bind(&t)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
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

    /// At server start: ends the operations a previous server process left running where
    /// nothing will carry them on. An enable whose protection exists goes on (the
    /// reconciler finishes it at the first point); one without, and any disable, failed.
    pub async fn recover_operations(&self) -> Result<u64, DbError> {
        let rows = sqlx::query("SELECT * FROM operations WHERE status = 'running'")
            .fetch_all(&self.pool)
            .await?;
        let mut ended = 0;
        for r in &rows {
            let op = operation(r)?;
            let protected = self.protection_of(&op.host_id, &op.vm).await?.is_some();
            let why = match (op.kind.as_str(), protected) {
                ("enable", true) => continue,
                ("enable", false) => "interrupted by a server restart before replication was enabled; run `lifeboat protect` again",
                _ => "interrupted by a server restart; run the command again",
            };
            self.advance_operation(&op.id, "failed", why).await?;
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
