//! Unprotect as an operation: replication stops, the agent drops the VM's change
//! tracking, the points are deleted if asked, and the protection goes.
//!
//! | step | undo |
//! |---|---|
//! | `mark-disabling` | replication goes on (`protected`, or the initial sync) |
//! | `stop-tracking` | — (tracking may be gone: the next sync is then a resync) |
//! | `delete-points` (point of no return; only when asked) | — |
//! | `remove-protection` | — |
//!
//! `disabling` first, so the scheduler starts no sync while the agent stops tracking (a
//! sync started then would add the bitmaps back). The state machine refuses it for a VM
//! that runs on its recovery host or that a move holds.

use std::time::Duration;

use lifeboat_agent::api::UnprotectRequest;
use lifeboat_agent::sync::SyncState;
use serde::{Deserialize, Serialize};

use super::common::{agent_failed, client, host, transition};
use super::{Ctx, Saga, StepError, StepInfo};
use crate::db::{Event, Facts, ProtectionState};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnprotectParams {
    pub protection_id: lifeboat_types::ProtectionId,
    /// Also delete the VM's recovery points from the vault.
    pub delete_points: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UnprotectMemory {
    /// The protection as it was (for the answer once its row is gone).
    pub vm: String,
    pub had_point: bool,
    pub tracking_removed: bool,
    pub points_deleted: u64,
    pub note: Option<String>,
}

pub struct Unprotect;

/// What an unprotect did: its operation's `result`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Unprotected {
    pub vm: String,
    pub operation: String,
    pub tracking_removed: bool,
    pub points_deleted: u64,
    pub note: Option<String>,
}

pub const STEPS: &[StepInfo] = &[
    StepInfo::with_undo("mark-disabling"),
    StepInfo::step("stop-tracking"),
    StepInfo::step("delete-points").no_return(),
    StepInfo::step("remove-protection"),
];

/// How long the agent may take to stop tracking (it may wait on a frozen guest).
const STOP_TIMEOUT: Duration = Duration::from_secs(300);

fn add_note(mem: &mut UnprotectMemory, note: String) {
    mem.note = Some(match mem.note.take() {
        Some(n) => format!("{n}; {note}"),
        None => note,
    });
}

impl Saga for Unprotect {
    type Params = UnprotectParams;
    type Memory = UnprotectMemory;

    fn steps(_: &UnprotectParams) -> &'static [StepInfo] {
        STEPS
    }

    async fn run(
        ctx: &Ctx,
        params: &UnprotectParams,
        step: &'static str,
        mem: &mut UnprotectMemory,
    ) -> Result<(), StepError> {
        let Some(p) = ctx.db.protection(&params.protection_id).await? else {
            // Gone already: a run of this step before a restart removed it.
            return Ok(());
        };
        match step {
            "mark-disabling" => {
                mem.vm = p.vm.clone();
                mem.had_point = p.last_point.is_some();
                if p.state != ProtectionState::Disabling {
                    transition(ctx, &p.id, Event::Disable, Facts::reason("unprotect")).await?;
                }
                Ok(())
            }
            "stop-tracking" => {
                let home = host(ctx, &p.host_id, "host").await?;
                let agent = client(&home, STOP_TIMEOUT)?;
                let req = UnprotectRequest {
                    point_name: p.point_name.clone(),
                    delete_points: false,
                };
                let failed =
                    |e| agent_failed(format!("stopping tracking on {}", home.host.hostname), e);
                let mut report = agent.unprotect(&p.vm, &req).await.map_err(failed)?;
                // A sync asked for just before `disabling` may have reached the agent
                // after it stopped: if it runs, stop it again.
                if let Some(sync) = &p.current_sync {
                    if let Ok(st) = agent.sync_status(sync).await {
                        if matches!(st.state, SyncState::Running { .. }) {
                            report = agent.unprotect(&p.vm, &req).await.map_err(failed)?;
                        }
                    }
                }
                mem.tracking_removed = report.tracking_removed;
                if let Some(n) = report.note {
                    add_note(mem, n);
                }
                Ok(())
            }
            "delete-points" => {
                if !params.delete_points {
                    return Ok(());
                }
                // The server deletes points, with its own storage credentials: agents
                // only add. A failure keeps them, said in the answer.
                match crate::retention::delete_all(&p.vault_url, &p.point_name).await {
                    Ok(n) => {
                        mem.points_deleted = n;
                        ctx.log(format!("{n} recovery point(s) deleted")).await;
                    }
                    Err(e) => add_note(
                        mem,
                        format!(
                            "the points were kept: {e} (the server deletes points with storage \
                             credentials of its own that may delete; see docs/security.md)"
                        ),
                    ),
                }
                Ok(())
            }
            "remove-protection" => {
                // Whatever the scheduler wrote meanwhile (a sync's end), the row goes.
                let mut now = p;
                while !ctx.db.delete_protection(&now.id, now.generation).await? {
                    match ctx.db.protection(&now.id).await? {
                        Some(again) => now = again,
                        None => break,
                    }
                }
                tracing::info!(vm = %mem.vm, deleted_points = mem.points_deleted, "protection disabled");
                Ok(())
            }
            other => Err(StepError::Permanent(format!("no step {other}"))),
        }
    }

    async fn undo(
        ctx: &Ctx,
        params: &UnprotectParams,
        step: &'static str,
        mem: &mut UnprotectMemory,
    ) -> Result<(), StepError> {
        if step == "mark-disabling" {
            if let Some(p) = ctx.db.protection(&params.protection_id).await? {
                if p.state == ProtectionState::Disabling {
                    let undone = Event::DisableUndone {
                        has_point: p.last_point.is_some() || mem.had_point,
                    };
                    let why = "unprotect failed; replication goes on — try again";
                    transition(ctx, &p.id, undone, Facts::reason(why)).await?;
                }
            }
        }
        Ok(())
    }

    async fn answer(
        ctx: &Ctx,
        _: &UnprotectParams,
        mem: &UnprotectMemory,
    ) -> Result<serde_json::Value, StepError> {
        let done = Unprotected {
            vm: mem.vm.clone(),
            operation: ctx.op.to_string(),
            tracking_removed: mem.tracking_removed,
            points_deleted: mem.points_deleted,
            note: mem.note.clone(),
        };
        serde_json::to_value(done).map_err(|e| StepError::Permanent(e.to_string()))
    }

    fn done_line(_: &UnprotectParams, mem: &UnprotectMemory) -> String {
        format!(
            "replication disabled; tracking {}",
            if mem.tracking_removed {
                "removed"
            } else {
                "left in place"
            }
        )
    }
}
