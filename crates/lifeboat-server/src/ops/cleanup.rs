//! Removing a test copy as an operation: the copy killed and undefined on the recovery
//! host, with its overlays and record, then its row. One step, run again until it is
//! done: there is nothing to undo (the copy was only a test).

use std::time::Duration;

use lifeboat_types::RecoveryState;
use serde::{Deserialize, Serialize};

use super::common::{agent_failed, client, host, protection};
use super::{Ctx, Saga, StepError, StepInfo};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CleanupParams {
    pub protection_id: lifeboat_types::ProtectionId,
    pub recovery_id: lifeboat_types::RecoveryId,
    /// The copy's name on the recovery host.
    pub vm: String,
}

pub struct Cleanup;

pub const STEPS: &[StepInfo] = &[StepInfo::step("remove-copy")];

impl Saga for Cleanup {
    type Params = CleanupParams;
    type Memory = ();

    fn steps(_: &CleanupParams) -> &'static [StepInfo] {
        STEPS
    }

    async fn run(
        ctx: &Ctx,
        params: &CleanupParams,
        _: &'static str,
        _: &mut (),
    ) -> Result<(), StepError> {
        let Some(rec) = ctx.db.recovery(&params.recovery_id).await? else {
            return Ok(()); // removed already
        };
        let from = [
            RecoveryState::Starting,
            RecoveryState::Running,
            RecoveryState::Failed,
            RecoveryState::Fenced,
        ];
        ctx.db
            .move_recovery(&rec.id, &from, RecoveryState::Removing)
            .await?;
        let rhost = host(ctx, &rec.host_id, "recovery host").await?;
        ctx.log(format!("removing {} from {}", rec.vm, rhost.host.hostname))
            .await;
        client(&rhost, Duration::from_secs(180))?
            .remove_recovery(&rec.id)
            .await
            .map_err(|e| {
                agent_failed(
                    format!("removing {} from {}", rec.vm, rhost.host.hostname),
                    e,
                )
            })?;
        ctx.db.delete_recovery(&rec.id).await?;
        Ok(())
    }

    async fn answer(
        ctx: &Ctx,
        params: &CleanupParams,
        _: &(),
    ) -> Result<serde_json::Value, StepError> {
        let p = protection(ctx, &params.protection_id).await?;
        Ok(serde_json::json!({ "vm": p.vm, "operation": ctx.op, "removed": params.vm }))
    }

    fn done_line(params: &CleanupParams, _: &()) -> String {
        format!("{} removed", params.vm)
    }
}
