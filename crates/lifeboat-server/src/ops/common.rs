//! What the steps of every operation use: agents' clients and their failures, the
//! protection and hosts as they are now, and the protection's one compare-and-set.

use std::time::Duration;

use lifeboat_agent::client::{AgentClient, ClientError};

use super::{Ctx, StepError};
use crate::db::{Event, Facts, HostAccess, Protection, ProtectionState};

/// A failed call to an agent: refused (4xx) is permanent, anything else may pass.
pub fn agent_failed(what: String, e: ClientError) -> StepError {
    match e {
        ClientError::Refused { status, .. } if (400..500).contains(&status) => {
            StepError::Permanent(format!("{what}: {e}"))
        }
        e => StepError::Transient(format!("{what}: {e}")),
    }
}

pub fn client(h: &HostAccess, timeout: Duration) -> Result<AgentClient, StepError> {
    crate::agents::agent_client(h, timeout).map_err(|e| StepError::Permanent(e.to_string()))
}

pub async fn protection(ctx: &Ctx, id: &str) -> Result<Protection, StepError> {
    ctx.db
        .protection(id)
        .await?
        .ok_or_else(|| StepError::Permanent("the protection is gone".into()))
}

pub async fn host(ctx: &Ctx, id: &str, role: &str) -> Result<HostAccess, StepError> {
    ctx.db
        .host_access(id)
        .await?
        .ok_or_else(|| StepError::Permanent(format!("the VM's {role} is no longer enrolled")))
}

/// The protection moved by `event` from the state it has now, if that allows it.
pub async fn transition(
    ctx: &Ctx,
    protection_id: &str,
    event: Event,
    facts: Facts,
) -> Result<ProtectionState, StepError> {
    ctx.db
        .apply_event(protection_id, event, &facts)
        .await
        .map_err(|e| match e {
            crate::db::TransitionError::Db(e) => e.into(),
            refused => StepError::Permanent(refused.to_string()),
        })
}

/// How `h`'s agent opens `p`'s vault (the key sealed to it); a missing key is for good.
pub async fn vault(
    ctx: &Ctx,
    p: &Protection,
    h: &HostAccess,
) -> Result<lifeboat_agent::sync::VaultAccess, StepError> {
    crate::vault_keys::access_for(&ctx.db, p, &h.host.id)
        .await
        .map_err(|e| StepError::Permanent(e.to_string()))
}
