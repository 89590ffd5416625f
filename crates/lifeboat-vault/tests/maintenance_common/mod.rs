//! Helpers shared by the maintenance tests: a real folder vault, images with holes, text
//! and random data, points written from them, and ways to reach into the stored bytes.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use bytes::Bytes;
use lifeboat_vault::backend::{Backend, BackendOptions, VaultUrl};
use lifeboat_vault::format::{
    self, manifest_key, pack_key, IndexEntry, KdfParams, Name, PackId, PointId,
};
use lifeboat_vault::{align_to_chunks, PointOptions, PointReader, PointRef, PointWriter, Vault};

pub const CHUNK: u32 = 64 << 10;
pub const CS: u64 = CHUNK as u64;

/// Short retries, so a dead storage or a mistake fails a test in seconds.
pub fn test_options() -> BackendOptions {
    BackendOptions {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
        ..BackendOptions::default()
    }
}

/// A folder vault in the current format (a key per name).
pub async fn folder_vault(dir: &Path) -> Result<Vault> {
    folder_vault_version(dir, lifeboat_vault::format::config::CONFIG_VERSION).await
}

/// A folder vault in format `version` (1: one key shared by every name).
pub async fn folder_vault_version(dir: &Path, version: u64) -> Result<Vault> {
    let url = VaultUrl::parse(&format!("file://{}", dir.display()))?;
    let backend = Backend::open(&url, BackendOptions::default()).await?;
    let fast = KdfParams::INSECURE_FAST;
    let (vault, _) =
        Vault::init_version(backend, "correct horse", CHUNK, None, fast, version).await?;
    Ok(vault)
}

pub fn vda() -> Name {
    Name::new("vda").unwrap()
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// xorshift bytes.
pub fn random(seed: u64, len: usize) -> Vec<u8> {
    lifeboat_testkit::random_bytes(seed, len)
}

/// `size` bytes: a hole, numbered text lines (compressible, no two chunks alike), a
/// hole, random data, a hole, and a few bytes at the very end. Different seeds share no
/// chunk.
pub fn image(seed: u64, size: usize) -> Vec<u8> {
    assert!(size >= 4 << 20);
    let mut img = vec![0u8; size];
    let mut text = Vec::new();
    let mut n = 0u64;
    while text.len() < (1 << 20) + (256 << 10) {
        text.extend_from_slice(format!("seed {seed} line {n:08}: all is well\n").as_bytes());
        n += 1;
    }
    let at = 256 << 10;
    img[at..at + (1 << 20)].copy_from_slice(&text[..1 << 20]);
    let at = 2 << 20;
    img[at..at + (1 << 20)].copy_from_slice(&random(seed, 1 << 20));
    let tail = format!("end of {seed}");
    img[size - tail.len()..].copy_from_slice(tail.as_bytes());
    img
}

/// Writes the given ranges of `img` (widened to chunks; all of it when `None`) as a point.
pub async fn put(
    vault: &Vault,
    name: &Name,
    parent: Option<&PointRef>,
    img: &[u8],
    ranges: Option<&[(u64, u64)]>,
) -> Result<PointRef> {
    let mut w = begin(vault, name, parent, img.len() as u64).await?;
    let size = img.len() as u64;
    let all = [(0, size)];
    for (off, len) in align_to_chunks(ranges.unwrap_or(&all), CS, size) {
        let data = Bytes::copy_from_slice(&img[off as usize..(off + len) as usize]);
        w.write(&vda(), off, data).await?;
    }
    let m = w.commit().await?;
    Ok(PointRef {
        name: m.name,
        point: m.point,
    })
}

pub async fn begin(
    vault: &Vault,
    name: &Name,
    parent: Option<&PointRef>,
    size: u64,
) -> Result<PointWriter> {
    Ok(PointWriter::begin(
        vault,
        PointOptions::one_disk(name.clone(), parent.cloned(), vda(), size),
    )
    .await?)
}

pub async fn restored(vault: &Vault, point: &PointRef, dir: &Path) -> Result<Vec<u8>> {
    let reader = PointReader::open(vault, point, 4 << 20).await?;
    let out = dir.join(format!("{}-{}.raw", point.name, point.point));
    reader.restore_raw(&vda(), &out).await?;
    let bytes = std::fs::read(&out)?;
    std::fs::remove_file(&out)?;
    Ok(bytes)
}

pub async fn pack_keys(vault: &Vault) -> Result<BTreeSet<String>> {
    Ok(vault
        .backend()
        .list("packs/")
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect())
}

pub fn object_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(key)
}

pub fn pack_path(dir: &Path, pack: &PackId) -> PathBuf {
    dir.join(pack_key(pack))
}

pub fn manifest_path(dir: &Path, p: &PointRef) -> PathBuf {
    dir.join(manifest_key(&p.name, &p.point))
}

/// Flips one bit of a file.
pub fn flip(path: &Path, offset: u64) -> Result<()> {
    let mut b = std::fs::read(path)?;
    b[offset as usize] ^= 0x10;
    std::fs::write(path, b)?;
    Ok(())
}

/// Moves a file's modification time `by` into the past.
pub fn age(path: &Path, by: Duration) -> Result<()> {
    let f = std::fs::File::options().write(true).open(path)?;
    f.set_modified(SystemTime::now() - by)?;
    Ok(())
}

/// The entries of page `page` of disk 0 of a point, read straight from its pack.
pub async fn page_entries(vault: &Vault, p: &PointRef, page: usize) -> Result<Vec<IndexEntry>> {
    let m = vault.manifest(p).await?;
    let r = m.disks[0].pages[page];
    let sealed = vault
        .backend()
        .get_range(
            &pack_key(&r.pack),
            u64::from(r.offset)..u64::from(r.offset) + u64::from(r.len),
        )
        .await?;
    Ok(format::open_page(&*vault.keys_for(&p.name)?, &r.id, &sealed)?.entries)
}

/// Stores a copy of `src`'s manifest as point `ms`-`rnd` of `name`: a point with a chosen
/// time, sharing `src`'s data.
pub async fn clone_point(
    vault: &Vault,
    src: &PointRef,
    name: &Name,
    ms: u64,
    rnd: u32,
) -> Result<PointRef> {
    let mut m = vault.manifest(src).await?;
    m.point = PointId::from_parts(ms, rnd)?;
    m.name = name.clone();
    m.parent = None;
    let (key, sealed) = format::seal_manifest(&*vault.keys_for(name)?, &m)?;
    vault.backend().put(&key, Bytes::from(sealed)).await?;
    Ok(PointRef {
        name: name.clone(),
        point: m.point,
    })
}
