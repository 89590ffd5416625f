//! Writing and reading recovery points on a real folder vault: every point restores bit
//! for bit, a child point stores only what changed, and the parent is untouched.

use anyhow::Result;
use bytes::Bytes;
use lifeboat_vault::backend::{Backend, BackendOptions, VaultUrl};
use lifeboat_vault::format::{FormatError, KdfParams, Name};
use lifeboat_vault::{
    align_to_chunks, PointOptions, PointReader, PointRef, PointWriter, Unlock, Vault, VaultError,
};

const CHUNK: u32 = 64 << 10;
const SIZE: u64 = 70 << 20; // two index pages at 64 KiB chunks

async fn folder_vault(dir: &std::path::Path) -> Result<Vault> {
    let url = VaultUrl::parse(&format!("file://{}", dir.display()))?;
    let backend = Backend::open(&url, BackendOptions::default()).await?;
    let (vault, _) = Vault::init(backend, "correct horse", CHUNK, KdfParams::INSECURE_FAST).await?;
    Ok(vault)
}

/// Holes, text-like data and random data, like a real disk.
fn image() -> Vec<u8> {
    let mut img = vec![0u8; SIZE as usize];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for (i, b) in img[1 << 20..20 << 20].iter_mut().enumerate() {
        *b = b"lifeboat log line: all is well\n"[i % 31];
    }
    for b in img[40 << 20..(40 << 20) + (3 << 20)].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    img[SIZE as usize - 10..].copy_from_slice(b"last bytes");
    img
}

/// Writes the given ranges of `img` (widened to chunks) as a point of `name`.
async fn put(
    vault: &Vault,
    name: &Name,
    parent: Option<PointRef>,
    img: &[u8],
    ranges: &[(u64, u64)],
) -> Result<PointRef> {
    let disk = Name::new("vda")?;
    let mut w = PointWriter::begin(
        vault,
        PointOptions {
            vm_config: Some(b"memory = 256".to_vec()),
            ..PointOptions::one_disk(name.clone(), parent, disk.clone(), SIZE)
        },
    )
    .await?;
    for (off, len) in align_to_chunks(ranges, u64::from(CHUNK), SIZE) {
        let data = Bytes::copy_from_slice(&img[off as usize..(off + len) as usize]);
        w.write(&disk, off, data).await?;
    }
    let m = w.commit().await?;
    Ok(PointRef {
        name: m.name,
        point: m.point,
    })
}

async fn restored(vault: &Vault, point: &PointRef, dir: &std::path::Path) -> Result<Vec<u8>> {
    let reader = PointReader::open(vault, point, 8 << 20).await?;
    let out = dir.join(format!("{}.raw", point.point));
    let stats = reader.restore_raw(&Name::new("vda")?, &out).await?;
    assert_eq!(stats.size, SIZE);
    Ok(std::fs::read(out)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_restore_bit_for_bit_and_children_store_only_changes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let vault = folder_vault(&tmp.path().join("vault")).await?;
    let name = Name::new("web1")?;
    let original = image();

    let p1 = put(&vault, &name, None, &original, &[(0, SIZE)]).await?;
    assert_eq!(restored(&vault, &p1, tmp.path()).await?, original);
    let m1 = vault.manifest(&p1).await?;
    assert_eq!(m1.vm_config.as_deref(), Some(&b"memory = 256"[..]));
    // Holes are not stored; the text compresses.
    assert!(m1.stats.new_bytes_plain < 25 << 20, "{:?}", m1.stats);
    assert!(
        m1.stats.new_bytes_stored < m1.stats.new_bytes_plain,
        "{:?}",
        m1.stats
    );

    // Change 5 scattered regions, 300 KiB in all, and write only those ranges.
    let mut changed = original.clone();
    let regions = [
        (1u64 << 20, 4096u64),
        (5 << 20, 100 << 10),
        (41 << 20, 64 << 10),
        (50 << 20, 70 << 10),
        (SIZE - 5, 5),
    ];
    for (off, len) in regions {
        for (i, b) in changed[off as usize..(off + len) as usize]
            .iter_mut()
            .enumerate()
        {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
    }
    let p2 = put(&vault, &name, Some(p1.clone()), &changed, &regions).await?;
    assert_eq!(restored(&vault, &p2, tmp.path()).await?, changed);
    assert_eq!(
        restored(&vault, &p1, tmp.path()).await?,
        original,
        "the parent must not change"
    );

    let m2 = vault.manifest(&p2).await?;
    assert_eq!(m2.parent.as_ref(), Some(&p1.point));
    // At most two chunks per region changed: the point costs what changed, not the disk.
    assert!(m2.stats.new_chunks <= 10, "{:?}", m2.stats);
    assert!(m2.stats.new_bytes_stored < 2 << 20, "{:?}", m2.stats);

    // Random access agrees with the restored image, across chunk and page boundaries.
    let reader = PointReader::open(&vault, &p2, 1 << 20).await?;
    let disk = Name::new("vda")?;
    for (off, len) in [
        (0u64, 10usize),
        ((64 << 20) - 3, 10),
        ((5 << 20) + 100, 200_000),
        (SIZE - 10, 10),
    ] {
        let got = reader.read_at(&disk, off, len).await?;
        assert_eq!(
            got,
            &changed[off as usize..off as usize + len],
            "read_at({off}, {len})"
        );
    }
    assert!(reader.read_at(&disk, SIZE - 1, 2).await.is_err());

    let listed = vault.list_points(Some(&name)).await?;
    assert_eq!(listed, vec![p1, p2]);
    Ok(())
}

#[tokio::test]
async fn wrong_passphrase_and_missing_vault_are_clear_errors() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    folder_vault(&dir).await?;
    let url = VaultUrl::parse(&format!("file://{}", dir.display()))?;
    let backend = Backend::open(&url, BackendOptions::default()).await?;
    let err = Vault::open(backend.clone(), Unlock::Passphrase("wrong".into()))
        .await
        .err()
        .expect("must fail");
    assert!(
        matches!(err, VaultError::Format(FormatError::WrongPassphrase)),
        "{err}"
    );
    let again = Vault::init(backend, "x", CHUNK, KdfParams::INSECURE_FAST)
        .await
        .err()
        .expect("exists");
    assert!(matches!(again, VaultError::AlreadyExists { .. }), "{again}");

    let empty = VaultUrl::parse(&format!("file://{}", tmp.path().join("nothing").display()))?;
    let backend = Backend::open(&empty, BackendOptions::default()).await?;
    let err = Vault::open(backend, Unlock::Passphrase("x".into()))
        .await
        .err()
        .expect("no vault");
    assert!(err.to_string().contains("lifeboat vault init"), "{err}");
    Ok(())
}

#[tokio::test]
async fn all_hole_pages_are_stored_once_and_a_missing_parent_leaves_no_lease() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let vault = folder_vault(&tmp.path().join("vault")).await?;
    let name = Name::new("empty")?;
    let disk = Name::new("vda")?;
    let size = 3 * 1024 * u64::from(CHUNK); // three full pages, all holes
    let w = PointWriter::begin(
        &vault,
        PointOptions::one_disk(name.clone(), None, disk, size),
    )
    .await?;
    let m = w.commit().await?;
    let pages = &m.disks[0].pages;
    assert_eq!(pages.len(), 3);
    assert!(
        pages.iter().all(|p| *p == pages[0]),
        "one stored blob for equal pages: {pages:?}"
    );

    let ghost = PointRef {
        name: name.clone(),
        point: "1000000000000-00000000".parse()?,
    };
    let err = PointWriter::begin(
        &vault,
        PointOptions::one_disk(name, Some(ghost), Name::new("vda")?, size),
    )
    .await
    .err()
    .expect("the parent does not exist");
    assert!(matches!(err, VaultError::UnknownPoint { .. }), "{err}");
    // Writers only create objects: the lease ends with an `end` object, not a delete.
    assert!(
        lifeboat_vault::store::lease::live_leases(&vault)
            .await?
            .is_empty(),
        "the lease must be released"
    );
    assert!(vault
        .backend()
        .list("leases/")
        .await?
        .iter()
        .any(|o| o.key.ends_with("/end")));
    Ok(())
}
