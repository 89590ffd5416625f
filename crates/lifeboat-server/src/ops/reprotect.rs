//! Reprotect as an operation, after either kind of move:
//! - after a failback, replication resumes from home, its first sync an incremental on
//!   the failback's point: one step, the state change;
//! - after a committed failover (reversed protection), the VM is protected where it runs
//!   now, into the same vault, with home (fenced) as its recovery host. The recovery VM
//!   was tracked from its first boot on the failover's point, so its first point is an
//!   incremental over that point: only what the guest wrote at the recovery site.
//!
//! | step (reversed) | undo |
//! |---|---|
//! | `check-hosts` | — (the recovery host must answer; nothing changed yet) |
//! | `mark-reprotecting` | back to `failed_over` |
//! | `first-point` (point of no return) | — (a point in the vault is a good point) |
//! | `record` | — (retried: nothing leads back from `protected_reversed` but a failback) |

use std::time::{Duration, Instant};

use lifeboat_agent::client::ClientError;
use lifeboat_agent::sync::{SyncRequest, SyncState};
use serde::{Deserialize, Serialize};

use super::common::{agent_failed, client, host, must_answer, protection, transition, vault};
use super::{Ctx, Saga, StepError, StepInfo};
use crate::db::{Event, Facts, ProtectionState};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReprotectParams {
    pub protection_id: lifeboat_types::ProtectionId,
    /// The committed recovery to protect where it runs (reversed); none after a failback.
    #[serde(default)]
    pub recovery_id: Option<lifeboat_types::RecoveryId>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReprotectMemory {
    /// The first reversed point: id, kind (`incremental` when tracking held), bytes sent.
    pub point: Option<(String, String, u64)>,
}

pub struct Reprotect;

pub const FROM_HOME: &[StepInfo] = &[StepInfo::step("resume-replication")];

pub const REVERSED: &[StepInfo] = &[
    StepInfo::step("check-hosts"),
    StepInfo::with_undo("mark-reprotecting"),
    // Past the first point the reprotect goes forward: `record` cannot be undone (no
    // event leads from `protected_reversed` back to `failed_over`), so a failure there
    // must be retried, never reported undone.
    StepInfo::step("first-point").no_return(),
    StepInfo::step("record"),
];

/// How long the first reversed point may take (an incremental; a resync reads the disks).
const FIRST_POINT: Duration = Duration::from_secs(1800);

impl Saga for Reprotect {
    type Params = ReprotectParams;
    type Memory = ReprotectMemory;

    fn steps(params: &ReprotectParams) -> &'static [StepInfo] {
        if params.recovery_id.is_some() {
            REVERSED
        } else {
            FROM_HOME
        }
    }

    async fn run(
        ctx: &Ctx,
        params: &ReprotectParams,
        step: &'static str,
        mem: &mut ReprotectMemory,
    ) -> Result<(), StepError> {
        let p = protection(ctx, &params.protection_id).await?;
        let Some(rec_id) = &params.recovery_id else {
            if p.state == ProtectionState::FailedBack {
                let facts = Facts {
                    sync_now: true,
                    ..Facts::default()
                };
                transition(ctx, &p.id, Event::Reprotect, facts).await?;
            }
            return Ok(());
        };
        let rec = ctx.db.recovery(rec_id).await?.ok_or_else(|| {
            StepError::Permanent("the VM on the recovery host is no longer recorded".into())
        })?;
        let away = host(ctx, &rec.host_id, "recovery host").await?;
        match step {
            "check-hosts" => {
                vault(ctx, &p, &away).await?;
                must_answer(&away, "recovery host", "").await
            }
            "mark-reprotecting" => {
                if p.state != ProtectionState::Reprotecting {
                    let why = format!(
                        "taking the first point of {} on {}",
                        rec.vm, away.host.hostname
                    );
                    transition(ctx, &p.id, Event::Reprotect, Facts::reason(why)).await?;
                }
                Ok(())
            }
            "first-point" => {
                // Started once per operation (the agent knows a sync by its id), so a
                // step run again, or after a restart of the server, follows the same sync.
                let req = SyncRequest {
                    sync_id: format!("{}-reversed", ctx.op),
                    vault: vault(ctx, &p, &away).await?,
                    point_name: p.point_name.clone(),
                    app_consistent: false,
                };
                let agent = client(&away, Duration::from_secs(60))?;
                ctx.log(format!(
                    "first point of {} where it runs now, on {}",
                    rec.vm, away.host.hostname
                ))
                .await;
                let deadline = Instant::now() + FIRST_POINT;
                let mut status = agent
                    .start_sync(&rec.vm, &req)
                    .await
                    .map_err(|e| agent_failed("starting the first reversed sync".into(), e))?;
                let result = loop {
                    match status.state {
                        SyncState::Committed(r) => break r,
                        SyncState::Failed { error } => {
                            return Err(StepError::Transient(format!(
                                "the first reversed sync failed: {error}"
                            )))
                        }
                        SyncState::Running { .. } => {}
                    }
                    if Instant::now() > deadline {
                        return Err(StepError::Permanent(format!(
                            "the first reversed sync did not end in {} s",
                            FIRST_POINT.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    status = match agent.sync_status(&req.sync_id).await {
                        Ok(s) => s,
                        // The agent restarted and forgot it: the step runs again.
                        Err(ClientError::Refused { status: 404, .. }) => {
                            return Err(StepError::Transient(
                                "the recovery host's agent restarted during the first sync".into(),
                            ))
                        }
                        Err(e) => return Err(agent_failed("following the first sync".into(), e)),
                    };
                };
                crate::failover::record_final_point(&ctx.db, &p.id, &result)
                    .await
                    .map_err(|e| StepError::Transient(e.to_string()))?;
                let kind = serde_json::to_value(result.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                ctx.log(format!(
                    "first reversed point {}: {kind}, {} byte(s) read, {} sent{}",
                    result.point,
                    result.bytes_read,
                    result.new_bytes_stored,
                    result
                        .note
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ))
                .await;
                mem.point = Some((result.point, kind, result.new_bytes_stored));
                Ok(())
            }
            "record" => {
                if p.state == ProtectionState::Reprotecting {
                    let why = format!(
                        "runs on {} and is replicated from there; home is its recovery host",
                        away.host.hostname
                    );
                    let facts = Facts {
                        sync_now: true,
                        ..Facts::reason(why)
                    };
                    transition(ctx, &p.id, Event::Reprotected, facts).await?;
                }
                Ok(())
            }
            other => Err(StepError::Permanent(format!("no step {other}"))),
        }
    }

    async fn undo(
        ctx: &Ctx,
        params: &ReprotectParams,
        step: &'static str,
        _: &mut ReprotectMemory,
    ) -> Result<(), StepError> {
        if step == "mark-reprotecting" {
            let p = protection(ctx, &params.protection_id).await?;
            if p.state == ProtectionState::Reprotecting {
                let why = "failed over (a reprotect was undone)";
                transition(ctx, &p.id, Event::ReprotectUndone, Facts::reason(why)).await?;
            }
        }
        Ok(())
    }

    async fn answer(
        ctx: &Ctx,
        params: &ReprotectParams,
        mem: &ReprotectMemory,
    ) -> Result<serde_json::Value, StepError> {
        let p = protection(ctx, &params.protection_id).await?;
        let message = match &mem.point {
            Some((point, kind, sent)) => format!(
                "{} is protected where it runs now; first point {point} ({kind}, {sent} byte(s) sent)",
                p.vm
            ),
            None => format!("replication of {} resumed", p.vm),
        };
        Ok(serde_json::json!({
            "vm": p.vm,
            "operation": ctx.op,
            "state": p.state,
            "point": mem.point.as_ref().map(|x| x.0.clone()),
            "message": message,
        }))
    }

    fn done_line(_: &ReprotectParams, mem: &ReprotectMemory) -> String {
        match &mem.point {
            Some((point, ..)) => format!("protected where it runs now, first point {point}"),
            None => "replication resumed".into(),
        }
    }
}
