//! Reading a stored point: random access (`read_at`, for serving a point over NBD and
//! booting from it later) through a bounded chunk cache, and a streaming restore to a
//! file that keeps holes as holes.

use std::path::Path;
use std::sync::Arc;

use crate::format::{self, pack_key, ChunkId, IndexEntry, Manifest, Name};
use crate::store::cache::ByteLru;
use crate::store::error::{Result, VaultError};
use crate::store::pages::ParentPages;
use crate::store::restore;
pub use crate::store::restore::RestoreStats;
use crate::store::vault::{PointRef, Vault};

/// Chunks kept by a reader: 64 MiB by default.
pub const DEFAULT_CHUNK_CACHE: usize = 64 << 20;

pub struct PointReader {
    vault: Vault,
    point: PointRef,
    manifest: Manifest,
    disks: Vec<ParentPages>,
    chunks: ByteLru<ChunkId, Vec<u8>>,
}

impl PointReader {
    pub async fn open(vault: &Vault, point: &PointRef, cache_bytes: usize) -> Result<PointReader> {
        let manifest = vault.manifest(point).await?;
        let keys = vault.keys_for(&point.name)?;
        let disks = manifest
            .disks
            .iter()
            .map(|d| ParentPages::new(vault, &keys, d))
            .collect();
        Ok(PointReader {
            vault: vault.clone(),
            point: point.clone(),
            manifest,
            disks,
            chunks: ByteLru::new(cache_bytes),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn disk(&self, name: &Name) -> Result<&ParentPages> {
        self.disks
            .iter()
            .find(|d| &d.disk().name == name)
            .ok_or_else(|| VaultError::UnknownDisk {
                point: self.point.point,
                disk: name.to_string(),
            })
    }

    /// The plaintext of chunk `slot` of `disk`, proven against its id.
    async fn chunk(&self, disk: &ParentPages, slot: u64) -> Result<Arc<Vec<u8>>> {
        let cs = u64::from(disk.disk().chunk_size);
        let len = cs.min(disk.disk().size - slot * cs) as usize;
        let entry = disk.entry(slot).await?;
        if entry.is_zero() {
            return Ok(Arc::new(vec![0u8; len]));
        }
        if let Some(hit) = self.chunks.get(&entry.chunk) {
            return Ok(hit);
        }
        let plain = fetch_chunk(&self.vault, disk.keys(), &entry, len)
            .await
            .map_err(|e| VaultError::Damaged {
                name: self.point.name.clone(),
                point: self.point.point,
                reason: format!(
                    "disk {} chunk {slot} (bytes {}..{}): {e}",
                    disk.disk().name,
                    slot * cs,
                    slot * cs + len as u64
                ),
            })?;
        let plain = Arc::new(plain);
        self.chunks.insert(entry.chunk, plain.clone(), len);
        Ok(plain)
    }

    /// `len` bytes of `disk` at `offset`.
    pub async fn read_at(&self, disk: &Name, offset: u64, len: usize) -> Result<Vec<u8>> {
        let d = self.disk(disk)?;
        let size = d.disk().size;
        let end = offset
            .checked_add(len as u64)
            .filter(|e| *e <= size)
            .ok_or_else(|| {
                VaultError::Usage(format!(
                    "read of {len} bytes at {offset} is past the end of disk {disk} ({size} bytes)"
                ))
            })?;
        let cs = u64::from(d.disk().chunk_size);
        let mut out = Vec::with_capacity(len);
        let mut at = offset;
        while at < end {
            let slot = at / cs;
            let chunk = self.chunk(d, slot).await?;
            let from = (at - slot * cs) as usize;
            let to = ((end - slot * cs) as usize).min(chunk.len());
            out.extend_from_slice(&chunk[from..to]);
            at = slot * cs + to as u64;
        }
        Ok(out)
    }

    /// `(size, chunk_size)` of `disk`.
    pub fn disk_layout(&self, disk: &Name) -> Result<(u64, u32)> {
        let d = self.disk(disk)?.disk();
        Ok((d.size, d.chunk_size))
    }

    /// Whether `data`, another copy's bytes of chunk `slot` of `disk`, equals the point's
    /// chunk: compared by keyed digest without fetching the chunk (all zeros match a
    /// hole, which is how the vault stores them).
    pub async fn chunk_matches(&self, disk: &Name, slot: u64, data: &[u8]) -> Result<bool> {
        let d = self.disk(disk)?;
        let entry = d.entry(slot).await?;
        let zeros = data.iter().all(|b| *b == 0);
        Ok(if entry.is_zero() {
            zeros
        } else {
            !zeros && d.keys().chunk_id(data) == entry.chunk
        })
    }

    /// Writes `disk` into the raw file `target` (created, sparse): chunks of zeros are
    /// not written, so holes stay holes.
    pub async fn restore_raw(&self, disk: &Name, target: &Path) -> Result<RestoreStats> {
        self.restore_raw_with_progress(disk, target, |_| {}).await
    }

    /// `restore_raw`, calling `progress` with the bytes of the disk done so far.
    pub async fn restore_raw_with_progress(
        &self,
        disk: &Name,
        target: &Path,
        progress: impl Fn(u64),
    ) -> Result<RestoreStats> {
        let d = self.disk(disk)?;
        restore::restore_raw(&self.vault, &self.point, d, target, progress).await
    }
}

/// Fetches one chunk blob with a ranged read and opens it (tag, length and id checked).
pub(crate) async fn fetch_chunk(
    vault: &Vault,
    keys: &Arc<format::VaultKeys>,
    entry: &IndexEntry,
    len: usize,
) -> Result<Vec<u8>> {
    let start = u64::from(entry.offset);
    let sealed = vault
        .backend
        .get_range(&pack_key(&entry.pack), start..start + u64::from(entry.len))
        .await?;
    let keys = keys.clone();
    let id = entry.chunk;
    let plain =
        tokio::task::spawn_blocking(move || format::open_chunk(&keys, &id, &sealed, len as u32))
            .await
            .map_err(|e| VaultError::Usage(format!("opening a chunk failed: {e}")))??;
    if plain.len() != len {
        return Err(VaultError::Format(format::FormatError::damaged(
            format!("chunk {id}"),
            format!("holds {} bytes, its slot needs {len}", plain.len()),
        )));
    }
    Ok(plain)
}
