//! Leases: a writer says "I am building a point of NAME on top of PARENT" so that prune
//! keeps PARENT and gc keeps what PARENT references while the writer runs
//! (docs/vault-format.md, "Maintenance"). A background task refreshes the lease every
//! minute; a lease not refreshed for `LEASE_TTL` belongs to a dead writer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::format::{lease_key, parse_lease_key, Name, PointId, SessionId};
use crate::store::error::{Result, VaultError};
use crate::store::vault::Vault;

pub const LEASE_REFRESH: Duration = Duration::from_secs(60);
pub const LEASE_TTL: Duration = Duration::from_secs(10 * 60);
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
    key: String,
    refresher: tokio::task::JoinHandle<()>,
    /// When the lease object was last written successfully.
    last_ok: Arc<Mutex<Instant>>,
}

/// Enough of a lease to release it after its writer is gone.
pub struct LeaseHandle {
    backend: Backend,
    key: String,
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
        let key = lease_key(&SessionId::random());
        let body = Bytes::from(serde_json::to_vec(&record).expect("a lease serialises"));
        vault.backend.put(&key, body.clone()).await?;
        let last_ok = Arc::new(Mutex::new(Instant::now()));
        let backend = vault.backend.clone();
        let refresh_key = key.clone();
        let refreshed = last_ok.clone();
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_REFRESH).await;
                let attempt = Instant::now();
                // Rewriting the object moves its last-modified time: that is the refresh.
                match backend.put(&refresh_key, body.clone()).await {
                    Ok(()) => *refreshed.lock().expect("lease clock") = attempt,
                    Err(e) => tracing::warn!("refreshing lease {refresh_key}: {e}"),
                }
            }
        });
        Ok(Lease {
            backend: vault.backend.clone(),
            key,
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
            key: self.key.clone(),
            refresher: self.refresher.abort_handle(),
        }
    }

    pub async fn release(&self) {
        self.handle().release().await
    }
}

impl LeaseHandle {
    pub async fn release(&self) {
        self.refresher.abort();
        if let Err(e) = self.backend.delete(&self.key).await {
            tracing::warn!("removing lease {}: {e} (it expires by itself)", self.key);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// The leases of writers that are still alive (refreshed within `LEASE_TTL`).
pub async fn live_leases(vault: &Vault) -> Result<Vec<LeaseRecord>> {
    let now = Utc::now();
    let mut out = Vec::new();
    for o in vault.backend.list("leases/").await? {
        if parse_lease_key(&o.key).is_none() || o.size as usize > MAX_LEASE_LEN {
            continue;
        }
        let fresh = (now - o.last_modified)
            .to_std()
            .map_or(true, |age| age <= LEASE_TTL);
        if !fresh {
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
