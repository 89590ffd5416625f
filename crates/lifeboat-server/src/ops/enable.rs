//! Enable as an operation: the protection recorded, then its first point awaited.
//!
//! The vault is checked in the request, before the operation starts: both agents must open
//! it, and each seals the vault's key to itself. That check needs the passphrase, which
//! the server never stores, so it cannot be a step a restarted server runs again. What
//! the agents sealed is what the steps record.
//!
//! | step | undo |
//! |---|---|
//! | `record-protection` | the protection and its sealed keys removed |
//! | `initial-sync` (point of no return) | — |
//!
//! The scheduler runs the initial sync, logs its phases, and ends the operation in the
//! same step that records the first point, before the protection shows it (so a move
//! asked as soon as the VM shows protected is not refused by a still-running enable).
//! `initial-sync` waits for that; it is the point of no return so that a restarted
//! server goes on waiting (an initial sync may take hours) instead of undoing.
//! `unprotect` ends it too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Ctx, Saga, StepError, StepInfo};
use crate::db::Protection;

/// The protection to record: what the request chose, and the vault's key as each agent
/// sealed it to itself (it opens only on that agent).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnableParams {
    pub protection_id: lifeboat_types::ProtectionId,
    pub host_id: lifeboat_types::HostId,
    pub vm: String,
    pub point_name: String,
    pub vault_url: String,
    pub recovery_host_id: lifeboat_types::HostId,
    pub policy: String,
    /// JSON of the network map.
    pub network_map: String,
    /// (host id, sealed key) for the VM's host and its recovery host.
    pub sealed: Vec<(lifeboat_types::HostId, String)>,
}

impl EnableParams {
    /// The protection the first step records (new, in `enabling`).
    pub fn protection(&self) -> Protection {
        let now = chrono::Utc::now().to_rfc3339();
        Protection {
            id: self.protection_id.clone(),
            host_id: self.host_id.clone(),
            vm: self.vm.clone(),
            point_name: self.point_name.clone(),
            vault_url: self.vault_url.clone(),
            // Never kept: the agents hold the key, sealed (crate::vault_keys).
            vault_passphrase: Default::default(),
            recovery_host_id: self.recovery_host_id.clone(),
            policy: self.policy.clone(),
            network_map: self.network_map.clone(),
            next_sync_at: now.clone(),
            created_at: now,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EnableMemory {
    /// The first point, once the initial sync made it.
    pub point: Option<String>,
    /// `unprotect` removed the protection before its first point.
    pub disabled: bool,
}

pub struct Enable;

pub const STEPS: &[StepInfo] = &[
    StepInfo::with_undo("record-protection"),
    StepInfo::step("initial-sync").no_return(),
];

/// How often the initial sync's step looks at the protection.
const WATCH: Duration = Duration::from_secs(2);

impl Saga for Enable {
    type Params = EnableParams;
    type Memory = EnableMemory;

    fn steps(_: &EnableParams) -> &'static [StepInfo] {
        STEPS
    }

    async fn run(
        ctx: &Ctx,
        params: &EnableParams,
        step: &'static str,
        mem: &mut EnableMemory,
    ) -> Result<(), StepError> {
        match step {
            "record-protection" => {
                if ctx.db.protection(&params.protection_id).await?.is_some() {
                    return Ok(()); // recorded by a run before a restart
                }
                for (host_id, key) in &params.sealed {
                    ctx.db
                        .put_vault_key(&params.protection_id, host_id, key)
                        .await?;
                }
                let p = params.protection();
                ctx.db.add_protection(&p).await.map_err(|e| match e {
                    crate::db::DbError::Conflict(m) => StepError::Permanent(m),
                    e => e.into(),
                })?;
                tracing::info!(vm = %p.vm, policy = %p.policy, "protection enabled");
                Ok(())
            }
            "initial-sync" => loop {
                match ctx.db.protection(&params.protection_id).await? {
                    None => {
                        mem.disabled = true;
                        return Ok(());
                    }
                    Some(p) if p.last_point.is_some() => {
                        mem.point = p.last_point;
                        return Ok(());
                    }
                    Some(_) => tokio::time::sleep(WATCH).await,
                }
            },
            other => Err(StepError::Permanent(format!("no step {other}"))),
        }
    }

    async fn undo(
        ctx: &Ctx,
        params: &EnableParams,
        step: &'static str,
        _: &mut EnableMemory,
    ) -> Result<(), StepError> {
        if step == "record-protection" {
            match ctx.db.protection(&params.protection_id).await? {
                Some(p) => {
                    ctx.db.delete_protection(&p.id, p.generation).await?;
                }
                None => ctx.db.delete_vault_keys(&params.protection_id).await?,
            }
        }
        Ok(())
    }

    async fn answer(
        ctx: &Ctx,
        params: &EnableParams,
        mem: &EnableMemory,
    ) -> Result<serde_json::Value, StepError> {
        Ok(answer(&params.vm, &ctx.op, mem.point.as_deref()))
    }

    fn done_line(_: &EnableParams, mem: &EnableMemory) -> String {
        done_line(mem.point.as_deref())
    }
}

/// An enable's answer: the first point, or none when `unprotect` came first. The
/// scheduler ends the operation with it when it records that point.
pub fn answer(vm: &str, op: &str, point: Option<&str>) -> serde_json::Value {
    let message = match point {
        Some(point) => format!("{vm} is protected: first recovery point {point}"),
        None => format!("replication of {vm} was disabled before its first point"),
    };
    serde_json::json!({
        "vm": vm,
        "operation": op,
        "point": point,
        "message": message,
    })
}

pub fn done_line(point: Option<&str>) -> String {
    match point {
        Some(point) => format!("protected: first recovery point {point}"),
        None => "replication disabled before the first point".into(),
    }
}
