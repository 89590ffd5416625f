//! Reprotect after a failback as an operation: replication resumes from home, its first
//! sync an incremental on the failback's point. One step: the state change.

use serde::{Deserialize, Serialize};

use super::common::{protection, transition};
use super::{Ctx, Saga, StepError, StepInfo};
use crate::db::{Event, Facts, ProtectionState};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReprotectParams {
    pub protection_id: String,
}

pub struct Reprotect;

const STEPS: &[StepInfo] = &[StepInfo::step("resume-replication")];

impl Saga for Reprotect {
    type Params = ReprotectParams;
    type Memory = ();

    fn steps(_: &ReprotectParams) -> &'static [StepInfo] {
        STEPS
    }

    async fn run(
        ctx: &Ctx,
        params: &ReprotectParams,
        _: &'static str,
        _: &mut (),
    ) -> Result<(), StepError> {
        if protection(ctx, &params.protection_id).await?.state == ProtectionState::FailedBack {
            let facts = Facts {
                sync_now: true,
                ..Facts::default()
            };
            transition(ctx, &params.protection_id, Event::Reprotect, facts).await?;
        }
        Ok(())
    }

    async fn answer(
        ctx: &Ctx,
        params: &ReprotectParams,
        _: &(),
    ) -> Result<serde_json::Value, StepError> {
        let p = protection(ctx, &params.protection_id).await?;
        Ok(serde_json::json!({
            "vm": p.vm,
            "operation": ctx.op,
            "state": p.state,
            "message": format!("replication of {} resumed", p.vm),
        }))
    }

    fn done_line(_: &ReprotectParams, _: &()) -> String {
        "replication resumed".into()
    }
}
