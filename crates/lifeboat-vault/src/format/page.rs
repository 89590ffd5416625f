//! Index pages (vault-format.md, "Index pages"): where 1,024 consecutive chunks of a disk
//! live. Pages are content-addressed like chunks, so a point only stores the pages whose
//! slots changed since its parent.

use super::blob::{self, describe, BlobKind, BLOB_OVERHEAD, MAX_PAGE_PLAIN};
use super::error::{FormatError, Result};
use super::ids::{ChunkId, PackId, PageId};
use super::keys::VaultKeys;
use super::pack::{MAX_PACK_LEN, PACK_HEAD_LEN};

/// Chunk slots per index page.
pub const ENTRIES_PER_PAGE: usize = 1024;
/// Bytes per encoded entry.
pub const ENTRY_LEN: usize = 56;

const _: () = assert!(4 + ENTRIES_PER_PAGE * ENTRY_LEN == MAX_PAGE_PLAIN as usize);

/// Where one chunk slot's data lives: a chunk blob in a pack, or nowhere (a hole of zeros).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IndexEntry {
    pub chunk: ChunkId,
    pub pack: PackId,
    /// Offset of the chunk's sealed blob in the pack.
    pub offset: u32,
    /// Sealed length of the blob.
    pub len: u32,
}

impl IndexEntry {
    /// An all-zero chunk: stored nowhere.
    pub const ZERO: IndexEntry = IndexEntry {
        chunk: ChunkId([0; 32]),
        pack: PackId([0; 16]),
        offset: 0,
        len: 0,
    };

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.chunk.0);
        out.extend_from_slice(&self.pack.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
    }

    fn decode(b: &[u8; ENTRY_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut chunk = [0u8; 32];
        chunk.copy_from_slice(&b[..32]);
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&b[32..48]);
        IndexEntry {
            chunk: ChunkId(chunk),
            pack: PackId(pack),
            offset: u32_at(48),
            len: u32_at(52),
        }
    }

    /// A stored chunk must point inside a pack, past its magic, at something at least as
    /// long as an empty blob and no longer than the largest chunk blob.
    fn is_plausible(&self) -> bool {
        self.is_zero()
            || (self.offset as usize >= PACK_HEAD_LEN
                && self.len as usize >= BLOB_OVERHEAD
                && self.len <= BlobKind::Chunk.max_sealed()
                && u64::from(self.offset) + u64::from(self.len) <= MAX_PACK_LEN)
    }
}

/// The slots of one index page, in disk order.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct IndexPage {
    pub entries: Vec<IndexEntry>,
}

impl IndexPage {
    /// `count (u32)` then 56 bytes per entry.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let n = self.entries.len();
        if n == 0 || n > ENTRIES_PER_PAGE {
            return Err(FormatError::TooLarge {
                object: format!("index page of {n} entries"),
                len: n as u64,
                limit: ENTRIES_PER_PAGE as u64,
            });
        }
        let mut out = Vec::with_capacity(4 + n * ENTRY_LEN);
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for e in &self.entries {
            e.encode_into(&mut out);
        }
        Ok(out)
    }

    /// Decodes a page plaintext: 1 to 1,024 entries, exact length, plausible entries.
    pub fn decode(plain: &[u8]) -> Result<Self> {
        Self::decode_named(plain, &|| "index page".to_string())
    }

    fn decode_named(plain: &[u8], object: &dyn Fn() -> String) -> Result<Self> {
        let bad = |r: String| FormatError::damaged(object(), r);
        let Some((count, body)) = plain.split_first_chunk::<4>() else {
            return Err(bad(format!(
                "{} bytes is too short for a page",
                plain.len()
            )));
        };
        let count = u32::from_le_bytes(*count) as usize;
        if count == 0 || count > ENTRIES_PER_PAGE {
            return Err(bad(format!(
                "{count} entries (a page holds 1 to {ENTRIES_PER_PAGE})"
            )));
        }
        if body.len() != count * ENTRY_LEN {
            return Err(bad(format!("{} bytes for {count} entries", plain.len())));
        }
        let mut entries = Vec::with_capacity(count);
        for (i, raw) in body.chunks_exact(ENTRY_LEN).enumerate() {
            let e = IndexEntry::decode(raw.try_into().expect("chunks_exact gives ENTRY_LEN"));
            if !e.is_plausible() {
                return Err(bad(format!(
                    "entry {i} points at {} bytes at offset {} of pack {}",
                    e.len, e.offset, e.pack
                )));
            }
            entries.push(e);
        }
        Ok(IndexPage { entries })
    }
}

/// Seals a page and returns its id, computed here from the encoded plaintext (the only
/// way to get a page id, like `seal_chunk`).
pub fn seal_page(keys: &VaultKeys, page: &IndexPage) -> Result<(PageId, Vec<u8>)> {
    let plain = page.encode()?;
    let id = keys.page_id(&plain);
    let sealed = blob::seal(keys, BlobKind::IndexPage, &id.0, &plain)?;
    Ok((id, sealed))
}

/// Opens a page blob expected to hold `id`, proves the id, and decodes it.
pub fn open_page(keys: &VaultKeys, id: &PageId, sealed: &[u8]) -> Result<IndexPage> {
    let object = || describe(BlobKind::IndexPage, &id.0);
    let plain = blob::open(keys, BlobKind::IndexPage, &id.0, sealed, MAX_PAGE_PLAIN)?;
    let found = keys.page_id(&plain);
    if found != *id {
        return Err(FormatError::IdMismatch {
            object: object(),
            found: found.to_string(),
        });
    }
    IndexPage::decode_named(&plain, &object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::{keys, Rng};

    fn entry(rng: &mut Rng) -> IndexEntry {
        IndexEntry {
            chunk: ChunkId(rng.bytes(32).try_into().unwrap()),
            pack: PackId(rng.bytes(16).try_into().unwrap()),
            offset: 4 + rng.below(1 << 20) as u32,
            len: 40 + rng.below(1 << 17) as u32,
        }
    }

    fn page(n: usize, seed: u64) -> IndexPage {
        let mut rng = Rng(seed);
        IndexPage {
            entries: (0..n)
                .map(|i| {
                    if i % 3 == 0 {
                        IndexEntry::ZERO
                    } else {
                        entry(&mut rng)
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn pages_round_trip() {
        let k = keys();
        for n in [1, 2, 1023, 1024] {
            let p = page(n, n as u64);
            let plain = p.encode().unwrap();
            assert_eq!(plain.len(), 4 + n * ENTRY_LEN);
            assert_eq!(IndexPage::decode(&plain).unwrap(), p);
            let (id, sealed) = seal_page(&k, &p).unwrap();
            assert_eq!(open_page(&k, &id, &sealed).unwrap(), p);
            assert_eq!(
                seal_page(&k, &p).unwrap(),
                (id, sealed),
                "same page, same bytes"
            );
        }
        assert!(IndexEntry::ZERO.is_zero());
        assert!(IndexPage::decode(&page(1, 0).encode().unwrap())
            .unwrap()
            .entries[0]
            .is_zero());
    }

    #[test]
    fn bad_counts_and_lengths_are_refused() {
        assert!(IndexPage { entries: vec![] }.encode().is_err());
        assert!(page(1025, 1).encode().is_err());
        let plain = page(3, 1).encode().unwrap();
        for n in 0..plain.len() {
            assert!(IndexPage::decode(&plain[..n]).is_err(), "{n}");
        }
        let mut longer = plain.clone();
        longer.push(0);
        assert!(IndexPage::decode(&longer).is_err());
        for count in [0u32, 2, 4, 1025, u32::MAX] {
            let mut p = plain.clone();
            p[..4].copy_from_slice(&count.to_le_bytes());
            assert!(IndexPage::decode(&p).is_err(), "{count}");
        }
    }

    #[test]
    fn implausible_entries_are_refused() {
        let good = entry(&mut Rng(5));
        for bad in [
            IndexEntry { offset: 0, ..good },
            IndexEntry { offset: 3, ..good },
            IndexEntry { len: 0, ..good },
            IndexEntry { len: 39, ..good },
            IndexEntry {
                len: BlobKind::Chunk.max_sealed() + 1,
                ..good
            },
            IndexEntry {
                offset: (MAX_PACK_LEN - 40) as u32,
                len: 41,
                ..good
            },
            IndexEntry {
                chunk: ChunkId([0; 32]),
                pack: PackId([0; 16]),
                offset: 0,
                len: 1,
            },
        ] {
            let plain = IndexPage { entries: vec![bad] }.encode().unwrap();
            assert!(IndexPage::decode(&plain).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_page_opened_under_another_id_fails() {
        let k = keys();
        let (a, sealed) = seal_page(&k, &page(10, 1)).unwrap();
        let (b, _) = seal_page(&k, &page(10, 2)).unwrap();
        assert!(matches!(
            open_page(&k, &b, &sealed),
            Err(FormatError::TagMismatch { .. })
        ));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(open_page(&k, &a, &bad).is_err(), "byte {i}");
        }
        // Other bytes sealed under a's id by a buggy writer: the id check catches it.
        let other = page(10, 3).encode().unwrap();
        let forged = blob::seal(&k, BlobKind::IndexPage, &a.0, &other).unwrap();
        assert!(matches!(
            open_page(&k, &a, &forged),
            Err(FormatError::IdMismatch { .. })
        ));
    }
}
