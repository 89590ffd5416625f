//! What the steps of every operation use: agents' clients and their failures, the
//! protection and hosts as they are now, and the protection's one compare-and-set.

use std::time::{Duration, Instant};

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

/// Asks `h`'s agent for its inventory before anything changes: a host that does not
/// answer fails the step for good (`then` says what the operator may do), since nothing
/// was changed yet and the operator decides.
pub async fn must_answer(h: &HostAccess, role: &str, then: &str) -> Result<(), StepError> {
    client(h, Duration::from_secs(30))?
        .inventory()
        .await
        .map(|_| ())
        .map_err(|e| {
            StepError::Permanent(format!(
                "the {role} {} does not answer ({e}); nothing was changed{then}",
                h.host.hostname
            ))
        })
}

/// Waits for a sync of the protection that runs to end (no new one starts while it is
/// moving), at most `limit`; `what` names the move for the error.
pub async fn wait_for_sync(
    ctx: &Ctx,
    protection_id: &str,
    limit: Duration,
    what: &str,
) -> Result<(), StepError> {
    let deadline = Instant::now() + limit;
    while protection(ctx, protection_id).await?.current_sync.is_some() {
        if Instant::now() > deadline {
            return Err(StepError::Permanent(format!(
                "a sync of the VM did not end in time; try the {what} again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Starts `vm` on `h` again (lifting its fence first with `unfence`): the undo of a step
/// that stopped it.
pub async fn start_again(
    ctx: &Ctx,
    h: &HostAccess,
    vm: &str,
    unfence: bool,
) -> Result<(), StepError> {
    ctx.log(format!("starting {vm} again on {}", h.host.hostname))
        .await;
    client(h, Duration::from_secs(180))?
        .start_vm(vm, unfence)
        .await
        .map(|_| ())
        .map_err(|e| agent_failed(format!("starting {vm} again"), e))
}
