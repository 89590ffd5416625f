//! Protected VMs, their recovery points, and operations.
//!
//! Every change to a protection is a whole-row update guarded by its generation: the
//! caller read the row at generation G and writes `WHERE generation = G`, bumping it. A
//! caller that lost the race gets `false` and reads again.

use lifeboat_agent::secret::Secret;
use serde::Serialize;
use sqlx::AssertSqlSafe;
use sqlx::Row;

use super::{Database, DbError};

/// The kind of a point the server found in the vault but no sync of its own reported.
pub const UNREPORTED: &str = "unknown";

pub use lifeboat_types::{Event, ProtectionState, Refusal};
use lifeboat_types::{HostId, ProtectionId};

/// The kind of failover that moved a VM away: it decides what an interrupted move does.
pub use lifeboat_types::RecoveryKind as FailoverKind;

/// One protected VM, as stored. `Default` is a new protection before its first sync
/// (generation 1), so callers name only what they know.
#[derive(Clone, Debug)]
pub struct Protection {
    pub id: ProtectionId,
    pub host_id: HostId,
    pub vm: String,
    pub point_name: String,
    pub vault_url: String,
    pub vault_passphrase: Secret,
    pub recovery_host_id: HostId,
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
    /// JSON: each NIC's address after a move (`lifeboat_types::NetworkSettings`).
    pub network_settings: String,
    /// The failover that moved the VM away (`planned` or `unplanned`), while it is away.
    pub failover_kind: Option<FailoverKind>,
    /// When the source was last known fenced, while the VM is away.
    pub fenced_at: Option<String>,
    /// The state as read: a save changes the state only along replication's edges
    /// ([`ProtectionState::replication_may_become`]) and only if the row still has it.
    /// Safe to be public: the update also requires the stored state to be this one.
    pub state_read: ProtectionState,
}

impl Default for Protection {
    fn default() -> Self {
        Protection {
            id: Default::default(),
            host_id: Default::default(),
            vm: String::new(),
            point_name: String::new(),
            vault_url: String::new(),
            vault_passphrase: Secret::default(),
            recovery_host_id: Default::default(),
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
            network_settings: "{}".into(),
            failover_kind: None,
            fenced_at: None,
            state_read: ProtectionState::Enabling,
        }
    }
}

/// What a [`Database::transition`] sets besides the state. `None` keeps a fact as it is;
/// `Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Shown next to the state (why it is what it is); always replaced.
    pub reason: String,
    pub failover_kind: Option<Option<FailoverKind>>,
    pub fenced_at: Option<Option<String>>,
    /// Failures forgotten and the next sync due now (replication resumes).
    pub sync_now: bool,
}

impl Facts {
    pub fn reason(reason: impl Into<String>) -> Facts {
        Facts {
            reason: reason.into(),
            ..Facts::default()
        }
    }
}

/// Why a transition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A recovery point as the server knows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
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

const COLUMNS: &str =
    "id, host_id, vm, point_name, vault_url, vault_passphrase, recovery_host_id, \
    policy, state, reason, current_sync, sync_started_at, sync_done, sync_total, next_sync_at, \
    failures, last_error, last_point, last_point_time, last_consistency, bytes_replicated, \
    syncs_committed, last_sync_ms, created_at, generation, app_attempt_at, network_map, \
    failover_kind, fenced_at, network_settings";

fn protection(r: &sqlx::any::AnyRow) -> Result<Protection, sqlx::Error> {
    Ok(Protection {
        id: r.try_get::<String, _>("id")?.into(),
        host_id: r.try_get::<String, _>("host_id")?.into(),
        vm: r.try_get("vm")?,
        point_name: r.try_get("point_name")?,
        vault_url: r.try_get("vault_url")?,
        vault_passphrase: Secret::from(r.try_get::<String, _>("vault_passphrase")?),
        recovery_host_id: r.try_get::<String, _>("recovery_host_id")?.into(),
        policy: r.try_get("policy")?,
        state: parse_column(r, "state")?,
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
        network_settings: r.try_get("network_settings")?,
        failover_kind: r
            .try_get::<Option<String>, _>("failover_kind")?
            .map(|k| {
                k.parse()
                    .map_err(|e: lifeboat_types::UnknownName| sqlx::Error::Decode(e.into()))
            })
            .transpose()?,
        fenced_at: r.try_get("fenced_at")?,
        state_read: parse_column(r, "state")?,
    })
}

/// A text column holding one of an enum's names (the database checks it too).
pub(crate) fn parse_column<T>(r: &sqlx::any::AnyRow, column: &str) -> Result<T, sqlx::Error>
where
    T: std::str::FromStr<Err = lifeboat_types::UnknownName>,
{
    r.try_get::<String, _>(column)?
        .parse()
        .map_err(|e: lifeboat_types::UnknownName| sqlx::Error::Decode(e.into()))
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

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

impl Database {
    /// Stores a new protection at generation 1; a VM protected already is a conflict.
    pub async fn add_protection(&self, p: &Protection) -> Result<(), DbError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO protections ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, 1, $25, $26, \
             $27, $28, $29)"
        )))
        .bind(p.id.as_str())
        .bind(p.host_id.as_str())
        .bind(&p.vm)
        .bind(&p.point_name)
        .bind(&p.vault_url)
        .bind(p.vault_passphrase.expose())
        .bind(p.recovery_host_id.as_str())
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
        .bind(p.failover_kind.map(|k| k.as_str()))
        .bind(&p.fenced_at)
        .bind(&p.network_settings)
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

    /// Writes replication's bookkeeping of `p` (state and reason, the sync it follows,
    /// failures, the newest point, counters) if the stored row is still at
    /// `p.generation` and in the state it was read in; then `p.generation` is the new
    /// one. Never the row's other facts: the failover kind and the fence are set by
    /// [`Self::transition`] and [`Self::record_source_fenced`] only. False when another actor changed the
    /// row first (or it is gone): the caller reads again and re-plans. It changes the
    /// state only along replication's own edges (sync started, healthy, unhealthy); any
    /// other change is refused ([`DbError::Refused`]): moves and `unprotect` go through
    /// [`Self::transition`].
    pub async fn save_protection(&self, p: &mut Protection) -> Result<bool, DbError> {
        if !p.state_read.replication_may_become(p.state) {
            return Err(DbError::Refused(format!(
                "{}: {} cannot become {}",
                p.vm,
                p.state_read.as_str(),
                p.state.as_str()
            )));
        }
        let r = sqlx::query(
            "UPDATE protections SET state = $1, reason = $2, current_sync = $3, \
             sync_started_at = $4, sync_done = $5, sync_total = $6, next_sync_at = $7, \
             failures = $8, last_error = $9, last_point = $10, last_point_time = $11, \
             last_consistency = $12, bytes_replicated = $13, syncs_committed = $14, \
             last_sync_ms = $15, app_attempt_at = $16, generation = generation + 1 \
             WHERE id = $17 AND generation = $18 AND state = $19",
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
        .bind(p.id.as_str())
        .bind(p.generation)
        .bind(p.state_read.as_str())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            p.generation += 1;
            p.state_read = p.state;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// The one compare-and-set on a protection's state: `event` applied to the state the
    /// caller read (`from`, at `generation`), with the facts it sets. `Ok(None)` when
    /// another actor changed the row first (the caller re-plans); a refusal when the
    /// state machine does not allow the event.
    pub async fn transition(
        &self,
        id: &str,
        generation: i64,
        from: ProtectionState,
        event: Event,
        facts: &Facts,
    ) -> Result<Option<i64>, TransitionError> {
        let to = from.on(event)?;
        let r = sqlx::query(
            "UPDATE protections SET state = $1, reason = $2, \
             failover_kind = CASE WHEN $3 = 'keep' THEN failover_kind ELSE $4 END, \
             fenced_at = CASE WHEN $5 = 'keep' THEN fenced_at ELSE $6 END, \
             current_sync = CASE WHEN $7 = 1 THEN NULL ELSE current_sync END, \
             failures = CASE WHEN $8 = 1 THEN 0 ELSE failures END, \
             last_error = CASE WHEN $8 = 1 THEN '' ELSE last_error END, \
             next_sync_at = CASE WHEN $8 = 1 THEN $9 ELSE next_sync_at END, \
             generation = generation + 1 \
             WHERE id = $10 AND generation = $11 AND state = $12",
        )
        .bind(to.as_str())
        .bind(&facts.reason)
        .bind(if facts.failover_kind.is_some() {
            "set"
        } else {
            "keep"
        })
        .bind(facts.failover_kind.flatten().map(|k| k.as_str()))
        .bind(if facts.fenced_at.is_some() {
            "set"
        } else {
            "keep"
        })
        .bind(facts.fenced_at.clone().flatten())
        // A sync asked of home before a move is not waited for: the VM is away now.
        .bind(i64::from(matches!(
            to,
            ProtectionState::FailedOver
                | ProtectionState::Reprotecting
                | ProtectionState::FailedBack
        )))
        .bind(i64::from(facts.sync_now))
        .bind(now())
        .bind(id)
        .bind(generation)
        .bind(from.as_str())
        .execute(&self.pool)
        .await
        .map_err(DbError::from)?;
        Ok((r.rows_affected() == 1).then_some(generation + 1))
    }

    /// Applies `event` to the protection as it is now: read, then [`Self::transition`];
    /// a lost race reads again and re-plans (the event may no longer be allowed: refused
    /// then). The new state, or `Conflict` when the row is gone.
    pub async fn apply_event(
        &self,
        id: &str,
        event: Event,
        facts: &Facts,
    ) -> Result<ProtectionState, TransitionError> {
        loop {
            let Some(row) = self.protection(id).await? else {
                return Err(DbError::Conflict("the protection is gone".into()).into());
            };
            if self
                .transition(id, row.generation, row.state, event, facts)
                .await?
                .is_some()
            {
                return Ok(row.state.on(event)?);
            }
        }
    }

    /// Records when the source of a moved VM was known fenced (or that it is not).
    /// Stores a protection's failover network settings (JSON), checked by the caller.
    /// Not a state: the generation stays, so no operation or sync re-plans for it.
    pub async fn set_network_settings(&self, id: &str, json: &str) -> Result<bool, DbError> {
        let r = sqlx::query("UPDATE protections SET network_settings = $1 WHERE id = $2")
            .bind(json)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records that the VM's source (home) is fenced, once: a compare-and-set on the row
    /// as the caller read it (generation and state), so it never lands on a row another
    /// actor moved meanwhile (a VM come home is never marked fenced). `Ok(false)`: the
    /// row changed since, or was fenced already; read it again and decide again.
    pub async fn record_source_fenced(
        &self,
        id: &str,
        generation: i64,
        state: ProtectionState,
        at: &str,
    ) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE protections SET fenced_at = $1, generation = generation + 1 \
             WHERE id = $2 AND generation = $3 AND state = $4 AND fenced_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .bind(generation)
        .bind(state.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every protection's id, generation and the host its syncs run on: what the
    /// scheduler's round needs to find the due and the changed ones (a full row is read
    /// only for those) and to bound the syncs each host runs at once. A reversed
    /// protection syncs on the recovery host of its committed failover, not at home.
    pub async fn protection_versions(&self) -> Result<Vec<(String, i64, String)>, DbError> {
        let rows = sqlx::query(
            "SELECT p.id, p.generation, COALESCE(CASE WHEN p.state IN \
                 ('reprotecting', 'protected_reversed', 'degraded_reversed') THEN \
                 (SELECT MIN(r.host_id) FROM recoveries r WHERE r.protection_id = p.id \
                 AND r.state = 'committed' AND r.kind <> 'test') END, p.host_id) AS host_id \
             FROM protections p",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("generation")?,
                    r.try_get("host_id")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Every protection's id, host and VM: which VMs of a list are protected, read
    /// without the rest of each row (`api::fleet`, which reads whole only the rows a page
    /// shows, with [`Database::protections_with_ids`]).
    pub async fn protection_keys(&self) -> Result<Vec<(ProtectionId, HostId, String)>, DbError> {
        let rows = sqlx::query("SELECT id, host_id, vm FROM protections")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("id")?.into(),
                    r.try_get::<String, _>("host_id")?.into(),
                    r.try_get("vm")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// The protections of `ids` that exist, in no particular order.
    pub async fn protections_with_ids(&self, ids: &[&str]) -> Result<Vec<Protection>, DbError> {
        // Well below SQLite's and PostgreSQL's limits on bound values.
        const BATCH: usize = 500;
        let mut found = Vec::with_capacity(ids.len());
        for batch in ids.chunks(BATCH) {
            let marks: Vec<String> = (1..=batch.len()).map(|i| format!("${i}")).collect();
            // Only placeholders are spliced in; the ids are bound.
            let sql = format!(
                "SELECT {COLUMNS} FROM protections WHERE id IN ({})",
                marks.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in batch {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                found.push(protection(&row)?);
            }
        }
        Ok(found)
    }

    pub async fn protection(&self, id: &str) -> Result<Option<Protection>, DbError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM protections WHERE id = $1"
        )))
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
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM protections WHERE host_id = $1 AND vm = $2"
        )))
        .bind(host_id)
        .bind(vm)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(protection).transpose()?)
    }

    pub async fn protections(&self) -> Result<Vec<Protection>, DbError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM protections ORDER BY vm, host_id"
        )))
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
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE protection_id = $1"
                )))
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

    /// Records a committed point in the server's list and in the protection's row (the
    /// caller saves the row).
    pub async fn record_point(
        &self,
        p: &mut Protection,
        r: &lifeboat_agent::sync::SyncResult,
    ) -> Result<(), DbError> {
        self.add_point(
            &p.id,
            &PointRow {
                point: r.point.clone(),
                cut_time: r.cut_time.to_rfc3339(),
                consistency: r.consistency.clone(),
                kind: serde_json::to_value(r.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                bytes_read: r.bytes_read as i64,
                new_bytes: r.new_bytes_stored as i64,
                note: r.note.clone(),
            },
        )
        .await?;
        self.sync_points(&p.id, &r.points).await?;
        p.last_point = Some(r.point.clone());
        p.last_point_time = Some(r.cut_time.to_rfc3339());
        p.last_consistency = Some(r.consistency.clone());
        p.bytes_replicated += r.new_bytes_stored as i64;
        p.syncs_committed += 1;
        p.last_sync_ms = (r.seconds * 1000.0) as i64;
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
}
