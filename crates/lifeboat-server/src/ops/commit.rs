//! Committing a failover as an operation: the VM on the recovery host is the VM now. One
//! step that only records it.

use serde::{Deserialize, Serialize};

use lifeboat_types::RecoveryState;

use super::common::protection;
use super::{Ctx, Saga, StepError, StepInfo};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitParams {
    pub protection_id: lifeboat_types::ProtectionId,
    pub recovery_id: lifeboat_types::RecoveryId,
}

pub struct Commit;

pub const STEPS: &[StepInfo] = &[StepInfo::step("record-commit")];

impl Saga for Commit {
    type Params = CommitParams;
    type Memory = ();

    fn steps(_: &CommitParams) -> &'static [StepInfo] {
        STEPS
    }

    async fn run(
        ctx: &Ctx,
        params: &CommitParams,
        _: &'static str,
        _: &mut (),
    ) -> Result<(), StepError> {
        let rec = ctx.db.recovery(&params.recovery_id).await?.ok_or_else(|| {
            StepError::Permanent("the VM on the recovery host is no longer recorded".into())
        })?;
        if rec.state != RecoveryState::Committed {
            let from = [RecoveryState::Running, RecoveryState::Starting];
            if !ctx
                .db
                .move_recovery(&rec.id, &from, RecoveryState::Committed)
                .await?
            {
                return Err(StepError::Permanent(format!(
                    "{} is {} on the recovery host, not running: nothing to commit",
                    rec.vm, rec.state
                )));
            }
        }
        Ok(())
    }

    async fn answer(
        ctx: &Ctx,
        params: &CommitParams,
        _: &(),
    ) -> Result<serde_json::Value, StepError> {
        let p = protection(ctx, &params.protection_id).await?;
        Ok(serde_json::json!({
            "vm": p.vm,
            "operation": ctx.op,
            "state": p.state,
            "message": format!(
                "the failover of {} is committed: it runs on the recovery host as the VM now; `lifeboat failback {}` brings it home",
                p.vm, p.vm
            ),
        }))
    }

    fn done_line(_: &CommitParams, _: &()) -> String {
        "the failover is committed".into()
    }
}
