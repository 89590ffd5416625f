//! `stats`: what the vault holds and what dedup and compression save
//! (docs/vault-format.md, "Maintenance").
//!
//! - stored bytes: the sizes of the listed packs (what the provider bills);
//! - logical bytes: the sizes of every disk of every point; the non-hole part of it is
//!   what a restore writes;
//! - unique chunks: each chunk id counted once, with its plaintext length (its slot's
//!   length) and its sealed length (the page entry's);
//! - dedup ratio = non-hole logical bytes ÷ unique plaintext bytes; compression ratio =
//!   unique plaintext bytes ÷ unique sealed bytes. Both are `None` when nothing is stored.
//!
//! Every distinct index page is read once; a page shared by many points counts for each.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::format::{parse_pack_key, ChunkId, Manifest, Name, PointId};
use crate::store::error::Result;
use crate::store::vault::Vault;
use crate::store::verify::{fetch_page, page_names, page_uses, read_manifests, IN_FLIGHT};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointRow {
    pub name: Name,
    pub point: PointId,
    /// When the point was taken (from its id).
    pub time: DateTime<Utc>,
    pub logical_bytes: u64,
    pub new_chunks: u64,
    pub new_bytes_plain: u64,
    pub new_bytes_stored: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VaultStats {
    pub stored_bytes: u64,
    pub packs: u64,
    pub points: u64,
    pub names: u64,
    pub logical_bytes: u64,
    /// Logical bytes that are not holes.
    pub logical_data_bytes: u64,
    pub unique_chunks: u64,
    pub unique_plain_bytes: u64,
    pub unique_stored_bytes: u64,
    pub dedup_ratio: Option<f64>,
    pub compression_ratio: Option<f64>,
    /// Oldest first.
    pub per_point: Vec<PointRow>,
}

/// Reads every manifest and every distinct index page (no chunk data).
pub async fn stats(vault: &Vault) -> Result<VaultStats> {
    let packs: Vec<u64> = vault
        .backend
        .list("packs/")
        .await?
        .into_iter()
        .filter(|o| parse_pack_key(&o.key).is_some())
        .map(|o| o.size)
        .collect();
    let points = vault.list_points(None).await?;
    let mut manifests: Vec<(usize, Manifest)> = Vec::with_capacity(points.len());
    let mut results = read_manifests(vault, &points);
    while let Some((i, r)) = results.next().await {
        manifests.push((i, r?));
    }
    drop(results);
    manifests.sort_by_key(|(i, _)| *i);

    let uses = page_uses(manifests.iter().map(|(i, m)| (*i, m)));
    let names = page_names(manifests.iter().map(|(_, m)| m));
    let names = &names;
    let mut unique: HashMap<ChunkId, (u32, u32)> = HashMap::new();
    let mut logical_data_bytes = 0u64;
    let mut fetched = futures::stream::iter(uses.keys().copied())
        .map(|loc| async move { (loc, fetch_page(vault, &names[&loc], &loc).await) })
        .buffer_unordered(IN_FLIGHT);
    while let Some((loc, r)) = fetched.next().await {
        let entries = r?;
        for (shape, users) in &uses[&loc] {
            let mut data = 0u64;
            for (i, e) in entries.iter().enumerate().take(shape.slots) {
                if e.is_zero() {
                    continue;
                }
                let len = shape.slot_len(i);
                data += u64::from(len);
                unique.entry(e.chunk).or_insert((len, e.len));
            }
            logical_data_bytes += data * users.len() as u64;
        }
    }
    drop(fetched);

    let unique_plain_bytes: u64 = unique.values().map(|(p, _)| u64::from(*p)).sum();
    let unique_stored_bytes: u64 = unique.values().map(|(_, s)| u64::from(*s)).sum();
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let names: HashSet<&Name> = points.iter().map(|p| &p.name).collect();
    Ok(VaultStats {
        stored_bytes: packs.iter().sum(),
        packs: packs.len() as u64,
        points: points.len() as u64,
        names: names.len() as u64,
        logical_bytes: manifests
            .iter()
            .map(|(_, m)| m.disks.iter().map(|d| d.size).sum::<u64>())
            .sum(),
        logical_data_bytes,
        unique_chunks: unique.len() as u64,
        unique_plain_bytes,
        unique_stored_bytes,
        dedup_ratio: ratio(logical_data_bytes, unique_plain_bytes),
        compression_ratio: ratio(unique_plain_bytes, unique_stored_bytes),
        per_point: manifests
            .iter()
            .map(|(_, m)| PointRow {
                name: m.name.clone(),
                point: m.point,
                time: m.point.time(),
                logical_bytes: m.stats.logical_bytes,
                new_chunks: m.stats.new_chunks,
                new_bytes_plain: m.stats.new_bytes_plain,
                new_bytes_stored: m.stats.new_bytes_stored,
            })
            .collect(),
    })
}
