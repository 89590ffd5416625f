//! `verify`: proves that chosen points restore, without restoring them
//! (docs/vault-format.md, "Maintenance"). Three named phases, like restic's checker:
//!
//! 1. **manifests** — each point's manifest is read and opened (tag, version, layout);
//! 2. **pages** — every distinct index page is fetched once and opened (tag, id), and its
//!    entry count is checked against every disk that uses it;
//! 3. **chunks** — every distinct non-zero chunk is fetched once, however many points and
//!    slots share it, and opened (tag, id recomputed from the plaintext, length equal to
//!    its slot's). Plaintexts are dropped at once: memory holds the set of distinct chunk
//!    locations, never their data.
//!
//! Damage is reported, not raised: a missing pack, a short pack, a failed tag or a wrong
//! id becomes a [`Problem`] of every point that needs those bytes, naming the disk, slot,
//! byte offset, chunk id and pack. Only a storage that cannot be reached (or refuses) ends
//! verify with an error, since then nothing can be concluded.
//!
//! The page walk here (`page_uses`, `fetch_page`, `read_manifests`) is shared with `gc`
//! and `stats`, which need the same "every page once" pass.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use serde::Serialize;

use crate::backend::BackendError;
use crate::format::{
    self, pack_key, ChunkId, DiskManifest, FormatError, IndexEntry, Manifest, Name, PackId, PageId,
    PageRef, PointId, ENTRIES_PER_PAGE,
};
use crate::store::error::{Result, VaultError};
use crate::store::reader::fetch_chunk;
use crate::store::vault::{PointRef, Vault};

/// Objects fetched at once by maintenance passes.
pub(crate) const IN_FLIGHT: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyPhase {
    Manifests,
    Pages,
    Chunks,
    /// Only after damage: pages are read again to name every slot of every bad chunk.
    Locate,
}

/// Sent after each object checked: `done` of `total` in `phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VerifyProgress {
    pub phase: VerifyPhase,
    pub done: u64,
    pub total: u64,
}

/// What is wrong with the bytes, for callers that match rather than read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The object (pack or manifest) does not exist.
    Missing,
    /// The pack is shorter than the blob's place in it.
    Truncated,
    /// The authentication tag failed: changed bytes, or a blob from elsewhere.
    Tampered,
    /// The blob decrypts but holds other data than its id says.
    WrongData,
    /// Bad magic, length, count or field.
    Malformed,
    /// Written by a newer Lifeboat.
    NewerFormat,
    /// Anything else that kept the object from being read.
    Unreadable,
}

/// One thing wrong with one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "object", rename_all = "snake_case")]
pub enum Problem {
    Manifest {
        fault: Fault,
        reason: String,
    },
    Page {
        disk: Name,
        /// Index of the page in the disk (slots `page * 1024 ..`).
        page: u64,
        page_id: PageId,
        pack: PackId,
        pack_offset: u32,
        fault: Fault,
        reason: String,
    },
    Chunk {
        disk: Name,
        slot: u64,
        /// Byte offset of the chunk in the disk.
        offset: u64,
        /// Its length in the disk.
        len: u32,
        chunk: ChunkId,
        pack: PackId,
        pack_offset: u32,
        fault: Fault,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PointStatus {
    Ok,
    Damaged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PointVerdict {
    pub name: Name,
    pub point: PointId,
    pub status: PointStatus,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub points: Vec<PointVerdict>,
    pub manifests_checked: u64,
    pub pages_checked: u64,
    /// Distinct chunks fetched and opened.
    pub chunks_checked: u64,
    pub chunk_bytes_plain: u64,
    pub chunk_bytes_stored: u64,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.points.iter().all(|p| p.status == PointStatus::Ok)
    }

    pub fn damaged(&self) -> impl Iterator<Item = &PointVerdict> {
        self.points
            .iter()
            .filter(|p| p.status == PointStatus::Damaged)
    }
}

/// A chunk as one slot needs it: where it is and how long its plaintext must be. The same
/// chunk id always has the same plaintext, but a damaged page may claim otherwise, so the
/// length is part of what is checked.
type ChunkUse = (IndexEntry, u32);

/// Verifies `points` (see the module doc). `progress` is called after every object.
pub async fn verify(
    vault: &Vault,
    points: &[PointRef],
    progress: impl Fn(VerifyProgress),
) -> Result<VerifyReport> {
    let mut problems: Vec<Vec<Problem>> = vec![Vec::new(); points.len()];
    let mut report = VerifyReport {
        points: Vec::new(),
        manifests_checked: 0,
        pages_checked: 0,
        chunks_checked: 0,
        chunk_bytes_plain: 0,
        chunk_bytes_stored: 0,
    };

    // Phase 1: manifests.
    let mut manifests: Vec<Option<Manifest>> = vec![None; points.len()];
    let total = points.len() as u64;
    let mut results = read_manifests(vault, points);
    while let Some((i, r)) = results.next().await {
        match r {
            Ok(m) => manifests[i] = Some(m),
            Err(e) => {
                let Some(fault) = fault_of(&e) else {
                    return Err(e);
                };
                problems[i].push(Problem::Manifest {
                    fault,
                    reason: e.to_string(),
                })
            }
        }
        report.manifests_checked += 1;
        progress(VerifyProgress {
            phase: VerifyPhase::Manifests,
            done: report.manifests_checked,
            total,
        });
    }
    drop(results);

    // Phase 2: pages, each fetched once; collects the distinct chunks to check.
    let uses = page_uses(
        manifests
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.as_ref().map(|m| (i, m))),
    );
    let names = page_names(manifests.iter().flatten());
    let names = &names;
    let total = uses.len() as u64;
    let mut chunks: HashMap<ChunkUse, &Name> = HashMap::new();
    let mut bad_pages: HashSet<PageLoc> = HashSet::new();
    let mut fetched = futures::stream::iter(uses.keys().copied())
        .map(|loc| async move { (loc, fetch_page(vault, &names[&loc], &loc).await) })
        .buffer_unordered(IN_FLIGHT);
    while let Some((loc, r)) = fetched.next().await {
        report.pages_checked += 1;
        progress(VerifyProgress {
            phase: VerifyPhase::Pages,
            done: report.pages_checked,
            total,
        });
        let shapes = &uses[&loc];
        let entries = match r {
            Ok(entries) => entries,
            Err(e) => {
                let Some(fault) = fault_of(&e) else {
                    return Err(e);
                };
                bad_pages.insert(loc);
                for users in shapes.values() {
                    for u in users {
                        problems[u.point].push(page_problem(
                            &manifests,
                            u,
                            &loc,
                            fault,
                            e.to_string(),
                        ));
                    }
                }
                continue;
            }
        };
        for (shape, users) in shapes {
            if entries.len() != shape.slots {
                for u in users {
                    let reason = format!(
                        "index page {} holds {} entries, the disk needs {} there",
                        loc.id,
                        entries.len(),
                        shape.slots
                    );
                    problems[u.point].push(page_problem(
                        &manifests,
                        u,
                        &loc,
                        Fault::Malformed,
                        reason,
                    ));
                }
                continue;
            }
            for (i, e) in entries.iter().enumerate() {
                if !e.is_zero() {
                    chunks
                        .entry((*e, shape.slot_len(i)))
                        .or_insert(&names[&loc]);
                }
            }
        }
    }
    drop(fetched);

    // Phase 3: chunks, each fetched once; plaintexts are dropped as soon as they are checked.
    let total = chunks.len() as u64;
    let mut bad_chunks: HashMap<ChunkUse, (Fault, String)> = HashMap::new();
    let mut checked = futures::stream::iter(chunks.iter().map(|(c, n)| (*c, *n)))
        .map(|((entry, len), name)| async move {
            let r = match vault.keys_for(name) {
                Ok(keys) => fetch_chunk(vault, &keys, &entry, len as usize)
                    .await
                    .map(|p| p.len()),
                Err(e) => Err(e),
            };
            ((entry, len), r)
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((key, r)) = checked.next().await {
        report.chunks_checked += 1;
        match r {
            Ok(plain) => {
                report.chunk_bytes_plain += plain as u64;
                report.chunk_bytes_stored += u64::from(key.0.len);
            }
            Err(e) => {
                let Some(fault) = fault_of(&e) else {
                    return Err(e);
                };
                bad_chunks.insert(key, (fault, e.to_string()));
            }
        }
        progress(VerifyProgress {
            phase: VerifyPhase::Chunks,
            done: report.chunks_checked,
            total,
        });
    }
    drop(checked);
    drop(chunks);

    // Locate: name every slot of every point that needs a bad chunk.
    if !bad_chunks.is_empty() {
        let good: Vec<PageLoc> = uses
            .keys()
            .filter(|l| !bad_pages.contains(l))
            .copied()
            .collect();
        let total = good.len() as u64;
        let mut done = 0;
        let mut fetched = futures::stream::iter(good)
            .map(|loc| async move { (loc, fetch_page(vault, &names[&loc], &loc).await) })
            .buffer_unordered(IN_FLIGHT);
        while let Some((loc, r)) = fetched.next().await {
            done += 1;
            progress(VerifyProgress {
                phase: VerifyPhase::Locate,
                done,
                total,
            });
            let shapes = &uses[&loc];
            let entries = match r {
                Ok(entries) => entries,
                Err(e) => {
                    // Read a moment ago; failing now means flaky storage. Still say so.
                    let Some(fault) = fault_of(&e) else {
                        return Err(e);
                    };
                    for u in shapes.values().flatten() {
                        problems[u.point].push(page_problem(
                            &manifests,
                            u,
                            &loc,
                            fault,
                            e.to_string(),
                        ));
                    }
                    continue;
                }
            };
            for (shape, users) in shapes {
                if entries.len() != shape.slots {
                    continue; // reported in phase 2
                }
                for (i, e) in entries.iter().enumerate() {
                    let Some((fault, reason)) = bad_chunks.get(&(*e, shape.slot_len(i))) else {
                        continue;
                    };
                    for u in users {
                        let disk = disk_of(&manifests, u);
                        let slot = u.page * ENTRIES_PER_PAGE as u64 + i as u64;
                        problems[u.point].push(Problem::Chunk {
                            disk: disk.name.clone(),
                            slot,
                            offset: slot * u64::from(disk.chunk_size),
                            len: shape.slot_len(i),
                            chunk: e.chunk,
                            pack: e.pack,
                            pack_offset: e.offset,
                            fault: *fault,
                            reason: reason.clone(),
                        });
                    }
                }
            }
        }
    }

    report.points = points
        .iter()
        .zip(problems)
        .map(|(p, mut problems)| {
            problems.sort_by_key(sort_key);
            PointVerdict {
                name: p.name.clone(),
                point: p.point,
                status: if problems.is_empty() {
                    PointStatus::Ok
                } else {
                    PointStatus::Damaged
                },
                problems,
            }
        })
        .collect();
    Ok(report)
}

fn sort_key(p: &Problem) -> (u8, String, u64) {
    match p {
        Problem::Manifest { .. } => (0, String::new(), 0),
        Problem::Page { disk, page, .. } => (1, disk.to_string(), *page),
        Problem::Chunk { disk, slot, .. } => (2, disk.to_string(), *slot),
    }
}

fn disk_of<'a>(manifests: &'a [Option<Manifest>], u: &PageUse) -> &'a DiskManifest {
    &manifests[u.point]
        .as_ref()
        .expect("pages are only walked for manifests that opened")
        .disks[u.disk]
}

fn page_problem(
    manifests: &[Option<Manifest>],
    u: &PageUse,
    loc: &PageLoc,
    fault: Fault,
    reason: String,
) -> Problem {
    Problem::Page {
        disk: disk_of(manifests, u).name.clone(),
        page: u.page,
        page_id: loc.id,
        pack: loc.pack,
        pack_offset: loc.offset,
        fault,
        reason,
    }
}

/// Sorts an error into damage (a [`Fault`], reported) or a storage failure (`None`, to
/// be returned): verify must not call a point damaged because the network was down.
pub(crate) fn fault_of(e: &VaultError) -> Option<Fault> {
    Some(match e {
        // Not damage: this handle's key does not open that name (another VM's scope key,
        // or none); the caller says so rather than calling the points damaged.
        VaultError::OtherScope { .. } | VaultError::NoKey { .. } => return None,
        VaultError::Backend(b) => match b {
            BackendError::NotFound { .. } => Fault::Missing,
            BackendError::BadRange { .. } => Fault::Truncated,
            _ => return None,
        },
        VaultError::UnknownPoint { .. } => Fault::Missing,
        VaultError::Format(f) => match f {
            FormatError::TagMismatch { .. } => Fault::Tampered,
            FormatError::IdMismatch { .. } => Fault::WrongData,
            FormatError::Damaged { .. } | FormatError::TooLarge { .. } => Fault::Malformed,
            FormatError::NewerFormat { .. } => Fault::NewerFormat,
            _ => Fault::Unreadable,
        },
        // A decoder that panicked on the blocking pool surfaces as `Usage`: the bytes are bad.
        _ => Fault::Unreadable,
    })
}

/// Where an index page lives: the key of "fetch each page once" (`PageRef` is not `Hash`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PageLoc {
    pub id: PageId,
    pub pack: PackId,
    pub offset: u32,
    pub len: u32,
}

impl From<&PageRef> for PageLoc {
    fn from(r: &PageRef) -> Self {
        PageLoc {
            id: r.id,
            pack: r.pack,
            offset: r.offset,
            len: r.len,
        }
    }
}

/// How a disk uses a page: the entries it must hold and the length of each slot (all
/// `chunk_size` but for the disk's last slot). One page may be used by disks of different
/// sizes, so the same page can have several shapes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PageShape {
    pub slots: usize,
    pub chunk_size: u32,
    pub last_len: u32,
}

impl PageShape {
    pub fn of(disk: &DiskManifest, page: u64) -> Self {
        let slots = disk.slots_in_page(page);
        let cs = u64::from(disk.chunk_size);
        let last_slot = page * ENTRIES_PER_PAGE as u64 + slots.saturating_sub(1) as u64;
        let last_len = disk.size.saturating_sub(last_slot * cs).min(cs) as u32;
        PageShape {
            slots,
            chunk_size: disk.chunk_size,
            last_len,
        }
    }

    pub fn slot_len(&self, i: usize) -> u32 {
        if i + 1 == self.slots {
            self.last_len
        } else {
            self.chunk_size
        }
    }
}

/// One page of one disk of one point: indexes into the caller's manifest list.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PageUse {
    pub point: usize,
    pub disk: usize,
    pub page: u64,
}

pub(crate) type PageUses = HashMap<PageLoc, HashMap<PageShape, Vec<PageUse>>>;

/// Every distinct page of `manifests`, with who uses it and how.
pub(crate) fn page_uses<'a>(manifests: impl Iterator<Item = (usize, &'a Manifest)>) -> PageUses {
    let mut out: PageUses = HashMap::new();
    for (point, m) in manifests {
        for (disk, d) in m.disks.iter().enumerate() {
            for (page, r) in d.pages.iter().enumerate() {
                let page = page as u64;
                out.entry(PageLoc::from(r))
                    .or_default()
                    .entry(PageShape::of(d, page))
                    .or_default()
                    .push(PageUse { point, disk, page });
            }
        }
    }
    out
}

/// The name whose keys open each page: that of the first point using it. In a vault with
/// a key per VM, a page is never shared between names (its id is keyed by the name's key).
pub(crate) fn page_names<'a>(
    manifests: impl Iterator<Item = &'a Manifest>,
) -> HashMap<PageLoc, Name> {
    let mut out = HashMap::new();
    for m in manifests {
        for r in m.disks.iter().flat_map(|d| &d.pages) {
            out.entry(PageLoc::from(r))
                .or_insert_with(|| m.name.clone());
        }
    }
    out
}

/// Fetches and opens one index page of a point of `name` (tag and id checked; the entry
/// count is the caller's).
pub(crate) async fn fetch_page(
    vault: &Vault,
    name: &Name,
    loc: &PageLoc,
) -> Result<Vec<IndexEntry>> {
    let keys = vault.keys_for(name)?;
    let start = u64::from(loc.offset);
    let sealed = vault
        .backend
        .get_range(&pack_key(&loc.pack), start..start + u64::from(loc.len))
        .await?;
    let id = loc.id;
    let page = tokio::task::spawn_blocking(move || format::open_page(&keys, &id, &sealed))
        .await
        .map_err(|e| VaultError::Usage(format!("opening index page {id} failed: {e}")))??;
    Ok(page.entries)
}

/// Reads the manifests of `points`, `IN_FLIGHT` at a time, yielding `(index, result)` in
/// completion order.
pub(crate) fn read_manifests<'a>(
    vault: &'a Vault,
    points: &'a [PointRef],
) -> impl futures::Stream<Item = (usize, Result<Manifest>)> + 'a {
    futures::stream::iter(points.iter().enumerate())
        .map(move |(i, p)| async move { (i, vault.manifest(p).await) })
        .buffer_unordered(IN_FLIGHT)
}
