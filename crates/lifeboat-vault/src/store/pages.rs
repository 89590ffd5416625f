//! Index pages of one disk of a stored point, loaded on demand and cached: a writer reads
//! its parent's pages through this, a reader its point's.

use std::sync::Arc;

use crate::format::{
    self, pack_key, DiskManifest, IndexEntry, PageRef, VaultKeys, ENTRIES_PER_PAGE,
};
use crate::store::cache::ByteLru;
use crate::store::error::{Result, VaultError};
use crate::store::vault::Vault;

/// Pages kept in memory per disk: 4 MiB, about 70 pages, 9 GiB of disk at 128 KiB chunks.
const PAGE_CACHE_BYTES: usize = 4 << 20;

pub struct ParentPages {
    vault: Vault,
    /// The keys of the point's name.
    keys: Arc<VaultKeys>,
    disk: DiskManifest,
    cache: ByteLru<u64, Vec<IndexEntry>>,
}

impl ParentPages {
    pub fn new(vault: &Vault, keys: &Arc<VaultKeys>, disk: &DiskManifest) -> Self {
        ParentPages {
            vault: vault.clone(),
            keys: keys.clone(),
            disk: disk.clone(),
            cache: ByteLru::new(PAGE_CACHE_BYTES),
        }
    }

    pub fn disk(&self) -> &DiskManifest {
        &self.disk
    }

    /// The keys that open this disk's pages and chunks.
    pub fn keys(&self) -> &Arc<VaultKeys> {
        &self.keys
    }

    pub fn page_ref(&self, page: u64) -> PageRef {
        self.disk.pages[page as usize]
    }

    pub async fn page_entries(&self, page: u64) -> Result<Arc<Vec<IndexEntry>>> {
        if let Some(hit) = self.cache.get(&page) {
            return Ok(hit);
        }
        let r = self.disk.pages.get(page as usize).ok_or_else(|| {
            VaultError::Usage(format!("disk {} has no index page {page}", self.disk.name))
        })?;
        let end = u64::from(r.offset) + u64::from(r.len);
        let sealed = self
            .vault
            .backend
            .get_range(&pack_key(&r.pack), u64::from(r.offset)..end)
            .await?;
        let keys = self.keys.clone();
        let id = r.id;
        let page_obj = tokio::task::spawn_blocking(move || format::open_page(&keys, &id, &sealed))
            .await
            .map_err(|e| VaultError::Usage(format!("opening an index page failed: {e}")))??;
        let want = self.disk.slots_in_page(page);
        if page_obj.entries.len() != want {
            return Err(VaultError::Format(format::FormatError::damaged(
                format!("index page {}", r.id),
                format!(
                    "holds {} entries, disk {} needs {want} there",
                    page_obj.entries.len(),
                    self.disk.name
                ),
            )));
        }
        let entries = Arc::new(page_obj.entries);
        self.cache.insert(
            page,
            entries.clone(),
            entries.len() * format::page::ENTRY_LEN,
        );
        Ok(entries)
    }

    pub async fn entry(&self, slot: u64) -> Result<IndexEntry> {
        let page = self.page_entries(slot / ENTRIES_PER_PAGE as u64).await?;
        Ok(page[(slot % ENTRIES_PER_PAGE as u64) as usize])
    }
}
