//! `gc`: deletes packs no point needs (docs/vault-format.md, "Maintenance"). Plan, then
//! execute, like restic's prune:
//!
//! - **mark**: every manifest is read, every distinct index page fetched once; each page
//!   blob and each chunk its entries name is a referenced `(pack, offset)`. If any
//!   manifest or page cannot be read, the plan is *blocked*: it says what could not be
//!   read and deletes nothing, since an unreadable page may be the only reference to a
//!   pack.
//! - **sweep**: a listed pack with no referenced blob is deleted when it is older than the
//!   cutoff. Lease objects not refreshed for `3 × LEASE_TTL` are deleted too.
//!
//! Why this is safe while writers run:
//! - A writer's packs exist before its manifest does. They are younger than the grace
//!   period (default 24 h); the cutoff also moves back to the start of the oldest live
//!   writer, so a writer that runs longer than the grace keeps its packs.
//! - A writer refers to its parent's chunks. The parent's manifest is marked like any
//!   other; the parent named by a live lease must exist, else the plan is blocked (the
//!   parent was pruned under a running writer, which may still commit references to it).
//! - Leases are listed before and after the manifests. A writer takes its lease before it
//!   reads its parent's manifest, so a parent pruned before our manifest listing shows up
//!   in the second lease listing as a live lease on a missing parent, which blocks the
//!   plan. A long-running writer that commits and drops its lease between two listings is
//!   still seen in the first one, so the cutoff still moves back to its start (less a
//!   margin for clock skew between writer and storage).
//! - A writer that stalls past its lease's lifetime refuses to commit
//!   (`Lease::check_alive`), and checks that its parent still exists just before.
//!
//! Partly dead packs (some blobs referenced, some not) are reported with their dead bytes,
//! read from the trailers of referenced packs; repacking them is later work.
//!
//! Not swept: the folder backend's half-written temporary files (`<key>#<n>`, left by a
//! `kill -9` during a put). `object_store`'s folder listing hides them and a vault key
//! may not hold `#`, so gc can neither see nor delete them through the `Backend`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::backend::ObjectInfo;
use crate::format::{
    self, pack_key, parse_pack_key, trailer_len_from_footer, Name, PackId, PointId,
};
use crate::store::error::{Result, VaultError};
use crate::store::lease::{live_leases, stale_lease_objects};
use crate::store::vault::{PointRef, Vault};
use crate::store::verify::{
    fault_of, fetch_page, page_names, page_uses, read_manifests, PageLoc, IN_FLIGHT,
};

pub use crate::store::lease::STALE_LEASE_AGE;

/// An object that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub object: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadObject {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// A referenced pack that also holds blobs nothing references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartlyDeadPack {
    pub pack: PackId,
    pub size: u64,
    pub blobs: u64,
    pub dead_blobs: u64,
    pub dead_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcPlan {
    pub now: DateTime<Utc>,
    pub grace_secs: u64,
    /// Unreferenced packs last modified before this are deleted.
    pub cutoff: DateTime<Utc>,
    /// Manifests and pages that could not be read. Not empty: the plan deletes nothing.
    pub unreadable: Vec<Unreadable>,
    pub points: u64,
    pub pages: u64,
    /// Distinct `(pack, offset)` blobs referenced.
    pub blobs_referenced: u64,
    pub packs_listed: u64,
    pub packs_referenced: u64,
    /// Unreferenced, but younger than the cutoff (writers at work, or recent crashes).
    pub packs_young: u64,
    pub delete_packs: Vec<DeadObject>,
    pub delete_leases: Vec<DeadObject>,
    /// Referenced by some page but not in the listing: damage; run verify.
    pub missing_packs: Vec<PackId>,
    pub partly_dead: Vec<PartlyDeadPack>,
    /// Trailers of referenced packs that could not be read (waste unknown; not blocking).
    pub trailer_problems: Vec<Unreadable>,
    /// Keys under `packs/` that are not packs; left alone.
    pub foreign: Vec<String>,
}

impl GcPlan {
    pub fn is_blocked(&self) -> bool {
        !self.unreadable.is_empty()
    }

    pub fn bytes_to_free(&self) -> u64 {
        self.delete_packs.iter().map(|p| p.size).sum()
    }

    pub fn waste_bytes(&self) -> u64 {
        self.partly_dead.iter().map(|p| p.dead_bytes).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub blocked: bool,
    pub packs_kept: u64,
    pub packs_deleted: u64,
    pub bytes_freed: u64,
    pub leases_deleted: u64,
    /// Dead bytes left inside partly dead packs.
    pub waste_bytes: u64,
    pub plan: GcPlan,
}

/// Plans (and unless `dry_run`, carries out) a gc with this grace period.
pub async fn gc(vault: &Vault, grace: Duration, dry_run: bool) -> Result<GcReport> {
    let plan = plan_gc(vault, grace).await?;
    if dry_run {
        return Ok(report(plan, true, 0, 0, 0));
    }
    execute_gc(vault, plan).await
}

fn report(plan: GcPlan, dry_run: bool, deleted: u64, freed: u64, leases: u64) -> GcReport {
    GcReport {
        dry_run,
        blocked: plan.is_blocked(),
        packs_kept: plan.packs_listed - deleted,
        packs_deleted: deleted,
        bytes_freed: freed,
        leases_deleted: leases,
        waste_bytes: plan.waste_bytes(),
        plan,
    }
}

/// How far a writer's clock may be off the storage's.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Marks and decides; deletes nothing.
pub async fn plan_gc(vault: &Vault, grace: Duration) -> Result<GcPlan> {
    let now = Utc::now();
    // Leases, then manifests, then leases again: see the module doc.
    let mut leases = live_leases(vault).await?;
    let points = vault.list_points(None).await?;
    leases.extend(live_leases(vault).await?);
    let mut unreadable = Vec::new();

    let mut cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::TimeDelta::MAX);
    for l in &leases {
        // `started` is the writer's clock, pack times are the storage's: allow for skew.
        cutoff = cutoff.min(l.started - chrono::Duration::from_std(CLOCK_SKEW).expect("small"));
    }

    let known: HashSet<PointId> = points.iter().map(|p| p.point).collect();
    for l in &leases {
        if let Some(parent) = l.parent.filter(|p| !known.contains(p)) {
            unreadable.push(Unreadable {
                object: format!("parent {parent} of a live writer of {}", l.name),
                reason: "the point is gone while a writer builds on it; gc waits until \
                         that writer ends"
                    .into(),
            });
        }
    }

    let mut manifests = Vec::with_capacity(points.len());
    let mut results = read_manifests(vault, &points);
    while let Some((i, r)) = results.next().await {
        match r {
            Ok(m) => manifests.push((i, m)),
            Err(e) => {
                if fault_of(&e).is_none() {
                    return Err(e);
                }
                unreadable.push(Unreadable {
                    object: object_of(&points[i]),
                    reason: e.to_string(),
                });
            }
        }
    }
    drop(results);

    let uses = page_uses(manifests.iter().map(|(i, m)| (*i, m)));
    let names = page_names(manifests.iter().map(|(_, m)| m));
    let names = &names;
    let mut marked: HashMap<PackId, HashSet<u32>> = HashMap::new();
    // Whose keys open each referenced pack's trailer (a pack holds one name's blobs).
    let mut pack_names: HashMap<PackId, &Name> = HashMap::new();
    for loc in uses.keys() {
        marked.entry(loc.pack).or_default().insert(loc.offset);
        pack_names.entry(loc.pack).or_insert(&names[loc]);
    }
    let mut fetched = futures::stream::iter(uses.keys().copied())
        .map(|loc| async move { (loc, fetch_page(vault, &names[&loc], &loc).await) })
        .buffer_unordered(IN_FLIGHT);
    while let Some((loc, r)) = fetched.next().await {
        match r {
            Ok(entries) => {
                for e in entries.iter().filter(|e| !e.is_zero()) {
                    marked.entry(e.pack).or_default().insert(e.offset);
                    pack_names.entry(e.pack).or_insert(&names[&loc]);
                }
            }
            Err(e) => {
                if fault_of(&e).is_none() {
                    return Err(e);
                }
                unreadable.push(Unreadable {
                    object: page_object(&loc),
                    reason: e.to_string(),
                });
            }
        }
    }
    drop(fetched);

    let mut plan = GcPlan {
        now,
        grace_secs: grace.as_secs(),
        cutoff,
        unreadable,
        points: points.len() as u64,
        pages: uses.len() as u64,
        blobs_referenced: marked.values().map(|s| s.len() as u64).sum(),
        packs_listed: 0,
        packs_referenced: 0,
        packs_young: 0,
        delete_packs: Vec::new(),
        delete_leases: Vec::new(),
        missing_packs: Vec::new(),
        partly_dead: Vec::new(),
        trailer_problems: Vec::new(),
        foreign: Vec::new(),
    };

    let mut listed: HashSet<PackId> = HashSet::new();
    let mut referenced: Vec<(PackId, u64)> = Vec::new();
    for o in vault.backend.list("packs/").await? {
        let Some(id) = parse_pack_key(&o.key) else {
            plan.foreign.push(o.key);
            continue;
        };
        plan.packs_listed += 1;
        listed.insert(id);
        if marked.contains_key(&id) {
            plan.packs_referenced += 1;
            referenced.push((id, o.size));
        } else if o.last_modified < cutoff {
            plan.delete_packs.push(dead(o));
        } else {
            plan.packs_young += 1;
        }
    }
    plan.missing_packs = marked
        .keys()
        .filter(|p| !listed.contains(p))
        .copied()
        .collect();
    plan.missing_packs.sort();

    plan.delete_leases = stale_lease_objects(vault, now)
        .await?
        .into_iter()
        .map(dead)
        .collect();

    if plan.is_blocked() {
        // The marks are incomplete: nothing may go, and waste cannot be told.
        plan.delete_packs.clear();
        plan.delete_leases.clear();
        return Ok(plan);
    }

    let pack_names = &pack_names;
    let mut trailers = futures::stream::iter(referenced)
        .map(|(id, size)| async move {
            let r = read_pack_trailer(vault, pack_names[&id], &id, size).await;
            (id, size, r)
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((id, size, r)) = trailers.next().await {
        match r {
            Ok(entries) => {
                let live = &marked[&id];
                let dead: Vec<_> = entries
                    .iter()
                    .filter(|e| !live.contains(&e.offset))
                    .collect();
                if !dead.is_empty() {
                    plan.partly_dead.push(PartlyDeadPack {
                        pack: id,
                        size,
                        blobs: entries.len() as u64,
                        dead_blobs: dead.len() as u64,
                        dead_bytes: dead.iter().map(|e| u64::from(e.len)).sum(),
                    });
                }
            }
            Err(e) => {
                if fault_of(&e).is_none() {
                    return Err(e);
                }
                plan.trailer_problems.push(Unreadable {
                    object: pack_key(&id),
                    reason: e.to_string(),
                });
            }
        }
    }
    drop(trailers);
    plan.partly_dead
        .sort_by(|a, b| b.dead_bytes.cmp(&a.dead_bytes).then(a.pack.cmp(&b.pack)));
    Ok(plan)
}

/// Carries out `plan`: deletes its packs and stale leases, unless it is blocked.
pub async fn execute_gc(vault: &Vault, plan: GcPlan) -> Result<GcReport> {
    if plan.is_blocked() {
        return Ok(report(plan, false, 0, 0, 0));
    }
    let mut deleted = 0;
    let mut freed = 0;
    let mut results = futures::stream::iter(plan.delete_packs.iter())
        .map(|p| async move { vault.backend.delete(&p.key).await.map(|_| p.size) })
        .buffer_unordered(IN_FLIGHT);
    while let Some(r) = results.next().await {
        freed += r?;
        deleted += 1;
    }
    drop(results);
    let mut leases = 0;
    for l in &plan.delete_leases {
        vault.backend.delete(&l.key).await?;
        leases += 1;
    }
    tracing::info!(deleted, freed, leases, "gc done");
    Ok(report(plan, false, deleted, freed, leases))
}

/// The trailer of a pack of `size` bytes: the footer, then the trailer blob.
async fn read_pack_trailer(
    vault: &Vault,
    name: &Name,
    id: &PackId,
    size: u64,
) -> Result<Vec<format::TrailerEntry>> {
    let key = pack_key(id);
    if size < 8 {
        return Err(VaultError::Format(format::FormatError::Damaged {
            object: key,
            reason: format!("{size} bytes cannot hold a pack footer"),
        }));
    }
    let footer = vault.backend.get_range(&key, size - 8..size).await?;
    let tlen = u64::from(trailer_len_from_footer(id, &footer)?);
    let start = size.checked_sub(8 + tlen).ok_or_else(|| {
        VaultError::Format(format::FormatError::Damaged {
            object: key.clone(),
            reason: format!("{size} bytes cannot hold a trailer of {tlen} bytes"),
        })
    })?;
    let tail = vault.backend.get_range(&key, start..size).await?;
    let keys = vault.keys_for(name)?;
    let id = *id;
    tokio::task::spawn_blocking(move || format::read_trailer(&keys, &id, size, &tail))
        .await
        .map_err(|e| VaultError::Usage(format!("reading the trailer of pack {id} failed: {e}")))?
        .map_err(VaultError::from)
}

fn dead(o: ObjectInfo) -> DeadObject {
    DeadObject {
        key: o.key,
        size: o.size,
        last_modified: o.last_modified,
    }
}

fn object_of(p: &PointRef) -> String {
    format::manifest_key(&p.name, &p.point)
}

fn page_object(loc: &PageLoc) -> String {
    format!(
        "index page {} ({} bytes at {} of {})",
        loc.id,
        loc.len,
        loc.offset,
        pack_key(&loc.pack)
    )
}
