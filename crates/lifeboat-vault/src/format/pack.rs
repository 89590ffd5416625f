//! Packs (vault-format.md, "Packs"): many blobs back to back in one object, so a point is a
//! few large uploads instead of millions of small ones. The trailer at the end lists every
//! blob; it is sealed and bound to the pack id, and every offset in it is checked.
//!
//! ```text
//! "LBP1" | blob | blob | … | trailer blob | trailer length (u32) | "LBPE"
//! ```

use bytes::Bytes;

use super::blob::{self, BlobHeader, BlobKind, BLOB_OVERHEAD, MAX_TRAILER_PLAIN};
use super::error::{FormatError, Result};
use super::ids::{ChunkId, PackId, PageId};
use super::keys::VaultKeys;

pub const PACK_MAGIC: [u8; 4] = *b"LBP1";
pub const PACK_END_MAGIC: [u8; 4] = *b"LBPE";
pub const PACK_HEAD_LEN: usize = 4;
/// Trailer length (u32) and end magic.
pub const FOOTER_LEN: usize = 8;
/// No pack is larger than this.
pub const MAX_PACK_LEN: u64 = 64 << 20;
/// No pack holds more blobs than its trailer can list.
pub const MAX_PACK_BLOBS: u32 = 262_144;
/// Bytes per trailer entry.
pub const TRAILER_ENTRY_LEN: usize = 48;

const _: () =
    assert!(4 + MAX_PACK_BLOBS as usize * TRAILER_ENTRY_LEN == MAX_TRAILER_PLAIN as usize);

/// The id of a blob a pack can hold: chunks and index pages only.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PackedId {
    Chunk(ChunkId),
    Page(PageId),
}

impl PackedId {
    pub fn kind(&self) -> BlobKind {
        match self {
            PackedId::Chunk(_) => BlobKind::Chunk,
            PackedId::Page(_) => BlobKind::IndexPage,
        }
    }

    fn bytes(&self) -> &[u8; 32] {
        match self {
            PackedId::Chunk(c) => &c.0,
            PackedId::Page(p) => &p.0,
        }
    }
}

/// One blob as the trailer lists it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TrailerEntry {
    pub id: PackedId,
    pub offset: u32,
    /// Sealed length.
    pub len: u32,
    pub plain_len: u32,
}

/// Builds one pack in memory, then hands it over whole for one upload. The blobs are kept
/// as they were sealed, not copied into one buffer: the upload sends them in order (a
/// copy of every byte was 5% of a full backup's time).
pub struct PackBuilder {
    id: PackId,
    parts: Vec<Bytes>,
    len: u64,
    entries: Vec<TrailerEntry>,
}

/// The sealed size of a trailer listing `n` blobs, uncompressed (the worst case).
fn max_trailer_sealed(n: usize) -> u64 {
    (BLOB_OVERHEAD + 4 + n * TRAILER_ENTRY_LEN) as u64
}

impl PackBuilder {
    pub fn new(id: PackId) -> Self {
        PackBuilder {
            id,
            parts: vec![Bytes::from_static(&PACK_MAGIC)],
            len: PACK_MAGIC.len() as u64,
            entries: Vec::new(),
        }
    }

    pub fn id(&self) -> &PackId {
        &self.id
    }

    /// Bytes so far, without the trailer: compare with the vault's `pack_target`.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True while no blob has been pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn blob_count(&self) -> u32 {
        self.entries.len() as u32
    }

    /// True when the pack should be finished: it reached `target` bytes or the blob limit.
    pub fn is_full(&self, target: u64) -> bool {
        self.len() >= target || self.entries.len() >= MAX_PACK_BLOBS as usize
    }

    /// Appends a sealed chunk or page and returns where it lies (offset, sealed length),
    /// for the index page or manifest that will point at it. Fails with `PackFull` when the
    /// pack could no longer stay within 64 MiB and 262,144 blobs.
    pub fn push(&mut self, id: PackedId, sealed: impl Into<Bytes>) -> Result<(u32, u32)> {
        let sealed: Bytes = sealed.into();
        let kind = id.kind();
        let object = || blob::describe(kind, id.bytes());
        let header = BlobHeader::parse(kind, kind.max_plain(), &sealed, &object)?;
        let n = self.entries.len();
        let end = self.len + sealed.len() as u64;
        if n >= MAX_PACK_BLOBS as usize
            || end + max_trailer_sealed(n + 1) + FOOTER_LEN as u64 > MAX_PACK_LEN
        {
            return Err(FormatError::PackFull {
                pack: self.id.to_string(),
                blobs: n as u32,
                bytes: self.len,
            });
        }
        // Both fit u32: the pack is under 64 MiB.
        let offset = self.len as u32;
        let len = sealed.len() as u32;
        self.len = end;
        self.parts.push(sealed);
        self.entries.push(TrailerEntry {
            id,
            offset,
            len,
            plain_len: header.plain_len,
        });
        Ok((offset, len))
    }

    /// The blobs pushed so far, in order.
    pub fn entries(&self) -> &[TrailerEntry] {
        &self.entries
    }

    /// Seals the trailer and returns the whole pack, ready to upload.
    pub fn finish(self, keys: &VaultKeys) -> Result<Bytes> {
        Ok(self.finish_parts(keys)?.concat().into())
    }

    /// `finish`, as the pack's parts in order (to upload without joining them).
    pub fn finish_parts(mut self, keys: &VaultKeys) -> Result<Vec<Bytes>> {
        let mut plain = Vec::with_capacity(4 + self.entries.len() * TRAILER_ENTRY_LEN);
        plain.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            plain.extend_from_slice(e.id.bytes());
            plain.extend_from_slice(&[e.id.kind() as u8, 0, 0, 0]);
            plain.extend_from_slice(&e.offset.to_le_bytes());
            plain.extend_from_slice(&e.len.to_le_bytes());
            plain.extend_from_slice(&e.plain_len.to_le_bytes());
        }
        let mut tail = blob::seal(keys, BlobKind::PackTrailer, &self.id.0, &plain)?;
        let trailer_len = tail.len() as u32;
        tail.extend_from_slice(&trailer_len.to_le_bytes());
        tail.extend_from_slice(&PACK_END_MAGIC);
        self.parts.push(tail.into());
        Ok(self.parts)
    }
}

fn pack_object(id: &PackId) -> String {
    format!("pack {id}")
}

/// Reads the last 8 bytes of a pack: checks the end magic and returns the trailer's sealed
/// length, within the format's bounds, so the caller can fetch exactly the trailer.
pub fn trailer_len_from_footer(id: &PackId, last8: &[u8]) -> Result<u32> {
    let bad = |r: String| FormatError::damaged(pack_object(id), r);
    let Ok(footer) = <[u8; FOOTER_LEN]>::try_from(last8) else {
        return Err(bad(format!(
            "footer of {} bytes, expected {FOOTER_LEN}",
            last8.len()
        )));
    };
    if footer[4..] != PACK_END_MAGIC {
        return Err(bad(format!(
            "bad end magic {:02x?} (an unfinished or foreign object)",
            &footer[4..]
        )));
    }
    let len = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]);
    let max = BlobKind::PackTrailer.max_sealed();
    if (len as usize) < BLOB_OVERHEAD || len > max {
        return Err(bad(format!(
            "trailer length {len} is outside {BLOB_OVERHEAD}..={max}"
        )));
    }
    Ok(len)
}

/// Checks a pack's first 4 bytes (verify reads whole packs).
pub fn check_pack_head(id: &PackId, first4: &[u8]) -> Result<()> {
    if first4 != PACK_MAGIC {
        return Err(FormatError::damaged(pack_object(id), "bad pack magic"));
    }
    Ok(())
}

/// Opens a pack's trailer. `pack_len` is the pack object's size, `tail` its last
/// `trailer length + 8` bytes. Every entry is checked: blobs back to back from offset 4,
/// the trailer right after the last one, lengths within the limits of their kind.
pub fn read_trailer(
    keys: &VaultKeys,
    id: &PackId,
    pack_len: u64,
    tail: &[u8],
) -> Result<Vec<TrailerEntry>> {
    let bad = |r: String| FormatError::damaged(pack_object(id), r);
    if pack_len > MAX_PACK_LEN {
        return Err(bad(format!(
            "{pack_len} bytes is over the pack limit of {MAX_PACK_LEN}"
        )));
    }
    if tail.len() < FOOTER_LEN {
        return Err(bad(format!("tail of {} bytes has no footer", tail.len())));
    }
    let (trailer, footer) = tail.split_at(tail.len() - FOOTER_LEN);
    let tlen = trailer_len_from_footer(id, footer)?;
    if trailer.len() != tlen as usize {
        return Err(bad(format!(
            "tail holds {} trailer bytes, footer says {tlen}",
            trailer.len()
        )));
    }
    let Some(start) = pack_len
        .checked_sub((FOOTER_LEN + trailer.len()) as u64)
        .filter(|&s| s >= PACK_HEAD_LEN as u64)
    else {
        return Err(bad(format!(
            "{pack_len} bytes cannot hold a trailer of {tlen} bytes"
        )));
    };
    let plain = blob::open(
        keys,
        BlobKind::PackTrailer,
        &id.0,
        trailer,
        MAX_TRAILER_PLAIN,
    )?;
    decode_trailer(id, &plain, start)
}

/// Decodes a trailer plaintext for a pack whose trailer starts at `trailer_start`.
pub fn decode_trailer(id: &PackId, plain: &[u8], trailer_start: u64) -> Result<Vec<TrailerEntry>> {
    let bad = |r: String| FormatError::damaged(pack_object(id), r);
    let Some((count, body)) = plain.split_first_chunk::<4>() else {
        return Err(bad("trailer too short".into()));
    };
    let count = u32::from_le_bytes(*count);
    if count > MAX_PACK_BLOBS || body.len() != count as usize * TRAILER_ENTRY_LEN {
        return Err(bad(format!(
            "trailer of {} bytes for {count} blobs",
            plain.len()
        )));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut next = PACK_HEAD_LEN as u64;
    for (i, e) in body.chunks_exact(TRAILER_ENTRY_LEN).enumerate() {
        let u32_at = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]);
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&e[..32]);
        let id = match e[32] {
            1 => PackedId::Chunk(ChunkId(raw)),
            2 => PackedId::Page(PageId(raw)),
            k => {
                return Err(bad(format!(
                    "trailer entry {i}: kind {k} cannot be in a pack"
                )))
            }
        };
        if e[33..36] != [0, 0, 0] {
            return Err(bad(format!(
                "trailer entry {i}: reserved bytes are not zero"
            )));
        }
        let (offset, len, plain_len) = (u32_at(36), u32_at(40), u32_at(44));
        let kind = id.kind();
        let len_ok = len as usize >= BLOB_OVERHEAD
            && plain_len <= kind.max_plain()
            && u64::from(len)
                <= u64::from(plain_len) + u64::from(blob::STORED_SLACK) + BLOB_OVERHEAD as u64;
        if u64::from(offset) != next || !len_ok {
            return Err(bad(format!(
                "trailer entry {i}: {len} bytes ({plain_len} plain) at offset {offset}, expected offset {next}"
            )));
        }
        next += u64::from(len);
        if next > trailer_start {
            return Err(bad(format!(
                "trailer entry {i} runs into the trailer at {trailer_start}"
            )));
        }
        entries.push(TrailerEntry {
            id,
            offset,
            len,
            plain_len,
        });
    }
    if next != trailer_start {
        return Err(bad(format!(
            "blobs end at {next} but the trailer starts at {trailer_start}"
        )));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::blob::{open_chunk, seal_chunk, MAX_CHUNK_PLAIN};
    use crate::format::page::{open_page, seal_page, IndexEntry, IndexPage};
    use crate::format::tests::{keys, Rng};

    /// A pack of three chunks and one page; returns it with the push results.
    fn sample() -> (PackId, Bytes, Vec<(PackedId, u32, u32)>) {
        let k = keys();
        let id = PackId([0x5a; 16]);
        let mut b = PackBuilder::new(id);
        let mut pushed = vec![];
        let mut rng = Rng(3);
        for plain in [vec![1u8; 9000], rng.bytes(3000), b"x".to_vec()] {
            let (cid, sealed) = seal_chunk(&k, &plain).unwrap();
            let (o, l) = b.push(PackedId::Chunk(cid), sealed.clone()).unwrap();
            pushed.push((PackedId::Chunk(cid), o, l));
        }
        let (pid, sealed) = seal_page(
            &k,
            &IndexPage {
                entries: vec![IndexEntry::ZERO; 7],
            },
        )
        .unwrap();
        let (o, l) = b.push(PackedId::Page(pid), sealed.clone()).unwrap();
        pushed.push((PackedId::Page(pid), o, l));
        assert_eq!(b.blob_count(), 4);
        (id, b.finish(&k).unwrap(), pushed)
    }

    fn tail(pack: &[u8]) -> &[u8] {
        let id = PackId([0x5a; 16]);
        let tlen = trailer_len_from_footer(&id, &pack[pack.len() - 8..]).unwrap() as usize;
        &pack[pack.len() - 8 - tlen..]
    }

    #[test]
    fn pack_round_trips() {
        let k = keys();
        let (id, pack, pushed) = sample();
        assert_eq!(&pack[..4], b"LBP1");
        assert_eq!(&pack[pack.len() - 4..], b"LBPE");
        check_pack_head(&id, &pack[..4]).unwrap();
        let entries = read_trailer(&k, &id, pack.len() as u64, tail(&pack)).unwrap();
        assert_eq!(entries.len(), pushed.len());
        for (e, (pid, o, l)) in entries.iter().zip(&pushed) {
            assert_eq!((e.id, e.offset, e.len), (*pid, *o, *l));
            let blob = &pack[*o as usize..(*o + *l) as usize];
            match pid {
                PackedId::Chunk(c) => {
                    assert_eq!(
                        open_chunk(&k, c, blob, MAX_CHUNK_PLAIN).unwrap().len(),
                        e.plain_len as usize
                    )
                }
                PackedId::Page(p) => assert_eq!(open_page(&k, p, blob).unwrap().entries.len(), 7),
            }
        }
    }

    #[test]
    fn empty_pack_round_trips() {
        let k = keys();
        let id = PackId([0x5a; 16]);
        let pack = PackBuilder::new(id).finish(&k).unwrap();
        assert!(read_trailer(&k, &id, pack.len() as u64, tail(&pack))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn every_tampered_tail_byte_fails() {
        let k = keys();
        let (id, pack, _) = sample();
        let t = tail(&pack).to_vec();
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 0x01;
            assert!(
                read_trailer(&k, &id, pack.len() as u64, &bad).is_err(),
                "byte {i}"
            );
        }
        for n in 0..t.len() {
            assert!(
                read_trailer(&k, &id, pack.len() as u64, &t[t.len() - n..]).is_err(),
                "{n}"
            );
        }
        assert!(matches!(
            read_trailer(&k, &PackId([1; 16]), pack.len() as u64, &t),
            Err(FormatError::TagMismatch { .. })
        ));
        for len in [
            0,
            8,
            pack.len() as u64 - 1,
            pack.len() as u64 + 1,
            MAX_PACK_LEN + 1,
            u64::MAX,
        ] {
            assert!(read_trailer(&k, &id, len, &t).is_err(), "{len}");
        }
    }

    #[test]
    fn footer_bounds() {
        let id = PackId([0; 16]);
        assert!(trailer_len_from_footer(&id, b"\x28\0\0\0LBPE").is_ok());
        assert!(trailer_len_from_footer(&id, b"\x27\0\0\0LBPE").is_err());
        assert!(trailer_len_from_footer(&id, b"\xff\xff\xff\xffLBPE").is_err());
        assert!(trailer_len_from_footer(&id, b"\x28\0\0\0LBP1").is_err());
        assert!(trailer_len_from_footer(&id, b"\x28\0\0\0LBPE!").is_err());
        assert!(check_pack_head(&id, b"LBB1").is_err());
    }

    fn trailer(entries: &[(u8, u32, u32, u32)]) -> Vec<u8> {
        let mut t = (entries.len() as u32).to_le_bytes().to_vec();
        for &(kind, off, len, plain) in entries {
            t.extend_from_slice(&[7; 32]);
            t.extend_from_slice(&[kind, 0, 0, 0]);
            for v in [off, len, plain] {
                t.extend_from_slice(&v.to_le_bytes());
            }
        }
        t
    }

    #[test]
    fn trailer_entries_must_lie_back_to_back() {
        let id = PackId([0; 16]);
        let ok = trailer(&[(1, 4, 100, 60), (2, 104, 50, 10)]);
        assert_eq!(decode_trailer(&id, &ok, 154).unwrap().len(), 2);
        for (t, start) in [
            (ok.clone(), 153),                                    // runs into the trailer
            (ok.clone(), 155),                                    // gap before the trailer
            (trailer(&[(1, 5, 100, 60)]), 105),                   // gap after the magic
            (trailer(&[(1, 4, 100, 60), (2, 100, 50, 10)]), 150), // overlap
            (trailer(&[(1, 4, 100, 60), (2, 108, 50, 10)]), 158), // gap
            (trailer(&[(3, 4, 100, 60)]), 104),                   // a manifest in a pack
            (trailer(&[(1, 4, 39, 0)]), 43),                      // shorter than a blob
            (trailer(&[(1, 4, 2000, 10)]), 2004), // sealed too long for its plaintext
            (trailer(&[(2, 4, 100, 60000)]), 104), // page over its limit
            (ok[..ok.len() - 1].to_vec(), 154),   // truncated
            (vec![], 4),
        ] {
            assert!(
                decode_trailer(&id, &t, start).is_err(),
                "{start} {:?}",
                &t[..t.len().min(8)]
            );
        }
        let mut reserved = ok.clone();
        reserved[4 + 33] = 1;
        assert!(decode_trailer(&id, &reserved, 154).is_err());
        let mut count = ok.clone();
        count[..4].copy_from_slice(&(MAX_PACK_BLOBS + 1).to_le_bytes());
        assert!(decode_trailer(&id, &count, 154).is_err());
    }

    #[test]
    fn a_pack_refuses_more_than_it_may_hold() {
        let k = keys();
        let (cid, small) = seal_chunk(&k, b"").unwrap();
        let mut b = PackBuilder::new(PackId([1; 16]));
        for _ in 0..MAX_PACK_BLOBS {
            b.push(PackedId::Chunk(cid), small.clone()).unwrap();
        }
        assert!(b.is_full(u64::MAX));
        assert!(matches!(
            b.push(PackedId::Chunk(cid), small.clone()),
            Err(FormatError::PackFull { .. })
        ));
        let pack = b.finish(&k).unwrap();
        assert!(pack.len() as u64 <= MAX_PACK_LEN);
        let id = PackId([1; 16]);
        let tlen = trailer_len_from_footer(&id, &pack[pack.len() - 8..]).unwrap() as usize;
        let entries =
            read_trailer(&k, &id, pack.len() as u64, &pack[pack.len() - 8 - tlen..]).unwrap();
        assert_eq!(entries.len(), MAX_PACK_BLOBS as usize);

        let (cid, big) = seal_chunk(&k, &Rng(1).bytes(MAX_CHUNK_PLAIN as usize)).unwrap();
        let mut b = PackBuilder::new(PackId([2; 16]));
        while b.push(PackedId::Chunk(cid), big.clone()).is_ok() {}
        assert!(b.len() + big.len() as u64 > MAX_PACK_LEN - 1000);
        assert!(b.finish(&k).unwrap().len() as u64 <= MAX_PACK_LEN);
    }

    #[test]
    fn push_checks_the_blob_it_is_given() {
        let k = keys();
        let (cid, sealed) = seal_chunk(&k, b"abc").unwrap();
        let mut b = PackBuilder::new(PackId([1; 16]));
        assert!(
            b.push(PackedId::Page(PageId(cid.0)), sealed.clone())
                .is_err(),
            "a chunk pushed as a page"
        );
        assert!(b.push(PackedId::Chunk(cid), sealed[1..].to_vec()).is_err());
        assert!(b.is_empty());
    }
}
