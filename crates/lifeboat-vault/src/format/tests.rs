//! Helpers shared by the format's unit tests, and the property-style loop that feeds
//! random and mutated bytes to every decoder: any outcome but a panic is fine, and a
//! mutated sealed blob must never open.

use super::*;

/// splitmix64: seeded, so a failure replays; no test dependency needed.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub(crate) fn keys() -> VaultKeys {
    VaultKeys::derive(&MasterKey::from_bytes([0x42; 32]))
}

/// Valid encodings of every decoder's input, to mutate.
struct Samples {
    chunk: (ChunkId, Vec<u8>),
    page: (PageId, Vec<u8>),
    page_plain: Vec<u8>,
    manifest: (Manifest, Vec<u8>),
    manifest_plain: Vec<u8>,
    pack: (PackId, Vec<u8>),
    config: Vec<u8>,
    key_file: Vec<u8>,
}

fn samples(k: &VaultKeys) -> Samples {
    let chunk = seal_chunk(k, &b"chunk data ".repeat(50)).unwrap();
    let page = IndexPage {
        entries: vec![
            IndexEntry::ZERO,
            IndexEntry {
                chunk: chunk.0,
                pack: PackId([3; 16]),
                offset: 4,
                len: chunk.1.len() as u32,
            },
        ],
    };
    let page_plain = page.encode().unwrap();
    let page = seal_page(k, &page).unwrap();
    let m = manifest::tests::sample();
    let manifest_plain = m.encode().unwrap();
    let (_, sealed_m) = seal_manifest(k, &m).unwrap();
    let pack_id = PackId([3; 16]);
    let mut b = PackBuilder::new(pack_id);
    b.push(PackedId::Chunk(chunk.0), chunk.1.clone()).unwrap();
    b.push(PackedId::Page(page.0), page.1.clone()).unwrap();
    let pack = b.finish(k).unwrap().to_vec();
    let (c, key) = VaultConfig::create("p", 65536, KdfParams::INSECURE_FAST).unwrap();
    let key_file = KeyFile::new(&c, key).unwrap().encode();
    Samples {
        chunk,
        page,
        page_plain,
        manifest: (m, sealed_m),
        manifest_plain,
        pack: (pack_id, pack),
        config: c.encode().unwrap(),
        key_file,
    }
}

/// Flips, truncates, extends or overwrites a copy of `b`.
fn mutate(rng: &mut Rng, b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(rng.below(v.len() + 1)),
            2 => {
                let n = rng.below(16);
                v.extend(rng.bytes(n));
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            _ => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v
}

/// Every decoder, on `b`: whatever it returns, it must return.
fn feed_all(k: &VaultKeys, s: &Samples, b: &[u8]) {
    let _ = open_chunk(k, &s.chunk.0, b, blob::MAX_CHUNK_PLAIN);
    let _ = open_page(k, &s.page.0, b);
    let _ = open_manifest(k, &s.manifest.0.name, &s.manifest.0.point, b);
    let _ = read_trailer(k, &s.pack.0, b.len() as u64 + 100, b);
    let _ = trailer_len_from_footer(&s.pack.0, &b[..b.len().min(8)]);
    let _ = pack::decode_trailer(&s.pack.0, b, 1000);
    let _ = IndexPage::decode(b);
    let _ = Manifest::decode(b, "x");
    let _ = VaultConfig::decode(b);
    let _ = KeyFile::decode(b);
    let text = String::from_utf8_lossy(b);
    let _ = text.parse::<PointId>();
    let _ = text.parse::<Name>();
    let _ = parse_pack_key(&text);
    let _ = parse_manifest_key(&text);
    let _ = parse_lease_key(&text);
}

#[test]
fn random_bytes_never_panic_any_decoder() {
    let k = keys();
    let s = samples(&k);
    let mut rng = Rng(0x5eed);
    for _ in 0..3000 {
        let n = rng.below(300);
        let mut b = rng.bytes(n);
        // Give some inputs a plausible start, so checks past the magic get exercised.
        if rng.below(2) == 0 && b.len() >= 8 {
            b[..4].copy_from_slice(b"LBB1");
            b[4] = 1 + rng.below(4) as u8;
            b[5..8].fill(0);
        }
        feed_all(&k, &s, &b);
    }
}

#[test]
fn mutated_encodings_never_panic_and_sealed_ones_never_open() {
    let k = keys();
    let s = samples(&k);
    let mut rng = Rng(0xfeed);
    let tail_start = {
        let p = &s.pack.1;
        p.len() - 8 - trailer_len_from_footer(&s.pack.0, &p[p.len() - 8..]).unwrap() as usize
    };
    for _ in 0..2000 {
        let c = mutate(&mut rng, &s.chunk.1);
        if c != s.chunk.1 {
            assert!(open_chunk(&k, &s.chunk.0, &c, blob::MAX_CHUNK_PLAIN).is_err());
        }
        let p = mutate(&mut rng, &s.page.1);
        if p != s.page.1 {
            assert!(open_page(&k, &s.page.0, &p).is_err());
        }
        let m = mutate(&mut rng, &s.manifest.1);
        if m != s.manifest.1 {
            assert!(open_manifest(&k, &s.manifest.0.name, &s.manifest.0.point, &m).is_err());
        }
        let t = mutate(&mut rng, &s.pack.1[tail_start..]);
        if t != s.pack.1[tail_start..] {
            assert!(read_trailer(&k, &s.pack.0, s.pack.1.len() as u64, &t).is_err());
        }
        for plain in [&s.page_plain, &s.manifest_plain, &s.config, &s.key_file] {
            feed_all(&k, &s, &mutate(&mut rng, plain));
        }
    }
}
