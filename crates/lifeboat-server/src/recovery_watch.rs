//! Follows the VMs running on recovery hosts: their state and hydration, as their agents
//! report them, into the `recoveries` rows.
//!
//! For a VM still hydrating, the watcher repeats the request that brought it up: the agent
//! treats it as "make sure this point is served", so an agent that restarted serves the
//! point again and the VM's reads go on (QEMU waits for the NBD server to return).

use std::collections::HashMap;
use std::time::Duration;

use lifeboat_agent::handover::FenceRequest;
use lifeboat_agent::recovery::RecoveryRequest;
use lifeboat_types::RecoveryState;

use crate::db::{Database, DbError, HostAccess, Recovery};
use crate::failover::apply_status;

const PERIOD: Duration = Duration::from_secs(2);
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(db: Database) {
    loop {
        if let Err(e) = watch_all(&db).await {
            tracing::warn!(error = %e, "watching recoveries");
        }
        tokio::time::sleep(PERIOD).await;
    }
}

/// One round: every recovery host asked at once, each about its own VMs in turn, with a
/// time limit per host, so a host that does not answer holds up only its own VMs.
async fn watch_all(db: &Database) -> Result<(), DbError> {
    let hosts = db.hosts_with_access().await?;
    let mut by_host: HashMap<String, Vec<Recovery>> = HashMap::new();
    for rec in db.recoveries().await? {
        if matches!(
            rec.state,
            RecoveryState::Running | RecoveryState::Committed | RecoveryState::Fencing
        ) {
            by_host
                .entry(rec.host_id.to_string())
                .or_default()
                .push(rec);
        }
    }
    let rounds = by_host.into_iter().filter_map(|(host_id, recs)| {
        let host = hosts.iter().find(|h| h.host.id == host_id)?.clone();
        Some(async move {
            let limit = AGENT_TIMEOUT + PERIOD;
            match tokio::time::timeout(limit, watch_host(db, &host, recs)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(host = %host.host.hostname, "recovery host did not answer in {limit:?}");
                    Ok(())
                }
            }
        })
    });
    for r in futures::future::join_all(rounds).await {
        r?;
    }
    Ok(())
}

/// Asks `host` about each of its recovered VMs and records what it says.
async fn watch_host(db: &Database, host: &HostAccess, recs: Vec<Recovery>) -> Result<(), DbError> {
    let client = match crate::agents::agent_client(host, AGENT_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "agent client");
            return Ok(());
        }
    };
    for mut rec in recs {
        if rec.state == RecoveryState::Fencing {
            fence(db, host, &client, &rec).await?;
            continue;
        }
        let mut no_key = None;
        let status = if rec.hydrated {
            client.recovery_status(&rec.id).await
        } else {
            match resume_request(db, &rec).await {
                Ok(Some(req)) => client.ensure_recovery(&req).await,
                Ok(None) => client.recovery_status(&rec.id).await,
                Err(crate::vault_keys::KeyError::Db(e)) => return Err(e),
                Err(e) => {
                    no_key = Some(e.to_string());
                    client.recovery_status(&rec.id).await
                }
            }
        };
        match status {
            Ok(st) => apply_status(&mut rec, &st),
            Err(e) => {
                rec.vm_state = "unknown".into();
                rec.error = format!("recovery host {} did not answer: {e}", host.host.hostname);
            }
        }
        if let Some(why) = no_key {
            // Its point cannot be served again after an agent restart: say so.
            rec.error = format!("the point cannot be served again: {why}");
        }
        db.record_observation(&rec).await?;
    }
    Ok(())
}

/// Fences a recovery VM whose VM came home without it (an unplanned failback while its
/// host did not answer): killed if it runs, and it cannot start. Its disks stay.
async fn fence(
    db: &Database,
    host: &HostAccess,
    client: &lifeboat_agent::client::AgentClient,
    rec: &Recovery,
) -> Result<(), DbError> {
    let why = FenceRequest {
        reason: "its VM came home in an unplanned failback while this host was lost; kept, fenced"
            .into(),
    };
    match client.fence(&rec.vm, &why).await {
        Ok(r) => {
            tracing::warn!(vm = %rec.vm, host = %host.host.hostname, killed = r.killed, "recovery VM fenced on its host's return");
            db.move_recovery(&rec.id, &[RecoveryState::Fencing], RecoveryState::Fenced)
                .await?;
        }
        Err(e) => tracing::debug!(vm = %rec.vm, error = %e, "recovery VM not fenced yet"),
    }
    Ok(())
}

/// The request that brought `rec` up, to send again; `None` when its protection is gone
/// (the vault's key went with it); an error when its host holds no key.
async fn resume_request(
    db: &Database,
    rec: &Recovery,
) -> Result<Option<RecoveryRequest>, crate::vault_keys::KeyError> {
    let Some(p) = db.protection(&rec.protection_id).await? else {
        return Ok(None);
    };
    let kind = rec.kind;
    let vault = crate::vault_keys::access_for(db, &p, &rec.host_id).await?;
    Ok(Some(RecoveryRequest {
        recovery_id: rec.id.to_string(),
        vault,
        point: rec.point.clone(),
        vm: rec.vm.clone(),
        kind,
        resume_only: true,
        network_map: Default::default(), // only read when bringing a VM up
        expose: Vec::new(),
        guest_network: Vec::new(), // the seed was written when it was brought up
        job_id: None,              // resuming is quick: answered in the request
    }))
}
