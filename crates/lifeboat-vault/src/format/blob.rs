//! Sealed blobs (vault-format.md, "Blobs"): a fixed 24-byte header, then the AES-256-GCM
//! ciphertext of the (maybe zstd-compressed) plaintext, then the tag. The AAD is the header
//! and the blob's binding, so a blob cannot be passed off as another object.
//!
//! Reading trusts nothing: header fields and lengths are checked against the kind's limits
//! before any allocation, the tag before decompression, and decompression writes into a
//! buffer of exactly the authenticated plaintext length, never what the zstd frame claims.

use std::fmt;

use super::error::{FormatError, Result};
use super::ids::ChunkId;
use super::keys::VaultKeys;

pub const BLOB_MAGIC: [u8; 4] = *b"LBB1";
pub const HEADER_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Header plus tag: the size of a sealed empty plaintext, the smallest possible blob.
pub const BLOB_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// How much longer than its plaintext a compressed payload may be (zstd framing).
pub const STORED_SLACK: u32 = 1024;
/// Flag bit 0: the payload is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;

/// Largest chunk plaintext (the largest `chunk_size`).
pub const MAX_CHUNK_PLAIN: u32 = 4 << 20;
/// Largest index page plaintext: count + 1,024 entries of 56 bytes.
pub const MAX_PAGE_PLAIN: u32 = 4 + 1024 * 56;
/// Largest pack trailer plaintext: count + 262,144 entries of 48 bytes.
pub const MAX_TRAILER_PLAIN: u32 = 4 + 262_144 * 48;
/// Largest manifest plaintext.
pub const MAX_MANIFEST_PLAIN: u32 = 16 << 20;

const _: () = assert!(HEADER_LEN == 4 + 1 + 1 + 2 + 4 + 12);
const _: () = assert!(
    MAX_TRAILER_PLAIN as usize + BLOB_OVERHEAD + STORED_SLACK as usize <= u32::MAX as usize
);

/// What a blob holds; the byte at offset 4 of its header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum BlobKind {
    Chunk = 1,
    IndexPage = 2,
    Manifest = 3,
    PackTrailer = 4,
}

impl BlobKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => BlobKind::Chunk,
            2 => BlobKind::IndexPage,
            3 => BlobKind::Manifest,
            4 => BlobKind::PackTrailer,
            _ => return None,
        })
    }

    /// The format's limit on this kind's plaintext length.
    pub fn max_plain(self) -> u32 {
        match self {
            BlobKind::Chunk => MAX_CHUNK_PLAIN,
            BlobKind::IndexPage => MAX_PAGE_PLAIN,
            BlobKind::Manifest => MAX_MANIFEST_PLAIN,
            BlobKind::PackTrailer => MAX_TRAILER_PLAIN,
        }
    }

    /// The largest sealed blob of this kind a reader accepts.
    pub fn max_sealed(self) -> u32 {
        self.max_plain() + STORED_SLACK + BLOB_OVERHEAD as u32
    }

    /// Chunks and pages get content-addressed nonces (and so dedup byte for byte);
    /// manifests and trailers random ones.
    fn content_addressed(self) -> bool {
        matches!(self, BlobKind::Chunk | BlobKind::IndexPage)
    }
}

impl fmt::Display for BlobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobKind::Chunk => "chunk",
            BlobKind::IndexPage => "index page",
            BlobKind::Manifest => "manifest",
            BlobKind::PackTrailer => "pack trailer",
        })
    }
}

/// The decoded 24-byte header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlobHeader {
    pub kind: BlobKind,
    pub flags: u8,
    pub plain_len: u32,
    pub nonce: [u8; 12],
}

impl BlobHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&BLOB_MAGIC);
        h[4] = self.kind as u8;
        h[5] = self.flags;
        h[8..12].copy_from_slice(&self.plain_len.to_le_bytes());
        h[12..24].copy_from_slice(&self.nonce);
        h
    }

    /// Parses and checks a sealed blob's header and total length against the format's
    /// rules for `expected` kind and a plaintext of at most `max_plain` bytes.
    pub fn parse(
        expected: BlobKind,
        max_plain: u32,
        sealed: &[u8],
        object: &dyn Fn() -> String,
    ) -> Result<Self> {
        let bad = |reason: String| FormatError::damaged(object(), reason);
        if sealed.len() < BLOB_OVERHEAD {
            return Err(bad(format!(
                "{} bytes is shorter than a blob ({BLOB_OVERHEAD})",
                sealed.len()
            )));
        }
        if sealed[..4] != BLOB_MAGIC {
            return Err(bad(format!("bad blob magic {:02x?}", &sealed[..4])));
        }
        let kind = match BlobKind::from_u8(sealed[4]) {
            Some(k) if k == expected => k,
            Some(k) => return Err(bad(format!("holds a {k} blob, expected a {expected}"))),
            None => return Err(bad(format!("unknown blob kind {}", sealed[4]))),
        };
        let flags = sealed[5];
        if flags & !FLAG_ZSTD != 0 {
            return Err(bad(format!("unknown blob flags {flags:#04x}")));
        }
        if sealed[6..8] != [0, 0] {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        let plain_len = u32::from_le_bytes([sealed[8], sealed[9], sealed[10], sealed[11]]);
        let limit = max_plain.min(kind.max_plain());
        if plain_len > limit {
            return Err(bad(format!(
                "plaintext length {plain_len} is over the limit of {limit}"
            )));
        }
        let stored = (sealed.len() - BLOB_OVERHEAD) as u64;
        let ok = if flags & FLAG_ZSTD != 0 {
            stored <= u64::from(plain_len) + u64::from(STORED_SLACK)
        } else {
            stored == u64::from(plain_len)
        };
        if !ok {
            return Err(bad(format!(
                "stored payload of {stored} bytes does not fit a plaintext of {plain_len} bytes"
            )));
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[12..24]);
        Ok(BlobHeader {
            kind,
            flags,
            plain_len,
            nonce,
        })
    }
}

/// How a blob is named in errors: what it is and which one.
pub(crate) fn describe(kind: BlobKind, binding: &[u8]) -> String {
    match kind {
        BlobKind::Manifest => {
            String::from_utf8_lossy(&binding[..binding.len().min(200)]).into_owned()
        }
        BlobKind::PackTrailer => format!("trailer of pack {}", hex::encode(binding)),
        k => format!("{k} {}", hex::encode(binding)),
    }
}

/// Bytes probed at the start, middle and end of a large plaintext before compressing it.
const PROBE: usize = 4 << 10;

thread_local! {
    /// One zstd context per thread: creating one per chunk cost about 5% of a backup.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn saves_enough(plain: usize, compressed: usize) -> bool {
    compressed < plain && (plain - compressed) * 32 >= plain
}

/// zstd level 1, kept only when it saves at least 1/32 of the size. Random data (already
/// compressed or encrypted in the guest) is recognised from three small probes and not
/// compressed at all: zstd's full pass over it would be thrown away.
#[cfg(test)]
fn compress(plaintext: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    compress_into(plaintext, &mut out).then_some(out)
}

/// `compress`, appending the compressed bytes to `out`; false (and `out` as it was) when
/// compression is not worth it.
fn compress_into(plaintext: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    COMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = zstd::bulk::Compressor::new(1).ok();
            }
            let z = cell.as_mut()?;
            if plaintext.len() >= 8 * PROBE {
                let mid = plaintext.len() / 2;
                let probes = [
                    &plaintext[..PROBE],
                    &plaintext[mid..mid + PROBE],
                    &plaintext[plaintext.len() - PROBE..],
                ];
                let any = probes.iter().any(|p| {
                    z.compress(p)
                        .map(|c| saves_enough(p.len(), c.len()))
                        .unwrap_or(false)
                });
                if !any {
                    return None;
                }
            }
            out.reserve(zstd::zstd_safe::compress_bound(plaintext.len()));
            // Appended after `start`: a plain Vec would be written from its beginning.
            let mut at = std::io::Cursor::new(&mut *out);
            at.set_position(start as u64);
            let n = z.compress_to_buffer(plaintext, &mut at).ok()?;
            saves_enough(plaintext.len(), n).then_some(())
        })
        .map(|()| true)
        .unwrap_or_else(|| {
            out.truncate(start);
            false
        })
}

/// Seals `plaintext` as a blob of `kind` bound to `binding`. Crate-private: chunks and
/// pages are sealed through `seal_chunk`/`seal_page` so their id is always computed here.
pub(crate) fn seal(
    keys: &VaultKeys,
    kind: BlobKind,
    binding: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let len = u32::try_from(plaintext.len())
        .ok()
        .filter(|&l| l <= kind.max_plain());
    let Some(plain_len) = len else {
        return Err(FormatError::TooLarge {
            object: describe(kind, binding),
            len: plaintext.len() as u64,
            limit: kind.max_plain().into(),
        });
    };
    // The blob is built in one buffer: header space, payload (compressed straight into
    // it, or the plaintext copied once), then encrypted in place and the tag appended.
    let mut out = Vec::with_capacity(
        BLOB_OVERHEAD + zstd::zstd_safe::compress_bound(plaintext.len()).max(plaintext.len()),
    );
    out.resize(HEADER_LEN, 0);
    let flags = if compress_into(plaintext, &mut out) {
        FLAG_ZSTD
    } else {
        out.extend_from_slice(plaintext);
        0
    };
    seal_in_place(keys, kind, flags, plain_len, binding, out)
}

/// Seals `out` = header space (HEADER_LEN bytes, overwritten) followed by the payload.
/// `fuzzing_seal_payload` exposes it so fuzzers can reach decompression with arbitrary
/// frames; nothing else may.
fn seal_in_place(
    keys: &VaultKeys,
    kind: BlobKind,
    flags: u8,
    plain_len: u32,
    binding: &[u8],
    mut out: Vec<u8>,
) -> Result<Vec<u8>> {
    let payload = &out[HEADER_LEN..];
    let nonce = if kind.content_addressed() {
        let id: &[u8; 32] = binding.try_into().map_err(|_| FormatError::Invalid {
            what: "blob binding",
            value: hex::encode(binding),
            rule: "chunks and pages are bound to their 32-byte id",
        })?;
        // An uncompressed payload is the plaintext its id already names (vault-format.md).
        let named = if flags & FLAG_ZSTD == 0 {
            &[][..]
        } else {
            payload
        };
        keys.nonce_for(kind, flags, id, named)
    } else {
        let mut n = [0u8; 12];
        getrandom::fill(&mut n).map_err(FormatError::Random)?;
        n
    };
    let header = BlobHeader {
        kind,
        flags,
        plain_len,
        nonce,
    }
    .encode();
    out[..HEADER_LEN].copy_from_slice(&header);
    let payload_len = out.len() - HEADER_LEN;
    let aad = [&header[..], binding].concat();
    let tag = keys
        .cipher()
        .seal_in_place(&nonce, &aad, &mut out[HEADER_LEN..])
        .map_err(|_| FormatError::TooLarge {
            object: describe(kind, binding),
            len: payload_len as u64,
            limit: kind.max_plain().into(),
        })?;
    out.extend_from_slice(&tag);
    // Room was made for the worst case; a compressed blob waits in its pack for upload,
    // so give back the rest (in place: glibc shrinks without copying).
    if out.capacity() - out.len() > out.len() / 8 {
        out.shrink_to_fit();
    }
    Ok(out)
}

/// Test and fuzz hook: seal an arbitrary payload with arbitrary flags and length.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub fn fuzzing_seal_payload(
    keys: &VaultKeys,
    kind: BlobKind,
    flags: u8,
    plain_len: u32,
    binding: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; HEADER_LEN];
    out.extend_from_slice(payload);
    seal_in_place(keys, kind, flags, plain_len, binding, out)
}

/// Opens a blob of `expected` kind bound to `binding`, whose plaintext may be at most
/// `max_plain` bytes (further capped by the kind's limit). Crate-private: chunks and pages
/// are opened through `open_chunk`/`open_page`, which also check the id.
pub(crate) fn open(
    keys: &VaultKeys,
    expected: BlobKind,
    binding: &[u8],
    sealed: &[u8],
    max_plain: u32,
) -> Result<Vec<u8>> {
    let h = BlobHeader::parse(expected, max_plain, sealed, &|| describe(expected, binding))?;
    let mut out = vec![0u8; h.plain_len as usize];
    let n = open_into(keys, expected, binding, sealed, max_plain, &mut out)?;
    out.truncate(n);
    Ok(out)
}

thread_local! {
    /// Per-thread scratch for decrypting compressed payloads and a zstd context: a new
    /// context per chunk was 2% of a restore.
    static OPENER: std::cell::RefCell<(Vec<u8>, Option<zstd::bulk::Decompressor<'static>>)> =
        const { std::cell::RefCell::new((Vec::new(), None)) };
}

/// `open`, writing the plaintext into `out` (at least the header's plaintext length) and
/// returning its length. An uncompressed payload is decrypted in place in `out`, with no
/// copy in between.
pub(crate) fn open_into(
    keys: &VaultKeys,
    expected: BlobKind,
    binding: &[u8],
    sealed: &[u8],
    max_plain: u32,
    out: &mut [u8],
) -> Result<usize> {
    let object = || describe(expected, binding);
    let h = BlobHeader::parse(expected, max_plain, sealed, &object)?;
    let plain_len = h.plain_len as usize;
    if out.len() < plain_len {
        return Err(FormatError::TooLarge {
            object: object(),
            len: plain_len as u64,
            limit: out.len() as u64,
        });
    }
    let aad = [&sealed[..HEADER_LEN], binding].concat();
    let (payload, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - BLOB_OVERHEAD);
    let tag: &[u8; TAG_LEN] = tag.try_into().expect("parse checked the length");
    if h.flags & FLAG_ZSTD == 0 {
        if payload.len() != plain_len {
            return Err(FormatError::damaged(
                object(),
                format!("holds {} bytes, header says {plain_len}", payload.len()),
            ));
        }
        let buf = &mut out[..plain_len];
        buf.copy_from_slice(payload);
        keys.cipher()
            .open_in_place(&h.nonce, &aad, buf, tag)
            .map_err(|_| FormatError::TagMismatch { object: object() })?;
        return Ok(plain_len);
    }
    OPENER.with(|cell| {
        let (scratch, decompressor) = &mut *cell.borrow_mut();
        scratch.clear();
        scratch.extend_from_slice(payload);
        keys.cipher()
            .open_in_place(&h.nonce, &aad, scratch, tag)
            .map_err(|_| FormatError::TagMismatch { object: object() })?;
        if decompressor.is_none() {
            *decompressor = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| FormatError::damaged(object(), format!("zstd: {e}")))?,
            );
        }
        let d = decompressor.as_mut().expect("set above");
        // The output is exactly the authenticated length: a frame claiming more fails, one
        // yielding less is caught below.
        let n = d
            .decompress_to_buffer(&scratch[..], &mut out[..plain_len])
            .map_err(|e| FormatError::damaged(object(), format!("zstd: {e}")))?;
        if n != plain_len {
            return Err(FormatError::damaged(
                object(),
                format!("decompresses to {n} bytes, header says {plain_len}"),
            ));
        }
        Ok(n)
    })
}

/// Seals a chunk and returns its id: the only way to get a chunk id for sealed bytes, so a
/// sealed chunk always carries the id of its own plaintext.
pub fn seal_chunk(keys: &VaultKeys, plaintext: &[u8]) -> Result<(ChunkId, Vec<u8>)> {
    let id = keys.chunk_id(plaintext);
    let sealed = seal_chunk_with_id(keys, &id, plaintext)?;
    Ok((id, sealed))
}

/// Seals a chunk whose id the caller just computed with `keys.chunk_id(plaintext)` (the
/// writer needs the id first, to compare with the parent's). Crate-private, for the same
/// reason as `seal`.
pub(crate) fn seal_chunk_with_id(
    keys: &VaultKeys,
    id: &ChunkId,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    debug_assert_eq!(keys.chunk_id(plaintext), *id);
    seal(keys, BlobKind::Chunk, &id.0, plaintext)
}

/// Opens a chunk blob expected to hold `id`, with a plaintext of at most `max_len` bytes
/// (the disk's chunk size), and proves that the plaintext has that id.
/// `open_chunk` into `out` (at least the chunk's length); returns the length.
pub fn open_chunk_into(
    keys: &VaultKeys,
    id: &ChunkId,
    sealed: &[u8],
    out: &mut [u8],
) -> Result<usize> {
    let max = u32::try_from(out.len()).unwrap_or(u32::MAX);
    let n = open_into(keys, BlobKind::Chunk, &id.0, sealed, max, out)?;
    let found = keys.chunk_id(&out[..n]);
    if found != *id {
        return Err(FormatError::IdMismatch {
            object: describe(BlobKind::Chunk, &id.0),
            found: found.to_string(),
        });
    }
    Ok(n)
}

pub fn open_chunk(keys: &VaultKeys, id: &ChunkId, sealed: &[u8], max_len: u32) -> Result<Vec<u8>> {
    let plain = open(keys, BlobKind::Chunk, &id.0, sealed, max_len)?;
    let found = keys.chunk_id(&plain);
    if found != *id {
        return Err(FormatError::IdMismatch {
            object: describe(BlobKind::Chunk, &id.0),
            found: found.to_string(),
        });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::keys::MasterKey;
    use crate::format::tests::{keys, Rng};

    #[test]
    fn chunk_round_trips_compressed_and_not() {
        let k = keys();
        let mut rng = Rng(1);
        for plain in [
            vec![],
            vec![7u8; 1],
            vec![0xaa; 128 << 10],
            rng.bytes(128 << 10),
            rng.bytes(4 << 20),
        ] {
            let (id, sealed) = seal_chunk(&k, &plain).unwrap();
            assert_eq!(
                open_chunk(&k, &id, &sealed, MAX_CHUNK_PLAIN).unwrap(),
                plain
            );
        }
    }

    #[test]
    fn incompressible_data_is_stored_uncompressed() {
        let k = keys();
        let plain = Rng(2).bytes(64 << 10);
        let (_, sealed) = seal_chunk(&k, &plain).unwrap();
        assert_eq!(sealed[5], 0, "flag 0 must be clear");
        assert_eq!(sealed.len(), plain.len() + BLOB_OVERHEAD);
        let (_, sealed) = seal_chunk(&k, &[1u8; 64 << 10]).unwrap();
        assert_eq!(sealed[5], FLAG_ZSTD);
        assert!(sealed.len() < 1024);
    }

    #[test]
    fn equal_plaintext_seals_byte_identical() {
        let k = keys();
        let plain = b"the same chunk twice".repeat(100);
        let (a_id, a) = seal_chunk(&k, &plain).unwrap();
        let (b_id, b) = seal_chunk(&keys(), &plain).unwrap();
        assert_eq!((a_id, &a), (b_id, &b));
        let other = VaultKeys::derive(&MasterKey::from_bytes([9; 32]));
        let (d_id, d) = seal_chunk(&other, &plain).unwrap();
        assert_ne!(a_id, d_id, "another vault, another id");
        assert_ne!(a, d);
        let (c_id, c) = seal_chunk(&k, b"another chunk").unwrap();
        assert_ne!(a_id, c_id);
        assert_ne!(a[12..24], c[12..24], "nonces differ");
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let k = keys();
        for plain in [b"small chunk, stored as is".to_vec(), vec![5u8; 300]] {
            let (id, sealed) = seal_chunk(&k, &plain).unwrap();
            for i in 0..sealed.len() {
                for bit in 0..8 {
                    let mut bad = sealed.clone();
                    bad[i] ^= 1 << bit;
                    let err = open_chunk(&k, &id, &bad, MAX_CHUNK_PLAIN).unwrap_err();
                    assert!(err.is_damage(), "byte {i} bit {bit}: {err}");
                }
            }
        }
    }

    #[test]
    fn truncated_and_extended_blobs_fail() {
        let k = keys();
        let (id, sealed) = seal_chunk(&k, &[3u8; 1000]).unwrap();
        for n in 0..sealed.len() {
            assert!(
                open_chunk(&k, &id, &sealed[..n], MAX_CHUNK_PLAIN).is_err(),
                "{n}"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open_chunk(&k, &id, &longer, MAX_CHUNK_PLAIN).is_err());
    }

    #[test]
    fn wrong_id_kind_key_or_size_fails() {
        let k = keys();
        let plain = vec![4u8; 5000];
        let (id, sealed) = seal_chunk(&k, &plain).unwrap();
        let (other, _) = seal_chunk(&k, b"other").unwrap();
        assert!(matches!(
            open_chunk(&k, &other, &sealed, MAX_CHUNK_PLAIN),
            Err(FormatError::TagMismatch { .. })
        ));
        let wrong_key = VaultKeys::derive(&MasterKey::from_bytes([2; 32]));
        assert!(matches!(
            open_chunk(&wrong_key, &id, &sealed, MAX_CHUNK_PLAIN),
            Err(FormatError::TagMismatch { .. })
        ));
        // Longer than the disk's chunk size: refused from the header alone.
        let e = open_chunk(&k, &id, &sealed, 4096).unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        assert!(open(&k, BlobKind::IndexPage, &id.0, &sealed, MAX_PAGE_PLAIN).is_err());
        let mut kind = sealed.clone();
        kind[4] = 9;
        assert!(open_chunk(&k, &id, &kind, MAX_CHUNK_PLAIN)
            .unwrap_err()
            .to_string()
            .contains("unknown blob kind"));
    }

    #[test]
    fn a_blob_holding_other_data_than_its_id_is_never_returned() {
        let k = keys();
        let (id, _) = seal_chunk(&k, b"what the index expects").unwrap();
        // A (buggy) writer sealing other bytes under this id: the tag is fine, the id not.
        let sealed = seal(&k, BlobKind::Chunk, &id.0, b"something else").unwrap();
        assert!(matches!(
            open_chunk(&k, &id, &sealed, MAX_CHUNK_PLAIN),
            Err(FormatError::IdMismatch { .. })
        ));
    }

    #[test]
    fn header_lengths_are_checked_before_allocating() {
        let k = keys();
        let (id, sealed) = seal_chunk(&k, &[1u8; 100]).unwrap();
        let mut huge = sealed.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(open_chunk(&k, &id, &huge, MAX_CHUNK_PLAIN)
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
        // An uncompressed payload must be exactly the plaintext length.
        let raw = fuzzing_seal_payload(&k, BlobKind::Chunk, 0, 10, &id.0, &[0; 11]).unwrap();
        assert!(open_chunk(&k, &id, &raw, MAX_CHUNK_PLAIN).is_err());
        // A compressed payload may not exceed plaintext + 1 KiB.
        let raw = fuzzing_seal_payload(&k, BlobKind::Chunk, 1, 10, &id.0, &[0; 1035]).unwrap();
        assert!(open_chunk(&k, &id, &raw, MAX_CHUNK_PLAIN)
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
    }

    #[test]
    fn lying_zstd_frames_are_caught() {
        let k = keys();
        let id = [0u8; 32];
        let frame = zstd::bulk::compress(&[9u8; 100], 1).unwrap();
        for (plain_len, payload) in [
            (10, frame.clone()),
            (1000, frame),
            (50, vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]),
        ] {
            let raw =
                fuzzing_seal_payload(&k, BlobKind::Chunk, FLAG_ZSTD, plain_len, &id, &payload)
                    .unwrap();
            let e = open(&k, BlobKind::Chunk, &id, &raw, MAX_CHUNK_PLAIN).unwrap_err();
            assert!(matches!(e, FormatError::Damaged { .. }), "{e}");
        }
    }

    #[test]
    fn sealing_over_the_limit_is_refused() {
        let k = keys();
        let e = seal_chunk(&k, &vec![0u8; MAX_CHUNK_PLAIN as usize + 1]).unwrap_err();
        assert!(matches!(e, FormatError::TooLarge { .. }));
    }

    #[test]
    fn header_layout_is_the_spec() {
        let k = keys();
        let (id, sealed) = seal_chunk(&k, b"abc").unwrap();
        assert_eq!(&sealed[..4], b"LBB1");
        assert_eq!(sealed[4], 1);
        assert_eq!(&sealed[5..8], &[0, 0, 0]);
        assert_eq!(&sealed[8..12], &3u32.to_le_bytes());
        // Not compressed (too small to save anything): the nonce does not hash the payload.
        assert_eq!(sealed[12..24], k.nonce_for(BlobKind::Chunk, 0, &id.0, b""));
    }

    #[test]
    fn a_compressed_blob_nonce_covers_its_payload() {
        let k = keys();
        let text = b"a line of a log file that repeats\n".repeat(4096);
        let (id, sealed) = seal_chunk(&k, &text).unwrap();
        assert_eq!(sealed[5] & FLAG_ZSTD, FLAG_ZSTD, "text compresses");
        let payload = compress(&text).expect("compresses");
        assert_eq!(
            sealed[12..24],
            k.nonce_for(BlobKind::Chunk, FLAG_ZSTD, &id.0, &payload)
        );
        assert_eq!(
            open_chunk(&k, &id, &sealed, text.len() as u32).unwrap(),
            text
        );
    }
}
