//! Manifests (vault-format.md, "Manifests"): one sealed JSON blob per point, at
//! `points/<name>/<point id>`. The object key is the blob's binding, so a manifest cannot be
//! replayed under another name or point; the point exists exactly when this object does.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::blob::{self, BlobKind, BLOB_OVERHEAD, MAX_MANIFEST_PLAIN, MAX_PAGE_PLAIN};
use super::error::{FormatError, Result};
use super::ids::{manifest_key, Name, PackId, PageId, PointId};
use super::keys::VaultKeys;
use super::pack::{MAX_PACK_LEN, PACK_HEAD_LEN};
use super::page::ENTRIES_PER_PAGE;

/// The newest manifest version this code reads and writes. Version 2 adds `guest_seed`;
/// a point without one is still written as version 1, so readers that know only version
/// 1 read it, and a point with one says "upgrade" to them instead of "damaged".
pub const MANIFEST_VERSION: u64 = 2;
/// The version a manifest without the fields of later versions is written as.
pub const MANIFEST_VERSION_BASE: u64 = 1;
pub const MAX_DISKS: usize = 64;
pub const MAX_DISK_SIZE: u64 = 64 << 40;
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;
/// A VM's own cloud-init seed image, as carried in its points: at most 16 MiB when
/// expanded and 1 MiB stored (zstd). Seeds are volumes of a few files in a mostly empty
/// image (`cloud-localds` writes 366 KiB, Lifeboat 4 MiB), so both bounds are generous.
pub const MAX_GUEST_SEED: usize = 16 << 20;
pub const MAX_GUEST_SEED_STORED: usize = 1 << 20;

/// Whether the guest's filesystems were quiesced for this point.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    Crash,
    App,
}

/// Where one index page's blob lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRef {
    pub id: PageId,
    pub pack: PackId,
    pub offset: u32,
    pub len: u32,
}

/// One disk of the point.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskManifest {
    pub name: Name,
    pub size: u64,
    pub chunk_size: u32,
    pub cut_time: DateTime<Utc>,
    pub pages: Vec<PageRef>,
}

impl DiskManifest {
    /// Chunk slots: `ceil(size / chunk_size)`.
    pub fn slots(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size.max(1)))
    }

    /// Index pages this disk must have: `ceil(slots / 1024)`.
    pub fn page_count(&self) -> u64 {
        self.slots().div_ceil(ENTRIES_PER_PAGE as u64)
    }

    /// How many entries page `i` must hold (1,024 but for the last page); 0 past the end.
    pub fn slots_in_page(&self, i: u64) -> usize {
        let first = i.saturating_mul(ENTRIES_PER_PAGE as u64);
        self.slots()
            .saturating_sub(first)
            .min(ENTRIES_PER_PAGE as u64) as usize
    }
}

/// What the point cost, recorded by its writer for `stats`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointStats {
    pub logical_bytes: u64,
    pub new_chunks: u64,
    pub new_bytes_plain: u64,
    pub new_bytes_stored: u64,
    pub new_packs: u64,
}

/// A recovery point.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "manifest")]
    pub version: u64,
    pub point: PointId,
    pub name: Name,
    pub created: DateTime<Utc>,
    pub parent: Option<PointId>,
    pub consistency: Consistency,
    #[serde(with = "b64_opt")]
    pub vm_config: Option<Vec<u8>>,
    /// The VM's own cloud-init seed image (the `CIDATA` volume it boots with), zstd
    /// compressed: a copy recovered without it would lose what the seed configures (a
    /// static address, most often). Absent from points of VMs without one, and then not
    /// written at all, so such manifests read as before. See [`Manifest::guest_seed_image`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub guest_seed: Option<Vec<u8>>,
    pub disks: Vec<DiskManifest>,
    pub stats: PointStats,
}

mod b64_opt {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Only the version, read first so that a newer manifest says "upgrade" rather than
/// failing on a field this version does not know.
#[derive(Deserialize)]
struct VersionProbe {
    manifest: serde_json::Value,
}

pub(crate) fn check_chunk_size(chunk_size: u32) -> bool {
    chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
}

impl Manifest {
    fn object(&self) -> String {
        manifest_key(&self.name, &self.point)
    }

    /// Every rule of the format that JSON types alone do not express.
    pub fn validate(&self) -> Result<()> {
        let bad = |r: String| FormatError::damaged(self.object(), r);
        if self.version != self.version_needed() {
            return Err(bad(format!(
                "manifest version {} (its fields are those of version {})",
                self.version,
                self.version_needed()
            )));
        }
        if let Some(seed) = &self.guest_seed {
            if seed.len() > MAX_GUEST_SEED_STORED {
                return Err(bad(format!(
                    "a guest seed of {} bytes stored (at most {MAX_GUEST_SEED_STORED})",
                    seed.len()
                )));
            }
        }
        if self.disks.len() > MAX_DISKS {
            return Err(bad(format!(
                "{} disks (at most {MAX_DISKS})",
                self.disks.len()
            )));
        }
        let mut names = HashSet::new();
        for d in &self.disks {
            let disk = &d.name;
            if !names.insert(disk) {
                return Err(bad(format!("disk {disk} appears twice")));
            }
            if d.size > MAX_DISK_SIZE {
                return Err(bad(format!("disk {disk}: {} bytes is over 64 TiB", d.size)));
            }
            if !check_chunk_size(d.chunk_size) {
                return Err(bad(format!(
                    "disk {disk}: chunk size {} is not a power of two from 64 KiB to 4 MiB",
                    d.chunk_size
                )));
            }
            if d.pages.len() as u64 != d.page_count() {
                return Err(bad(format!(
                    "disk {disk}: {} index pages for {} bytes, expected {}",
                    d.pages.len(),
                    d.size,
                    d.page_count()
                )));
            }
            let max_len = MAX_PAGE_PLAIN + blob::STORED_SLACK + BLOB_OVERHEAD as u32;
            for (i, p) in d.pages.iter().enumerate() {
                let ok = p.offset as usize >= PACK_HEAD_LEN
                    && p.len as usize >= BLOB_OVERHEAD
                    && p.len <= max_len
                    && u64::from(p.offset) + u64::from(p.len) <= MAX_PACK_LEN;
                if !ok {
                    return Err(bad(format!(
                        "disk {disk}: page {i} points at {} bytes at offset {} of pack {}",
                        p.len, p.offset, p.pack
                    )));
                }
            }
        }
        Ok(())
    }

    /// The version this manifest's fields need: 2 with a guest seed, else 1.
    pub fn version_needed(&self) -> u64 {
        if self.guest_seed.is_some() {
            MANIFEST_VERSION
        } else {
            MANIFEST_VERSION_BASE
        }
    }

    /// Compresses a VM's own seed image for [`Manifest::guest_seed`]; one too large to
    /// carry is a usage error that names the bounds.
    pub fn pack_guest_seed(image: &[u8]) -> Result<Vec<u8>> {
        let too_large = |what: &str, len: usize, limit: usize| FormatError::TooLarge {
            object: format!("the VM's cloud-init seed ({what})"),
            len: len as u64,
            limit: limit as u64,
        };
        if image.len() > MAX_GUEST_SEED {
            return Err(too_large("image", image.len(), MAX_GUEST_SEED));
        }
        let packed = zstd::bulk::compress(image, 3)
            .map_err(|e| FormatError::damaged("the VM's cloud-init seed", e.to_string()))?;
        if packed.len() > MAX_GUEST_SEED_STORED {
            return Err(too_large("compressed", packed.len(), MAX_GUEST_SEED_STORED));
        }
        Ok(packed)
    }

    /// The VM's own seed image, expanded; never more than [`MAX_GUEST_SEED`] bytes
    /// whatever the stored frame claims.
    pub fn guest_seed_image(&self) -> Result<Option<Vec<u8>>> {
        let Some(packed) = &self.guest_seed else {
            return Ok(None);
        };
        zstd::bulk::decompress(packed, MAX_GUEST_SEED)
            .map(Some)
            .map_err(|e| FormatError::damaged(self.object(), format!("its guest seed: {e}")))
    }

    /// The manifest's JSON plaintext. Fails when it would be over 16 MiB: with about 150
    /// bytes per page reference that is about 110,000 pages, so a very large VM needs a
    /// vault with a larger chunk size.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let json = serde_json::to_vec(self)
            .map_err(|e| FormatError::damaged(self.object(), e.to_string()))?;
        if json.len() > MAX_MANIFEST_PLAIN as usize {
            return Err(FormatError::TooLarge {
                object: format!(
                    "{} (use a vault with a larger chunk_size for disks this large)",
                    self.object()
                ),
                len: json.len() as u64,
                limit: MAX_MANIFEST_PLAIN.into(),
            });
        }
        Ok(json)
    }

    /// Decodes and checks a manifest plaintext. `object` names it in errors.
    pub fn decode(plain: &[u8], object: &str) -> Result<Self> {
        let bad = |r: String| FormatError::damaged(object, r);
        if plain.len() > MAX_MANIFEST_PLAIN as usize {
            return Err(bad(format!(
                "{} bytes is over the 16 MiB limit",
                plain.len()
            )));
        }
        let probe: VersionProbe =
            serde_json::from_slice(plain).map_err(|e| bad(format!("not a manifest: {e}")))?;
        match probe.manifest.as_u64() {
            Some(v) if (MANIFEST_VERSION_BASE..=MANIFEST_VERSION).contains(&v) => {}
            Some(v) if v > MANIFEST_VERSION => {
                return Err(FormatError::NewerFormat {
                    object: object.into(),
                    what: "manifest",
                    version: v,
                    known: MANIFEST_VERSION,
                })
            }
            _ => return Err(bad(format!("unknown manifest version {}", probe.manifest))),
        }
        let m: Manifest =
            serde_json::from_slice(plain).map_err(|e| bad(format!("bad manifest: {e}")))?;
        m.validate().map_err(|e| match e {
            FormatError::Damaged { reason, .. } => bad(reason),
            e => e,
        })?;
        Ok(m)
    }
}

/// Seals a manifest for its object key `points/<name>/<point>`, returned with the bytes.
pub fn seal_manifest(keys: &VaultKeys, m: &Manifest) -> Result<(String, Vec<u8>)> {
    let plain = m.encode()?;
    let key = m.object();
    let sealed = blob::seal(keys, BlobKind::Manifest, key.as_bytes(), &plain)?;
    Ok((key, sealed))
}

/// Opens the manifest stored at `points/<name>/<point>` and checks that it says so inside.
pub fn open_manifest(
    keys: &VaultKeys,
    name: &Name,
    point: &PointId,
    sealed: &[u8],
) -> Result<Manifest> {
    let key = manifest_key(name, point);
    let plain = blob::open(
        keys,
        BlobKind::Manifest,
        key.as_bytes(),
        sealed,
        MAX_MANIFEST_PLAIN,
    )?;
    let m = Manifest::decode(&plain, &key)?;
    if m.name != *name || m.point != *point {
        return Err(FormatError::damaged(
            key,
            format!("holds the manifest of {}", manifest_key(&m.name, &m.point)),
        ));
    }
    Ok(m)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::tests::keys;

    pub(crate) fn sample() -> Manifest {
        let page = PageRef {
            id: PageId([1; 32]),
            pack: PackId([2; 16]),
            offset: 4,
            len: 4211,
        };
        Manifest {
            version: 1,
            point: "1764136800000-1a2b3c4d".parse().unwrap(),
            name: Name::new("web1").unwrap(),
            created: "2026-11-26T06:00:00.123Z".parse().unwrap(),
            parent: Some("1764136770000-9f8e7d6c".parse().unwrap()),
            consistency: Consistency::Crash,
            vm_config: Some(b"<domain/>".to_vec()),
            guest_seed: None,
            disks: vec![
                DiskManifest {
                    name: Name::new("vda").unwrap(),
                    size: (1 << 30) + 1,
                    chunk_size: 131072,
                    cut_time: "2026-11-26T06:00:00.100Z".parse().unwrap(),
                    pages: vec![page; 9],
                },
                DiskManifest {
                    name: Name::new("vdb").unwrap(),
                    size: 0,
                    chunk_size: 65536,
                    cut_time: "2026-11-26T06:00:00.100Z".parse().unwrap(),
                    pages: vec![],
                },
            ],
            stats: PointStats::default(),
        }
    }

    #[test]
    fn manifest_round_trips() {
        let k = keys();
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode().unwrap(), "x").unwrap(), m);
        let (key, sealed) = seal_manifest(&k, &m).unwrap();
        assert_eq!(key, "points/web1/1764136800000-1a2b3c4d");
        assert_eq!(open_manifest(&k, &m.name, &m.point, &sealed).unwrap(), m);
        let first = Manifest {
            parent: None,
            vm_config: None,
            consistency: Consistency::App,
            ..m
        };
        let json = String::from_utf8(first.encode().unwrap()).unwrap();
        assert!(json.contains(r#""parent":null"#) && json.contains(r#""consistency":"app""#));
        assert_eq!(Manifest::decode(json.as_bytes(), "x").unwrap(), first);
    }

    #[test]
    fn a_guest_seed_travels_compressed_and_expands_within_bounds() {
        // A seed as Lifeboat writes one: 4 MiB, a few files near its start.
        let mut image = vec![0u8; 4 << 20];
        image[..5].copy_from_slice(b"CIDAT");
        image[70_000..70_019].copy_from_slice(b"instance-id: web-01");
        let m = Manifest {
            version: 2,
            guest_seed: Some(Manifest::pack_guest_seed(&image).unwrap()),
            ..sample()
        };
        assert!(m.guest_seed.as_ref().unwrap().len() < 4096, "it compresses");
        // A seed needs version 2 (a version-1 reader then says "upgrade"), and version
        // 2 needs a seed (so points without one stay readable by version-1 readers).
        let as_v1 = Manifest {
            version: 1,
            ..m.clone()
        };
        assert!(as_v1
            .encode()
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        let v2_without = Manifest {
            version: 2,
            ..sample()
        };
        assert!(v2_without.encode().is_err());
        let back = Manifest::decode(&m.encode().unwrap(), "x").unwrap();
        assert_eq!(back.guest_seed_image().unwrap().unwrap(), image);
        // Without a seed the field is not written: such a manifest reads as before.
        let json = String::from_utf8(sample().encode().unwrap()).unwrap();
        assert!(!json.contains("guest_seed"), "{json}");
        assert_eq!(sample().guest_seed_image().unwrap(), None);

        // Too large to carry, either way: refused with the bounds.
        let e = Manifest::pack_guest_seed(&vec![0u8; MAX_GUEST_SEED + 1]).unwrap_err();
        assert!(e.to_string().contains("seed"), "{e}");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..(2usize << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(Manifest::pack_guest_seed(&noise).is_err());
        // A stored frame that expands past 16 MiB is refused, not allocated.
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_GUEST_SEED + 4096], 19).unwrap();
        assert!(bomb.len() <= MAX_GUEST_SEED_STORED);
        let m = Manifest {
            version: 2,
            guest_seed: Some(bomb),
            ..sample()
        };
        let m = Manifest::decode(&m.encode().unwrap(), "x").unwrap();
        let e = m.guest_seed_image().unwrap_err();
        assert!(e.to_string().contains("guest seed"), "{e}");
        // A stored seed over 1 MiB is a damaged manifest.
        let m = Manifest {
            version: 2,
            guest_seed: Some(vec![1; MAX_GUEST_SEED_STORED + 1]),
            ..sample()
        };
        assert!(m.encode().unwrap_err().to_string().contains("guest seed"));
    }

    #[test]
    fn the_spec_example_parses() {
        let json = r#"{
          "manifest": 1, "point": "1764136800000-1a2b3c4d", "name": "web1",
          "created": "2026-11-26T06:00:00.123Z", "parent": "1764136770000-9f8e7d6c",
          "consistency": "crash", "vm_config": null,
          "disks": [{"name": "vda", "size": 68719476736, "chunk_size": 131072,
                     "cut_time": "2026-11-26T06:00:00.100Z", "pages": []}],
          "stats": {"logical_bytes": 0, "new_chunks": 0, "new_bytes_plain": 0,
                    "new_bytes_stored": 0, "new_packs": 0}}"#;
        // 64 GiB in 128 KiB chunks: 524,288 slots, 512 pages, and the example lists one.
        let e = Manifest::decode(json.as_bytes(), "x").unwrap_err();
        assert!(e.to_string().contains("512"), "{e}");
        let page = r#"{"id": "PID", "pack": "PACK", "offset": 4, "len": 4211}"#
            .replace("PID", &"ab".repeat(32))
            .replace("PACK", &"cd".repeat(16));
        let pages = vec![page; 512].join(",");
        let json = json.replace(r#""pages": []"#, &format!(r#""pages": [{pages}]"#));
        let m = Manifest::decode(json.as_bytes(), "x").unwrap();
        assert_eq!(m.disks[0].page_count(), 512);
        assert_eq!(m.disks[0].slots_in_page(511), 1024);
        assert_eq!(m.disks[0].slots_in_page(512), 0);
    }

    fn json_with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v = serde_json::to_value(sample()).unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn versions_and_unknown_fields() {
        let newer = json_with(|v| {
            v["manifest"] = 3.into();
            v["new_field"] = 1.into();
        });
        let e = Manifest::decode(&newer, "points/web1/x").unwrap_err();
        assert!(
            matches!(e, FormatError::NewerFormat { version: 3, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("upgrade"));
        for bad in [
            json_with(|v| v["manifest"] = 0.into()),
            json_with(|v| v["manifest"] = "1".into()),
            json_with(|v| v["extra"] = 1.into()),
            json_with(|v| v["disks"][0]["extra"] = 1.into()),
            json_with(|v| v["disks"][0]["pages"][0]["extra"] = 1.into()),
            json_with(|v| v["stats"]["extra"] = 1.into()),
            json_with(|v| v["consistency"] = "maybe".into()),
            json_with(|v| v["name"] = "Web1".into()),
            json_with(|v| v["point"] = "1".into()),
            json_with(|v| v["vm_config"] = "!!".into()),
            json_with(|v| {
                v.as_object_mut()
                    .unwrap()
                    .remove("stats")
                    .map(drop)
                    .unwrap()
            }),
        ] {
            let e = Manifest::decode(&bad, "x").unwrap_err();
            assert!(matches!(e, FormatError::Damaged { .. }), "{e}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let mut m = sample();
        m.disks[0].pages.pop();
        assert!(m.encode().is_err());
        let mut m = sample();
        m.disks[1].name = m.disks[0].name.clone();
        assert!(m.encode().is_err());
        let mut m = sample();
        m.disks[1].size = MAX_DISK_SIZE + 1;
        assert!(m.encode().is_err());
        for cs in [0, 1, 32768, 100_000, 8 << 20] {
            let mut m = sample();
            m.disks[1].chunk_size = cs;
            assert!(m.encode().is_err(), "{cs}");
        }
        let mut m = sample();
        m.disks = (0..65)
            .map(|i| DiskManifest {
                name: Name::new(&format!("d{i}")).unwrap(),
                ..sample().disks[1].clone()
            })
            .collect();
        assert!(m.encode().is_err());
        m.disks.pop();
        assert!(m.encode().is_ok());
        for (offset, len) in [(0, 100), (4, 39), (4, 100_000), (u32::MAX - 100, 50)] {
            let mut m = sample();
            m.disks[0].pages[3].offset = offset;
            m.disks[0].pages[3].len = len;
            assert!(m.encode().is_err(), "{offset} {len}");
        }
        assert!(Manifest::decode(&vec![b' '; MAX_MANIFEST_PLAIN as usize + 1], "x").is_err());
    }

    #[test]
    fn a_manifest_cannot_move_to_another_key() {
        let k = keys();
        let m = sample();
        let (_, sealed) = seal_manifest(&k, &m).unwrap();
        let other = PointId::from_parts(1_764_136_800_001, 0).unwrap();
        assert!(matches!(
            open_manifest(&k, &m.name, &other, &sealed),
            Err(FormatError::TagMismatch { .. })
        ));
        let web2 = Name::new("web2").unwrap();
        assert!(open_manifest(&k, &web2, &m.point, &sealed).is_err());
        // Sealed for web2's key but saying web1 inside: refused after decryption.
        let key = manifest_key(&web2, &m.point);
        let sealed =
            blob::seal(&k, BlobKind::Manifest, key.as_bytes(), &m.encode().unwrap()).unwrap();
        let e = open_manifest(&k, &web2, &m.point, &sealed).unwrap_err();
        assert!(
            e.to_string().contains("holds the manifest of points/web1"),
            "{e}"
        );
        let (_, sealed) = seal_manifest(&k, &m).unwrap();
        for i in (0..sealed.len()).step_by(7) {
            let mut bad = sealed.clone();
            bad[i] ^= 0x80;
            assert!(
                open_manifest(&k, &m.name, &m.point, &bad).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn manifests_use_random_nonces() {
        let k = keys();
        let (_, a) = seal_manifest(&k, &sample()).unwrap();
        let (_, b) = seal_manifest(&k, &sample()).unwrap();
        assert_ne!(a[12..24], b[12..24]);
    }
}
