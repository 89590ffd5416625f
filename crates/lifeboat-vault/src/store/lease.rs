//! Leases: a writer says "I am building a point of NAME on top of PARENT" so that prune
//! keeps PARENT and gc keeps what PARENT references while the writer runs
//! (docs/vault-format.md, "Maintenance"). A background task renews the lease every
//! minute; a lease not renewed for `LEASE_TTL` belongs to a dead writer.
//!
//! Writers only create objects, never overwrite or delete one, so a host can write points
//! with an append-only credential (docs/security.md): the lease starts as
//! `leases/<session>/0`, each renewal is the next number, and the end is
//! `leases/<session>/end`. The control plane removes the objects of leases that ended or
//! died (`stale_lease_objects`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ObjectInfo};
use crate::format::{lease_object_key, parse_lease_key, LeaseObject, Name, PointId, SessionId};
use crate::store::error::{Result, VaultError};
use crate::store::vault::Vault;

pub const LEASE_REFRESH: Duration = Duration::from_secs(60);
pub const LEASE_TTL: Duration = Duration::from_secs(10 * 60);
/// Lease objects older than this are removed by the control plane (gc, prune): a live
/// writer renews every minute, so only its newest few objects matter.
pub const STALE_LEASE_AGE: Duration = Duration::from_secs(3 * LEASE_TTL.as_secs());
const MAX_LEASE_LEN: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    pub name: Name,
    pub parent: Option<PointId>,
    pub started: DateTime<Utc>,
    pub host: String,
}

/// A writer stops trusting its lease this long before others may call it dead.
const LEASE_MARGIN: Duration = Duration::from_secs(2 * 60);

pub struct Lease {
    backend: Backend,
    session: SessionId,
    refresher: tokio::task::JoinHandle<()>,
    /// When a renewal was last written successfully.
    last_ok: Arc<Mutex<Instant>>,
}

/// Enough of a lease to end it after its writer is gone.
pub struct LeaseHandle {
    backend: Backend,
    session: SessionId,
    refresher: tokio::task::AbortHandle,
}

impl Lease {
    pub async fn take(vault: &Vault, name: &Name, parent: Option<&PointId>) -> Result<Lease> {
        let record = LeaseRecord {
            name: name.clone(),
            parent: parent.cloned(),
            started: Utc::now(),
            host: hostname(),
        };
        let session = SessionId::random();
        let body = Bytes::from(serde_json::to_vec(&record).expect("a lease serialises"));
        let first = lease_object_key(&session, LeaseObject::Renewal(0));
        if !vault.backend.put_if_absent(&first, body.clone()).await? {
            return Err(VaultError::Usage(format!(
                "lease {first} exists already (a random session id came up twice?); try again"
            )));
        }
        let last_ok = Arc::new(Mutex::new(Instant::now()));
        let backend = vault.backend.clone();
        let refreshed = last_ok.clone();
        let refresher = tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                tokio::time::sleep(LEASE_REFRESH).await;
                let attempt = Instant::now();
                // A new object each time: its creation time is the renewal. A renewal
                // that failed is retried with the same number, which may already exist
                // (the write landed but its answer was lost): that counts as written.
                let key = lease_object_key(&session, LeaseObject::Renewal(n + 1));
                match backend.put_if_absent(&key, body.clone()).await {
                    Ok(_) => {
                        n += 1;
                        *refreshed.lock().expect("lease clock") = attempt;
                    }
                    Err(e) => tracing::warn!("renewing lease {key}: {e}"),
                }
            }
        });
        Ok(Lease {
            backend: vault.backend.clone(),
            session,
            refresher,
            last_ok,
        })
    }

    /// Fails when the lease may have looked dead to others (no successful refresh for
    /// nearly `LEASE_TTL`): prune and gc may then have removed what the writer builds on.
    pub fn check_alive(&self) -> Result<()> {
        let age = self.last_ok.lock().expect("lease clock").elapsed();
        if age + LEASE_MARGIN >= LEASE_TTL {
            return Err(VaultError::Usage(format!(
                "this writer's lease was last refreshed {} s ago (stalled, or the vault was unreachable); \
                 its parent may have been pruned meanwhile, so the point was not committed — write it again",
                age.as_secs()
            )));
        }
        Ok(())
    }

    pub fn handle(&self) -> LeaseHandle {
        LeaseHandle {
            backend: self.backend.clone(),
            session: self.session,
            refresher: self.refresher.abort_handle(),
        }
    }

    pub async fn release(&self) {
        self.handle().release().await
    }
}

impl LeaseHandle {
    /// Ends the lease: writes its `end` object. When that fails, the lease simply
    /// expires after `LEASE_TTL`.
    pub async fn release(&self) {
        self.refresher.abort();
        let key = lease_object_key(&self.session, LeaseObject::End);
        if let Err(e) = self.backend.put_if_absent(&key, Bytes::new()).await {
            tracing::warn!("ending lease {key}: {e} (it expires by itself)");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// The leases of writers that are still alive: not ended, and renewed within `LEASE_TTL`.
pub async fn live_leases(vault: &Vault) -> Result<Vec<LeaseRecord>> {
    let now = Utc::now();
    // Per session: whether it ended, and its newest object.
    let mut sessions: HashMap<SessionId, (bool, Option<ObjectInfo>)> = HashMap::new();
    for o in vault.backend.list("leases/").await? {
        let Some((session, object)) = parse_lease_key(&o.key) else {
            continue;
        };
        let entry = sessions.entry(session).or_default();
        match object {
            LeaseObject::End => entry.0 = true,
            LeaseObject::Whole | LeaseObject::Renewal(_) => {
                if entry
                    .1
                    .as_ref()
                    .is_none_or(|n| o.last_modified > n.last_modified)
                {
                    entry.1 = Some(o);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (ended, newest) in sessions.into_values() {
        let Some(o) = newest.filter(|_| !ended) else {
            continue;
        };
        let fresh = (now - o.last_modified)
            .to_std()
            .map_or(true, |age| age <= LEASE_TTL);
        if !fresh || o.size as usize > MAX_LEASE_LEN {
            continue;
        }
        match vault.backend.get(&o.key).await {
            Ok(bytes) => match serde_json::from_slice::<LeaseRecord>(&bytes) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!("ignoring unreadable lease {}: {e}", o.key),
            },
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Lease objects the control plane may remove: those last written before
/// `STALE_LEASE_AGE` ago. A live writer's newest renewal is at most a minute or two old,
/// so it is never among them; an ended or dead writer's objects all go in time.
pub async fn stale_lease_objects(vault: &Vault, now: DateTime<Utc>) -> Result<Vec<ObjectInfo>> {
    let stale = now - chrono::Duration::from_std(STALE_LEASE_AGE).expect("30 minutes");
    Ok(vault
        .backend
        .list("leases/")
        .await?
        .into_iter()
        .filter(|o| parse_lease_key(&o.key).is_some() && o.last_modified < stale)
        .collect())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
