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

/// Rounds of trying a DNS server that does not answer, after the move (each round is the
/// DNS client's own tries), before the switch is left to the operator.
const DNS_ROUNDS: u32 = 3;

/// Points the VM's DNS record (if it has one) at its addresses after a move of `kind`
/// (docs/networking.md). The VM already runs at its new site: a switch that fails does
/// not undo the move; the log says why and how to finish it by hand.
pub async fn switch_dns(
    ctx: &Ctx,
    p: &Protection,
    kind: lifeboat_types::MoveKind,
) -> Result<(), StepError> {
    let settings = match crate::network::settings(p) {
        Ok(s) => s,
        Err(e) => {
            ctx.log(format!("DNS switch FAILED: {e}")).await;
            return Ok(());
        }
    };
    let Some(record) = &settings.dns else {
        return Ok(());
    };
    let addresses = settings.dns_addresses(kind);
    let mut round = 1;
    loop {
        match crate::dns_switch::switch(record, &addresses).await {
            Ok(update) => {
                ctx.log(crate::dns_switch::moved_line(record, &update))
                    .await;
                return Ok(());
            }
            Err(e) if !e.is_settings() && round < DNS_ROUNDS => {
                ctx.log(format!("DNS switch of {}: {e}; trying again", record.name))
                    .await;
                round += 1;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => {
                ctx.log(format!(
                    "DNS switch FAILED: {e}. {} runs at its new site, but clients asking for {} still get the old address. Finish it by hand on a machine that reaches the DNS server:\n{}",
                    p.vm,
                    record.name,
                    crate::dns_switch::by_hand(record, &addresses)
                ))
                .await;
                return Ok(());
            }
        }
    }
}

/// Before a move changes anything: the VM's DNS record can be switched — its server
/// answers, knows the key and holds the zone. A refusal stops the move; a server that
/// does not answer stops a planned move (`must_reach`) and is only said for an unplanned
/// one (its site may be the one lost).
pub async fn check_dns(ctx: &Ctx, p: &Protection, must_reach: bool) -> Result<(), StepError> {
    let settings = crate::network::settings(p)
        .map_err(|e| StepError::Permanent(format!("{e}; {} was not touched", p.vm)))?;
    let Some(record) = &settings.dns else {
        return Ok(());
    };
    match crate::dns_switch::check(record).await {
        Ok((now, ttl)) => {
            let now: Vec<String> = now.iter().map(|a| a.to_string()).collect();
            ctx.log(format!(
                "DNS {} answers {} (TTL {}) on {}; it is switched once {} runs at its new site",
                record.name,
                if now.is_empty() { "nothing".into() } else { now.join(", ") },
                ttl.map_or("-".to_string(), |t| format!("{t} s")),
                record.server,
                p.vm
            ))
            .await;
            Ok(())
        }
        Err(e) if e.is_settings() || must_reach => Err(StepError::Permanent(format!(
            "{e}; {} was not touched (fix the DNS settings, or remove the record with `lifeboat network {} --no-dns` to move without switching it)",
            p.vm, p.vm
        ))),
        Err(e) => {
            ctx.log(format!(
                "DNS server of {} does not answer ({e}); the switch is tried after {} starts",
                record.name, p.vm
            ))
            .await;
            Ok(())
        }
    }
}
