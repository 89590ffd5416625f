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
//!
//! Others with create rights can add objects under a session too, so nothing a reader
//! trusts can be forged in the direction that lets prune or gc delete: a session ends only
//! by an `end` object holding the secret whose BLAKE3 hash its first renewal committed to
//! (`end_commit`); what the lease protects (name, parent, start) is read from its lowest-
//! numbered renewal (the writer's first, which nobody else can create before it); and a
//! renewal the writer could not create itself does not count as renewed. Forged renewals
//! can only keep a lease alive longer — holding back prune and gc, never making them delete.

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
    /// BLAKE3 (hex) of the secret the writer's `end` object reveals. Leases written by
    /// an earlier version have none, and end only by expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_commit: Option<String>,
}

/// The BLAKE3 hex digest an `end` object's content must have.
fn end_digest(secret: &[u8]) -> String {
    blake3::hash(secret).to_hex().to_string()
}

/// A writer stops trusting its lease this long before others may call it dead.
const LEASE_MARGIN: Duration = Duration::from_secs(2 * 60);

pub struct Lease {
    backend: Backend,
    session: SessionId,
    /// Revealed by the `end` object.
    end_secret: [u8; 32],
    refresher: tokio::task::JoinHandle<()>,
    /// When a renewal was last written successfully.
    last_ok: Arc<Mutex<Instant>>,
}

/// Enough of a lease to end it after its writer is gone.
pub struct LeaseHandle {
    backend: Backend,
    session: SessionId,
    end_secret: [u8; 32],
    refresher: tokio::task::AbortHandle,
}

impl Lease {
    pub async fn take(vault: &Vault, name: &Name, parent: Option<&PointId>) -> Result<Lease> {
        let mut end_secret = [0u8; 32];
        getrandom::fill(&mut end_secret)
            .map_err(|e| VaultError::Usage(format!("no randomness for a lease: {e}")))?;
        let record = LeaseRecord {
            name: name.clone(),
            parent: parent.cloned(),
            started: Utc::now(),
            host: hostname(),
            end_commit: Some(end_digest(&end_secret)),
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
                // A new object each time: its creation time is the renewal. One that
                // exists already was not created now (someone else made it first, or
                // an earlier try of ours landed unanswered): it does not count, and the
                // next try takes the next number.
                let key = lease_object_key(&session, LeaseObject::Renewal(n + 1));
                match backend.put_if_absent(&key, body.clone()).await {
                    Ok(true) => {
                        n += 1;
                        *refreshed.lock().expect("lease clock") = attempt;
                    }
                    Ok(false) => {
                        n += 1;
                        tracing::warn!("renewing lease: {key} exists already; trying the next");
                    }
                    Err(e) => tracing::warn!("renewing lease {key}: {e}"),
                }
            }
        });
        Ok(Lease {
            backend: vault.backend.clone(),
            session,
            end_secret,
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
            end_secret: self.end_secret,
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
        let secret = Bytes::copy_from_slice(&self.end_secret);
        if let Err(e) = self.backend.put_if_absent(&key, secret).await {
            tracing::warn!("ending lease {key}: {e} (it expires by itself)");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// The leases of writers that are still alive: renewed within `LEASE_TTL`, and not ended
/// by an `end` object that reveals the secret their first renewal committed to.
pub async fn live_leases(vault: &Vault) -> Result<Vec<LeaseRecord>> {
    let now = Utc::now();
    #[derive(Default)]
    struct Session {
        /// The lowest-numbered renewal (or the whole object of an earlier version): what
        /// the lease protects is read from it.
        first: Option<(u32, ObjectInfo)>,
        /// When any of its objects was last written.
        newest: Option<DateTime<Utc>>,
        end: Option<ObjectInfo>,
    }
    let mut sessions: HashMap<SessionId, Session> = HashMap::new();
    for o in vault.backend.list("leases/").await? {
        let Some((session, object)) = parse_lease_key(&o.key) else {
            continue;
        };
        let s = sessions.entry(session).or_default();
        let number = match object {
            LeaseObject::End => {
                s.end = Some(o);
                continue;
            }
            LeaseObject::Whole => 0,
            LeaseObject::Renewal(n) => n,
        };
        s.newest = Some(s.newest.map_or(o.last_modified, |t| t.max(o.last_modified)));
        if s.first.as_ref().is_none_or(|(f, _)| number < *f) {
            s.first = Some((number, o));
        }
    }
    let mut out = Vec::new();
    for s in sessions.into_values() {
        let (Some((_, first)), Some(newest)) = (s.first, s.newest) else {
            continue;
        };
        let fresh = (now - newest).to_std().map_or(true, |age| age <= LEASE_TTL);
        if !fresh || first.size as usize > MAX_LEASE_LEN {
            continue;
        }
        let record = match vault.backend.get(&first.key).await {
            Ok(bytes) => match serde_json::from_slice::<LeaseRecord>(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("ignoring unreadable lease {}: {e}", first.key);
                    continue;
                }
            },
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        if let (Some(end), Some(commit)) = (&s.end, &record.end_commit) {
            match vault.backend.get(&end.key).await {
                Ok(secret) if end_digest(&secret) == *commit => continue,
                Ok(_) => tracing::warn!(
                    "lease end {} does not reveal its writer's secret: ignored (put there by someone else?)",
                    end.key
                ),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.push(record);
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
