//! Writing one recovery point (docs/vault-format.md, "Writing a point").
//!
//! A `PointWriter` starts from its parent's index (or from an all-hole disk), takes the
//! changed chunks of each disk in offset order, and commits by uploading the packs, then
//! the manifest. The point exists only once its manifest does; a writer dropped or killed
//! before that leaves packs no manifest names, which `gc` removes later.
//!
//! Data path: every chunk is hashed and, unless it is all zeros or equal to the parent's
//! chunk in the same slot, compressed and sealed on the blocking pool — as many at once as
//! there are cores — while the caller reads the next extent. Results are applied in order,
//! so pages fill front to back and a page is sealed as soon as writes move past it. Memory
//! stays bounded: the chunks in flight, one open pack, a few packs uploading, one open page
//! per disk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::task::{JoinHandle, JoinSet};

use crate::format::{
    self, pack_key, ChunkId, Consistency, DiskManifest, IndexEntry, IndexPage, Manifest, Name,
    PackBuilder, PackId, PackedId, PageId, PageRef, PointId, PointStats, VaultKeys,
    ENTRIES_PER_PAGE,
};
use crate::store::chunking::{check_layout, page_count, page_slots};
use crate::store::error::{Result, VaultError};
use crate::store::lease::Lease;
use crate::store::pages::ParentPages;
use crate::store::vault::{PointRef, Vault};

/// Batches queued for sealing, per core.
const IN_FLIGHT_PER_CORE: usize = 4;
/// Chunks are sealed in batches of up to this many bytes: one hand-off to a sealing thread
/// per chunk cost more in wake-ups and context switches than BLAKE3 did.
const BATCH_BYTES: usize = 1 << 20;
/// Packs uploading at once.
const UPLOADS: usize = 3;
/// Chunk ids remembered for dedup inside one point; past this, equal chunks are stored
/// again rather than letting memory grow with the disk.
const SESSION_DEDUP_MAX: usize = 1 << 20;

/// A disk of the point being written.
#[derive(Debug, Clone)]
pub struct DiskLayout {
    pub name: Name,
    pub size: u64,
    pub cut_time: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct PointOptions {
    pub name: Name,
    pub parent: Option<PointRef>,
    pub consistency: Consistency,
    pub vm_config: Option<Vec<u8>>,
    /// The VM's own cloud-init seed image, carried with the point, as
    /// `Manifest::pack_guest_seed` packs it.
    pub guest_seed: Option<Vec<u8>>,
    pub disks: Vec<DiskLayout>,
}

impl PointOptions {
    /// A crash-consistent point of one disk cut now, with no VM config: what `put-image`
    /// and most tests write.
    pub fn one_disk(name: Name, parent: Option<PointRef>, disk: Name, size: u64) -> Self {
        PointOptions {
            name,
            parent,
            consistency: Consistency::Crash,
            vm_config: None,
            guest_seed: None,
            disks: vec![DiskLayout {
                name: disk,
                size,
                cut_time: Utc::now(),
            }],
        }
    }
}

/// Chunks on their way: a batch being sealed on the blocking pool, or one already known.
enum Pending {
    Job(JoinHandle<Result<Vec<Done>>>),
    Ready(Done),
}

/// A chunk to seal: its slot, bytes, and the parent's entry for that slot.
type ChunkJob = (u64, Bytes, Option<IndexEntry>);

enum Outcome {
    Zero,
    /// Equal to the parent's chunk in the same slot: its entry is reused.
    SameAsParent(IndexEntry),
    New {
        id: ChunkId,
        sealed: Vec<u8>,
        plain_len: usize,
    },
}

struct Done {
    disk: usize,
    slot: u64,
    outcome: Outcome,
}

struct DiskState {
    layout: DiskLayout,
    /// The parent's pages of this disk, when the parent has a disk of this name and size.
    parent: Option<ParentPages>,
    pages: Vec<PageRef>,
    /// The page being filled: its index and entries.
    open: Option<(u64, Vec<IndexEntry>, bool)>,
    /// Writes must not go back before this offset.
    next_offset: u64,
}

pub struct PointWriter {
    vault: Vault,
    /// The keys of the point's name.
    keys: Arc<VaultKeys>,
    point: PointId,
    opts: PointOptions,
    chunk_size: u64,
    disks: Vec<DiskState>,
    pending: VecDeque<Pending>,
    sealers: Arc<tokio::sync::Semaphore>,
    max_pending: usize,
    pack: Option<PackBuilder>,
    uploads: JoinSet<Result<()>>,
    session: HashMap<ChunkId, IndexEntry>,
    /// Pages stored by this writer, by id: all-hole pages and pages equal across disks
    /// are stored once.
    session_pages: HashMap<PageId, PageRef>,
    stats: PointStats,
    lease: Lease,
}

impl PointWriter {
    pub async fn begin(vault: &Vault, opts: PointOptions) -> Result<PointWriter> {
        check_layout(&opts.disks)?;
        let keys = vault.keys_for(&opts.name)?;
        if let Some(p) = opts.parent.as_ref().filter(|p| p.name != opts.name) {
            if vault.config().scoped() {
                // Its chunks and pages are sealed with another name's keys, which this
                // point's readers will not hold.
                return Err(VaultError::Usage(format!(
                    "a point of {} cannot build on a point of {} in a vault with a key per VM; \
                     write it without a parent",
                    opts.name, p.name
                )));
            }
        }
        // The lease first, then the parent: a prune and gc that run between the two
        // would otherwise not know the parent is still needed.
        let lease = Lease::take(vault, &opts.name, opts.parent.as_ref().map(|p| &p.point)).await?;
        let parent = match &opts.parent {
            Some(p) => match vault.manifest(p).await {
                Ok(m) => Some(m),
                Err(e) => {
                    lease.release().await;
                    return Err(e);
                }
            },
            None => None,
        };
        let chunk_size = u64::from(vault.chunk_size());
        let mut disks = Vec::new();
        for layout in &opts.disks {
            let parent_pages = parent.as_ref().and_then(|m| {
                m.disks
                    .iter()
                    .find(|d| d.name == layout.name && d.size == layout.size)
                    .filter(|d| u64::from(d.chunk_size) == chunk_size)
                    .map(|d| ParentPages::new(vault, &keys, d))
            });
            disks.push(DiskState {
                layout: layout.clone(),
                parent: parent_pages,
                pages: Vec::new(),
                open: None,
                next_offset: 0,
            });
        }
        let point = PointId::new(Utc::now())?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(PointWriter {
            vault: vault.clone(),
            keys,
            point,
            chunk_size,
            disks,
            pending: VecDeque::new(),
            sealers: Arc::new(tokio::sync::Semaphore::new(cores)),
            max_pending: cores * IN_FLIGHT_PER_CORE,
            pack: None,
            uploads: JoinSet::new(),
            session: HashMap::new(),
            session_pages: HashMap::new(),
            stats: PointStats::default(),
            lease,
            opts,
        })
    }

    pub fn point(&self) -> &PointId {
        &self.point
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Whether `disk` starts from the parent's content (same name, size and chunk size in
    /// the parent). When it does not, every byte not written reads as zero — so a caller
    /// that writes only changed ranges must not go on.
    pub fn has_parent(&self, disk: &Name) -> bool {
        self.disks
            .iter()
            .any(|d| &d.layout.name == disk && d.parent.is_some())
    }

    fn disk_index(&self, disk: &Name) -> Result<usize> {
        self.disks
            .iter()
            .position(|d| &d.layout.name == disk)
            .ok_or_else(|| VaultError::Usage(format!("the point being written has no disk {disk}")))
    }

    /// Writes whole chunks of `disk` starting at `offset`. `offset` must be a multiple of the
    /// chunk size and `data` a whole number of chunks (or end at the disk's end); offsets
    /// must not go backwards. Use [`align_to_chunks`] to widen changed ranges first.
    pub async fn write(&mut self, disk: &Name, offset: u64, data: Bytes) -> Result<()> {
        let d = self.check_write(disk, offset, data.len() as u64)?;
        let cs = self.chunk_size;
        let per_batch = (BATCH_BYTES as u64 / cs).max(1) as usize;
        let mut batch = Vec::with_capacity(per_batch);
        let mut at = 0usize;
        while at < data.len() {
            let len = (cs as usize).min(data.len() - at);
            let chunk = data.slice(at..at + len);
            let slot = (offset + at as u64) / cs;
            let parent = match &self.disks[d].parent {
                Some(p) => Some(p.entry(slot).await?),
                None => None,
            };
            batch.push((slot, chunk, parent));
            if batch.len() == per_batch {
                self.submit(d, std::mem::take(&mut batch)).await?;
            }
            at += len;
        }
        if !batch.is_empty() {
            self.submit(d, batch).await?;
        }
        Ok(())
    }

    /// Marks `len` bytes at `offset` as zeros (chunk-aligned, like `write`). Nothing is
    /// hashed or scanned: the slots become holes directly.
    pub async fn write_zeroes(&mut self, disk: &Name, offset: u64, len: u64) -> Result<()> {
        let d = self.check_write(disk, offset, len)?;
        let cs = self.chunk_size;
        for slot in offset / cs..(offset + len).div_ceil(cs) {
            self.make_room().await?;
            self.pending.push_back(Pending::Ready(Done {
                disk: d,
                slot,
                outcome: Outcome::Zero,
            }));
        }
        Ok(())
    }

    /// Checks a write's bounds, alignment and order; returns the disk's index.
    fn check_write(&mut self, disk: &Name, offset: u64, len: u64) -> Result<usize> {
        let d = self.disk_index(disk)?;
        let size = self.disks[d].layout.size;
        let cs = self.chunk_size;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= size)
            .ok_or_else(|| {
                VaultError::Usage(format!(
                    "write of {len} bytes at {offset} is past the end of disk {disk} ({size} bytes)"
                ))
            })?;
        if !offset.is_multiple_of(cs) || (!end.is_multiple_of(cs) && end != size) {
            return Err(VaultError::Usage(format!(
                "write at {offset}..{end} of disk {disk} is not aligned to the chunk size {cs}"
            )));
        }
        if offset < self.disks[d].next_offset {
            return Err(VaultError::Usage(format!(
                "write at {offset} of disk {disk} goes back before {}; write each disk in offset order",
                self.disks[d].next_offset
            )));
        }
        self.disks[d].next_offset = end;
        Ok(d)
    }

    async fn submit(&mut self, disk: usize, batch: Vec<ChunkJob>) -> Result<()> {
        self.make_room().await?;
        let keys = self.keys.clone();
        let sealers = self.sealers.clone();
        // Many batches wait in the queue, but only one per core is sealed at a time: more
        // threads would only add memory (each keeps its own zstd context and allocator
        // arena), not speed.
        let job = tokio::spawn(async move {
            let _permit = sealers
                .acquire_owned()
                .await
                .map_err(|e| VaultError::Usage(format!("sealing a chunk: {e}")))?;
            tokio::task::spawn_blocking(move || {
                batch
                    .into_iter()
                    .map(|(slot, chunk, parent)| {
                        Ok(Done {
                            disk,
                            slot,
                            outcome: seal(&keys, &chunk, parent)?,
                        })
                    })
                    .collect()
            })
            .await
            .map_err(|e| VaultError::Usage(format!("sealing a chunk failed: {e}")))?
        });
        self.pending.push_back(Pending::Job(job));
        Ok(())
    }

    async fn make_room(&mut self) -> Result<()> {
        while self.pending.len() >= self.max_pending {
            self.apply_oldest().await?;
        }
        Ok(())
    }

    async fn apply_oldest(&mut self) -> Result<()> {
        match self.pending.pop_front() {
            None => Ok(()),
            Some(Pending::Ready(done)) => self.apply(done).await,
            Some(Pending::Job(job)) => {
                let batch = job
                    .await
                    .map_err(|e| VaultError::Usage(format!("sealing a chunk failed: {e}")))??;
                for done in batch {
                    self.apply(done).await?;
                }
                Ok(())
            }
        }
    }

    async fn apply(&mut self, done: Done) -> Result<()> {
        let page = done.slot / ENTRIES_PER_PAGE as u64;
        self.open_page(done.disk, page).await?;
        let entry = match done.outcome {
            Outcome::Zero => IndexEntry::ZERO,
            Outcome::SameAsParent(entry) => entry,
            Outcome::New {
                id,
                sealed,
                plain_len,
            } => match self.session.get(&id) {
                Some(e) => *e,
                None => {
                    self.stats.new_chunks += 1;
                    self.stats.new_bytes_plain += plain_len as u64;
                    self.stats.new_bytes_stored += sealed.len() as u64;
                    let (pack, offset, len) = self.push_blob(PackedId::Chunk(id), sealed).await?;
                    let e = IndexEntry {
                        chunk: id,
                        pack,
                        offset,
                        len,
                    };
                    if self.session.len() < SESSION_DEDUP_MAX {
                        self.session.insert(id, e);
                    }
                    e
                }
            },
        };
        let (_, entries, dirty) = self.disks[done.disk]
            .open
            .as_mut()
            .expect("page opened above");
        let i = (done.slot % ENTRIES_PER_PAGE as u64) as usize;
        if entries[i] != entry {
            entries[i] = entry;
            *dirty = true;
        }
        Ok(())
    }

    /// Makes `page` the disk's open page, closing every page before it.
    async fn open_page(&mut self, disk: usize, page: u64) -> Result<()> {
        if matches!(&self.disks[disk].open, Some((p, _, _)) if *p == page) {
            return Ok(());
        }
        self.close_pages_before(disk, page).await?;
        let state = &self.disks[disk];
        let slots = page_slots(state.layout.size, self.chunk_size, page);
        let entries = match &state.parent {
            Some(p) => p.page_entries(page).await?.as_ref().clone(),
            None => vec![IndexEntry::ZERO; slots],
        };
        self.disks[disk].open = Some((page, entries, false));
        Ok(())
    }

    /// Closes the open page and fills every page before `until` that was not written.
    async fn close_pages_before(&mut self, disk: usize, until: u64) -> Result<()> {
        if let Some((page, entries, dirty)) = self.disks[disk].open.take() {
            let r = self.page_ref(disk, page, entries, dirty).await?;
            self.disks[disk].pages.push(r);
        }
        while (self.disks[disk].pages.len() as u64) < until {
            let page = self.disks[disk].pages.len() as u64;
            let r = match &self.disks[disk].parent {
                Some(p) => p.page_ref(page),
                None => {
                    let slots = page_slots(self.disks[disk].layout.size, self.chunk_size, page);
                    self.page_ref(disk, page, vec![IndexEntry::ZERO; slots], true)
                        .await?
                }
            };
            self.disks[disk].pages.push(r);
        }
        Ok(())
    }

    /// The reference to a finished page: the parent's when unchanged, else a new blob.
    async fn page_ref(
        &mut self,
        disk: usize,
        page: u64,
        entries: Vec<IndexEntry>,
        dirty: bool,
    ) -> Result<PageRef> {
        if let (false, Some(p)) = (dirty, &self.disks[disk].parent) {
            return Ok(p.page_ref(page));
        }
        let keys = self.keys.clone();
        let (id, sealed) =
            tokio::task::spawn_blocking(move || format::seal_page(&keys, &IndexPage { entries }))
                .await
                .map_err(|e| VaultError::Usage(format!("sealing an index page failed: {e}")))??;
        if let Some(p) = &self.disks[disk].parent {
            let r = p.page_ref(page);
            if r.id == id {
                return Ok(r);
            }
        }
        // Pages of all-hole ranges, and pages repeated across disks, are stored once.
        if let Some(r) = self.session_pages.get(&id) {
            return Ok(*r);
        }
        self.stats.new_bytes_stored += sealed.len() as u64;
        let (pack, offset, len) = self.push_blob(PackedId::Page(id), sealed).await?;
        let r = PageRef {
            id,
            pack,
            offset,
            len,
        };
        self.session_pages.insert(id, r);
        Ok(r)
    }

    async fn push_blob(&mut self, id: PackedId, sealed: Vec<u8>) -> Result<(PackId, u32, u32)> {
        if self.pack.is_none() {
            self.pack = Some(PackBuilder::new(PackId::random()?));
        }
        if self
            .pack
            .as_ref()
            .is_some_and(|p| p.blob_count() as usize + 1 >= format::pack::MAX_PACK_BLOBS as usize)
        {
            // A trailer lists at most MAX_PACK_BLOBS blobs: tiny, well-compressed chunks
            // can reach that before the pack reaches its size.
            self.upload_pack().await?;
            self.pack = Some(PackBuilder::new(PackId::random()?));
        }
        let pack = self.pack.as_mut().expect("opened above");
        let (offset, len) = pack.push(id, sealed)?;
        let pack_id = *pack.id();
        if pack.is_full(u64::from(self.vault.config.pack_target)) {
            self.upload_pack().await?;
        }
        Ok((pack_id, offset, len))
    }

    async fn upload_pack(&mut self) -> Result<()> {
        let Some(pack) = self.pack.take() else {
            return Ok(());
        };
        while self.uploads.len() >= UPLOADS {
            self.join_one_upload().await?;
        }
        let key = pack_key(pack.id());
        let parts = pack.finish_parts(&self.keys)?;
        self.stats.new_packs += 1;
        let backend = self.vault.backend.clone();
        self.uploads.spawn(async move {
            backend
                .put_parts(&key, parts)
                .await
                .map_err(VaultError::from)
        });
        Ok(())
    }

    async fn join_one_upload(&mut self) -> Result<()> {
        match self.uploads.join_next().await {
            Some(r) => r.map_err(|e| VaultError::Usage(format!("uploading a pack failed: {e}")))?,
            None => Ok(()),
        }
    }

    /// Finishes the point: every chunk, page and pack is stored, then the manifest is
    /// written. Returns the manifest as stored.
    pub async fn commit(self) -> Result<Manifest> {
        let lease = self.lease.handle();
        let result = self.commit_inner().await;
        if result.is_err() {
            // Nothing was committed: don't keep the parent pinned for the lease's lifetime.
            lease.release().await;
        }
        result
    }

    /// Gives up on the point: nothing is committed, and the lease is released at once
    /// (packs already uploaded are left for gc).
    pub async fn abort(self) {
        self.lease.release().await;
    }

    async fn commit_inner(mut self) -> Result<Manifest> {
        while !self.pending.is_empty() {
            self.apply_oldest().await?;
        }
        let mut disks = Vec::new();
        for d in 0..self.disks.len() {
            let count = page_count(self.disks[d].layout.size, self.chunk_size);
            self.close_pages_before(d, count).await?;
            let state = &self.disks[d];
            disks.push(DiskManifest {
                name: state.layout.name.clone(),
                size: state.layout.size,
                chunk_size: self.chunk_size as u32,
                cut_time: state.layout.cut_time,
                pages: state.pages.clone(),
            });
        }
        self.upload_pack().await?;
        while !self.uploads.is_empty() {
            self.join_one_upload().await?;
        }
        self.stats.logical_bytes = disks.iter().map(|d| d.size).sum();
        let manifest = Manifest {
            // Version 2 only when a field of it is there: older readers read the rest.
            version: if self.opts.guest_seed.is_some() {
                format::manifest::MANIFEST_VERSION
            } else {
                format::manifest::MANIFEST_VERSION_BASE
            },
            point: self.point,
            name: self.opts.name.clone(),
            created: Utc::now(),
            parent: self.opts.parent.as_ref().map(|p| p.point),
            consistency: self.opts.consistency,
            vm_config: self.opts.vm_config.clone(),
            guest_seed: self.opts.guest_seed.clone(),
            disks,
            stats: self.stats,
        };
        let (key, sealed) = format::seal_manifest(&self.keys, &manifest)?;
        // A writer that stalled past its lease may have lost its parent to prune and gc:
        // a point that references freed packs must never be committed.
        self.lease.check_alive()?;
        if let Some(parent) = &self.opts.parent {
            let parent_key = format::manifest_key(&parent.name, &parent.point);
            if self.vault.backend.head(&parent_key).await?.is_none() {
                return Err(VaultError::Usage(format!(
                    "parent point {} of {} was deleted while this point was written; write it again without it",
                    parent.point, parent.name
                )));
            }
        }
        // The commit point: before this the point does not exist, after it it is whole.
        if !self
            .vault
            .backend
            .put_if_absent(&key, Bytes::from(sealed))
            .await?
        {
            return Err(VaultError::Usage(format!(
                "point {} of {} exists already (two writers with one clock tick?); retry",
                manifest.point, manifest.name
            )));
        }
        self.lease.release().await;
        Ok(manifest)
    }
}

fn seal(keys: &VaultKeys, chunk: &[u8], parent: Option<IndexEntry>) -> Result<Outcome> {
    if chunk.iter().all(|b| *b == 0) {
        return Ok(Outcome::Zero);
    }
    let id = keys.chunk_id(chunk);
    if let Some(p) = parent.filter(|p| !p.is_zero() && p.chunk == id) {
        return Ok(Outcome::SameAsParent(p));
    }
    let sealed = format::blob::seal_chunk_with_id(keys, &id, chunk)?;
    Ok(Outcome::New {
        id,
        sealed,
        plain_len: chunk.len(),
    })
}
