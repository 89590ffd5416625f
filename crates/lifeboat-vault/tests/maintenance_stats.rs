//! stats on a real folder vault: the numbers match what was written.

mod maintenance_common;

use anyhow::Result;
use lifeboat_vault::store::stats;
use maintenance_common::*;

const SIZE: usize = 8 << 20;

/// Non-hole bytes of an image, chunk by chunk.
fn data_bytes(img: &[u8]) -> u64 {
    img.chunks(CS as usize)
        .filter(|c| c.iter().any(|b| *b != 0))
        .map(|c| c.len() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_match_what_was_written_with_one_key_for_every_vm() -> Result<()> {
    stats_match_what_was_written(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_match_what_was_written_with_a_key_per_vm() -> Result<()> {
    stats_match_what_was_written(2).await
}

async fn stats_match_what_was_written(version: u64) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let vault = folder_vault_version(&dir, version).await?;
    // Names that share the vault's key share equal chunks (one chunk id); with a key per
    // name (format 2) the same bytes get another id under each name: stored apart, the
    // price of isolation between VMs.
    let copies = if version == 1 { 1 } else { 2 };

    let empty = stats(&vault).await?;
    assert_eq!((empty.points, empty.packs, empty.stored_bytes), (0, 0, 0));
    assert_eq!(empty.dedup_ratio, None);

    // The same disk in two names: every chunk is there twice, logically.
    let img = image(1, SIZE);
    let a = put(&vault, &name("a"), None, &img, None).await?;
    let b = put(&vault, &name("b"), None, &img, None).await?;
    let s = stats(&vault).await?;
    let data = data_bytes(&img);
    assert_eq!((s.points, s.names), (2, 2));
    assert_eq!(s.logical_bytes, 2 * SIZE as u64);
    assert_eq!(s.logical_data_bytes, 2 * data);
    assert_eq!(s.unique_plain_bytes, copies * data);
    assert_eq!(
        s.unique_chunks,
        copies
            * img
                .chunks(CS as usize)
                .filter(|c| c.iter().any(|b| *b != 0))
                .count() as u64
    );
    assert_eq!(s.dedup_ratio, Some(2.0 / copies as f64));
    // Text compresses, random data does not: more than 1, far less than the text's ratio.
    let c = s.compression_ratio.unwrap();
    assert!(c > 1.2 && c < 10.0, "{c}");
    let files: u64 = pack_keys(&vault)
        .await?
        .iter()
        .map(|k| std::fs::metadata(object_path(&dir, k)).unwrap().len())
        .sum();
    assert_eq!(s.stored_bytes, files);
    assert_eq!(s.packs, pack_keys(&vault).await?.len() as u64);
    // Each name's writer stored the disk on its own (dedup across names happens only in
    // these numbers), so stored bytes hold two copies.
    assert!(s.stored_bytes > 2 * s.unique_stored_bytes / copies);

    // A child with one chunk changed adds a point, logical bytes and one new chunk.
    let mut img2 = img.clone();
    img2[(2 << 20) + 3] ^= 1;
    let c2 = put(
        &vault,
        &name("a"),
        Some(&a),
        &img2,
        Some(&[((2 << 20) + 3, 1)]),
    )
    .await?;
    let s2 = stats(&vault).await?;
    assert_eq!(s2.points, 3);
    assert_eq!(s2.unique_chunks, s.unique_chunks + 1);
    assert_eq!(s2.unique_plain_bytes, copies * data + CS);
    assert_eq!(s2.logical_data_bytes, 3 * data);

    assert_eq!(s2.per_point.len(), 3);
    for (row, p) in s2.per_point.iter().zip([&a, &b, &c2]) {
        let m = vault.manifest(p).await?;
        assert_eq!((&row.name, row.point), (&p.name, p.point));
        assert_eq!(row.time, p.point.time());
        assert_eq!(row.logical_bytes, SIZE as u64);
        assert_eq!(row.new_bytes_plain, m.stats.new_bytes_plain);
        assert_eq!(row.new_bytes_stored, m.stats.new_bytes_stored);
    }
    assert_eq!(s2.per_point[0].new_bytes_plain, data);
    assert_eq!(s2.per_point[2].new_bytes_plain, CS);
    let json = serde_json::to_value(&s2)?;
    assert_eq!(json["dedup_ratio"].as_f64(), s2.dedup_ratio);
    Ok(())
}
