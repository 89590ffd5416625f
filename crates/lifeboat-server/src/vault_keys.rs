//! Vault keys, sealed per host (docs/security.md, "Vault keys"). The server never keeps a
//! vault passphrase: when protection is enabled, the passphrase in the request goes to the
//! VM's agent and the recovery host's, each seals the vault's key to its own sealing key
//! (`lifeboat_agent::sealing`) and returns it, and the server keeps those sealed keys. Every
//! later call to an agent carries the key sealed to that agent, which only it can open.
//!
//! Protections enabled by an earlier version kept the passphrase in the database. The
//! server converts them (`seal_stored_passphrases`) as soon as both agents answer, then
//! forgets the passphrase; until then, calls carry the passphrase as before.

use std::time::Duration;

use lifeboat_agent::sync::VaultAccess;

use crate::db::{Database, DbError, HostAccess, Protection};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the host {host_id} holds no key to {vm}'s vault: disable and enable protection again with the vault's passphrase, so its agent seals the key")]
    Missing { host_id: String, vm: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How the agent of `host_id` opens `p`'s vault.
pub async fn access_for(
    db: &Database,
    p: &Protection,
    host_id: &str,
) -> Result<VaultAccess, KeyError> {
    if let Some(sealed) = db.vault_key(&p.id, host_id).await? {
        return Ok(VaultAccess::sealed(&p.vault_url, &sealed));
    }
    if !p.vault_passphrase.is_empty() {
        // Not converted yet (see the module's comment).
        return Ok(VaultAccess::passphrase(
            &p.vault_url,
            &p.vault_passphrase,
            &p.point_name,
        ));
    }
    Err(KeyError::Missing {
        host_id: host_id.to_string(),
        vm: p.vm.clone(),
    })
}

/// Has both agents of every protection that still holds a passphrase seal the vault's
/// key, then forgets the passphrase. Agents that do not answer are tried next time.
/// Returns how many protections still hold one.
pub async fn seal_stored_passphrases(db: &Database) -> Result<usize, DbError> {
    let orphans = db.delete_orphan_vault_keys().await?;
    if orphans > 0 {
        tracing::info!(orphans, "removed sealed keys of protections that are gone");
    }
    let hosts = db.hosts_with_access().await?;
    let mut left = 0;
    for p in db.protections().await? {
        if p.vault_passphrase.is_empty() {
            continue;
        }
        let mut sealed_both = true;
        for host_id in [&p.host_id, &p.recovery_host_id] {
            let host = hosts.iter().find(|h| &h.host.id == host_id);
            sealed_both &=
                db.vault_key(&p.id, host_id).await?.is_some() || seal_for(db, &p, host).await?;
        }
        if sealed_both {
            db.forget_vault_passphrase(&p.id).await?;
            tracing::info!(vm = %p.vm, "the vault passphrase is forgotten: both agents hold a sealed key");
        } else {
            left += 1;
        }
    }
    Ok(left)
}

/// Has `host`'s agent seal `p`'s vault key to itself, and keeps it; false when it could
/// not (not enrolled any more, not answering, an older agent, the protection gone).
async fn seal_for(
    db: &Database,
    p: &Protection,
    host: Option<&HostAccess>,
) -> Result<bool, DbError> {
    let Some(h) = host else {
        return Ok(false);
    };
    let access = VaultAccess::passphrase(&p.vault_url, &p.vault_passphrase, &p.point_name);
    let checked = match crate::agents::agent_client(h, crate::agents::AGENT_TIMEOUT) {
        Ok(c) => c.check_vault(&access).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match checked.map(|c| c.sealed_key) {
        Ok(Some(sealed)) => {
            db.put_vault_key_of_existing(&p.id, &h.host.id, &sealed)
                .await
        }
        Ok(None) => {
            tracing::warn!(host = %h.host.hostname, "the agent sealed no key (an older agent?); the passphrase is kept");
            Ok(false)
        }
        Err(e) => {
            tracing::info!(vm = %p.vm, host = %h.host.hostname, error = %e, "sealing the vault key later");
            Ok(false)
        }
    }
}

/// Runs `seal_stored_passphrases` now and every few minutes until none is left (no new
/// protection stores a passphrase, so none comes back).
pub async fn run(db: Database) {
    loop {
        match seal_stored_passphrases(&db).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "converting stored vault passphrases"),
        }
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
}
