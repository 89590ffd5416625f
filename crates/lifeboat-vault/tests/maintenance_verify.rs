//! verify on a real folder vault: clean points are ok; a flipped bit in a chunk, a page or
//! a manifest, a truncated pack and a missing pack are each named exactly (point, disk,
//! slot, offset, chunk id, pack, fault), points that share nothing stay ok, and reading a
//! damaged point fails instead of returning wrong bytes.

mod maintenance_common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use lifeboat_vault::store::{verify, Fault, PointStatus, Problem, VerifyPhase, VerifyReport};
use lifeboat_vault::{PointReader, PointRef, Vault};
use maintenance_common::*;

const SIZE: usize = 8 << 20;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    vault: Vault,
    a1: PointRef,
    a2: PointRef,
    b: PointRef,
    a1_img: Vec<u8>,
}

/// a1: an image; a2: its child with slots 5 (text) and 40 (random) changed; b: another
/// image sharing nothing.
async fn fixture() -> Result<Fixture> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let vault = folder_vault(&dir).await?;
    let a1_img = image(1, SIZE);
    let a1 = put(&vault, &name("a"), None, &a1_img, None).await?;
    let mut a2_img = a1_img.clone();
    let changed = [(5 * CS, 100u64), (40 * CS + 7, 1)];
    for (off, len) in changed {
        for b in &mut a2_img[off as usize..(off + len) as usize] {
            *b = b.wrapping_add(1);
        }
    }
    let a2 = put(&vault, &name("a"), Some(&a1), &a2_img, Some(&changed)).await?;
    let b = put(&vault, &name("b"), None, &image(2, SIZE), None).await?;
    Ok(Fixture {
        _tmp: tmp,
        dir,
        vault,
        a1,
        a2,
        b,
        a1_img,
    })
}

impl Fixture {
    fn all(&self) -> Vec<PointRef> {
        vec![self.a1.clone(), self.a2.clone(), self.b.clone()]
    }

    async fn verify(&self) -> Result<VerifyReport> {
        Ok(verify(&self.vault, &self.all(), |_| {}).await?)
    }
}

fn problems<'a>(r: &'a VerifyReport, p: &PointRef) -> &'a [Problem] {
    let v = r.points.iter().find(|v| v.point == p.point).unwrap();
    assert_eq!(v.status == PointStatus::Ok, v.problems.is_empty());
    &v.problems
}

fn chunk_slots(problems: &[Problem]) -> BTreeMap<u64, Fault> {
    problems
        .iter()
        .map(|p| match p {
            Problem::Chunk { slot, fault, .. } => (*slot, *fault),
            other => panic!("expected only chunk problems, got {other:?}"),
        })
        .collect()
}

async fn read_fails(vault: &Vault, p: &PointRef, offset: u64, dir: &Path) -> Result<()> {
    let reader = PointReader::open(vault, p, 1 << 20).await?;
    let e = reader.read_at(&vda(), offset, 10).await;
    assert!(
        e.is_err(),
        "read_at({offset}) of a damaged point returned bytes"
    );
    let e = reader.restore_raw(&vda(), &dir.join("out.raw")).await;
    assert!(e.is_err(), "restore of a damaged point succeeded");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_points_verify_ok_and_every_distinct_chunk_is_checked_once() -> Result<()> {
    let f = fixture().await?;
    let seen = Mutex::new(BTreeMap::new());
    let report = verify(&f.vault, &f.all(), |p| {
        assert!(p.done <= p.total);
        seen.lock()
            .unwrap()
            .insert(format!("{:?}", p.phase), (p.done, p.total));
    })
    .await?;
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.manifests_checked, 3);
    // a1 and a2 differ in one page; b has its own.
    assert_eq!(report.pages_checked, 3);
    let mut distinct = HashSet::new();
    for p in f.all() {
        for e in page_entries(&f.vault, &p, 0).await? {
            if !e.is_zero() {
                distinct.insert(e);
            }
        }
    }
    assert_eq!(report.chunks_checked, distinct.len() as u64);
    assert_eq!(
        report.chunk_bytes_stored,
        distinct.iter().map(|e| u64::from(e.len)).sum::<u64>()
    );
    let seen = seen.into_inner().unwrap();
    for phase in [
        VerifyPhase::Manifests,
        VerifyPhase::Pages,
        VerifyPhase::Chunks,
    ] {
        let (done, total) = seen[&format!("{phase:?}")];
        assert_eq!(done, total, "{phase:?}");
    }
    assert!(!seen.contains_key("Locate"), "no damage, no locate phase");
    let json = serde_json::to_value(&report)?;
    assert_eq!(json["points"][0]["status"], "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bits_are_named_by_point_slot_and_chunk() -> Result<()> {
    let f = fixture().await?;
    let a1_entries = page_entries(&f.vault, &f.a1, 0).await?;

    // A chunk only a1 has (a2 rewrote slot 40).
    let e = a1_entries[40];
    let path = pack_path(&f.dir, &e.pack);
    flip(&path, u64::from(e.offset) + u64::from(e.len) / 2)?;
    let r = f.verify().await?;
    let got = problems(&r, &f.a1);
    assert_eq!(got.len(), 1, "{got:#?}");
    match &got[0] {
        Problem::Chunk {
            disk,
            slot,
            offset,
            len,
            chunk,
            pack,
            pack_offset,
            fault,
            reason,
        } => {
            assert_eq!(disk, &vda());
            assert_eq!((*slot, *offset, *len), (40, 40 * CS, CHUNK));
            assert_eq!((chunk, pack, *pack_offset), (&e.chunk, &e.pack, e.offset));
            assert_eq!(*fault, Fault::Tampered);
            assert!(reason.contains("authentication failed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(problems(&r, &f.a2).is_empty() && problems(&r, &f.b).is_empty());
    read_fails(&f.vault, &f.a1, 40 * CS + 3, &f.dir).await?;
    let a2 = PointReader::open(&f.vault, &f.a2, 1 << 20).await?;
    assert_eq!(
        a2.read_at(&vda(), 39 * CS, 10).await?,
        f.a1_img[39 * CS as usize..][..10]
    );
    assert!(a2.read_at(&vda(), 40 * CS, 10).await.is_ok());
    flip(&path, u64::from(e.offset) + u64::from(e.len) / 2)?;

    // A chunk a1 and a2 share (slot 6): both points name it.
    let e = a1_entries[6];
    let path = pack_path(&f.dir, &e.pack);
    flip(&path, u64::from(e.offset) + 30)?;
    let r = f.verify().await?;
    for p in [&f.a1, &f.a2] {
        assert_eq!(
            chunk_slots(problems(&r, p)),
            BTreeMap::from([(6, Fault::Tampered)]),
            "{p:?}"
        );
        read_fails(&f.vault, p, 6 * CS, &f.dir).await?;
    }
    assert!(problems(&r, &f.b).is_empty());
    assert_eq!(r.damaged().count(), 2);
    flip(&path, u64::from(e.offset) + 30)?;

    // A1's index page: a1 names page 0; a2 has its own page and is ok.
    let m1 = f.vault.manifest(&f.a1).await?;
    let page = m1.disks[0].pages[0];
    let path = pack_path(&f.dir, &page.pack);
    flip(&path, u64::from(page.offset) + u64::from(page.len) / 2)?;
    let r = f.verify().await?;
    match problems(&r, &f.a1) {
        [Problem::Page {
            disk,
            page: 0,
            page_id,
            pack,
            fault: Fault::Tampered,
            ..
        }] => assert_eq!((disk, page_id, pack), (&vda(), &page.id, &page.pack)),
        other => panic!("{other:#?}"),
    }
    assert!(problems(&r, &f.a2).is_empty() && problems(&r, &f.b).is_empty());
    read_fails(&f.vault, &f.a1, 0, &f.dir).await?;
    flip(&path, u64::from(page.offset) + u64::from(page.len) / 2)?;

    // A1's manifest.
    let path = manifest_path(&f.dir, &f.a1);
    flip(&path, 40)?;
    let r = f.verify().await?;
    assert!(
        matches!(
            problems(&r, &f.a1),
            [Problem::Manifest {
                fault: Fault::Tampered,
                ..
            }]
        ),
        "{r:#?}"
    );
    assert!(problems(&r, &f.a2).is_empty() && problems(&r, &f.b).is_empty());
    assert!(PointReader::open(&f.vault, &f.a1, 1 << 20).await.is_err());
    flip(&path, 40)?;

    assert!(f.verify().await?.is_clean());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_of_a_pack_makes_verify_panic_or_blame_others() -> Result<()> {
    let f = fixture().await?;
    let m = f.vault.manifest(&f.b).await?;
    let path = pack_path(&f.dir, &m.disks[0].pages[0].pack);
    let len = std::fs::metadata(&path)?.len();
    let entries = page_entries(&f.vault, &f.b, 0).await?;
    let used: Vec<(u64, u64)> = entries
        .iter()
        .filter(|e| !e.is_zero())
        .map(|e| (u64::from(e.offset), u64::from(e.offset + e.len)))
        .chain([(
            u64::from(m.disks[0].pages[0].offset),
            u64::from(m.disks[0].pages[0].offset + m.disks[0].pages[0].len),
        )])
        .collect();
    for i in 0..16u64 {
        let at = (i * 0x9e37_79b9 + 5) % len;
        flip(&path, at)?;
        let r = f.verify().await?;
        assert!(problems(&r, &f.a1).is_empty() && problems(&r, &f.a2).is_empty());
        // A flip inside a blob b needs damages b; one in the pack head or trailer does not.
        let inside = used.iter().any(|(s, e)| (*s..*e).contains(&at));
        assert_eq!(!problems(&r, &f.b).is_empty(), inside, "byte {at}");
        flip(&path, at)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_missing_packs_are_problems_not_crashes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let vault = folder_vault(&dir).await?;
    let small = put(&vault, &name("a"), None, &image(1, 4 << 20), None).await?;
    // 24 MiB of random data: a full pack of chunks, then a pack with the rest and the page.
    let big = put(&vault, &name("big"), None, &random(3, 24 << 20), None).await?;
    let points = [small.clone(), big.clone()];
    let m = vault.manifest(&big).await?;
    let page_pack = m.disks[0].pages[0].pack;
    let entries = page_entries(&vault, &big, 0).await?;
    let packs: BTreeSet<_> = entries.iter().map(|e| e.pack).collect();
    let full = *packs.iter().find(|p| **p != page_pack).expect("two packs");

    let path = pack_path(&dir, &full);
    let bytes = std::fs::read(&path)?;
    let half = bytes.len() as u64 / 2;
    std::fs::write(&path, &bytes[..half as usize])?;
    let r = verify(&vault, &points, |_| {}).await?;
    let want: BTreeMap<u64, Fault> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.pack == full && u64::from(e.offset + e.len) > half)
        .map(|(slot, _)| (slot as u64, Fault::Truncated))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(chunk_slots(problems(&r, &big)), want);
    assert!(problems(&r, &small).is_empty());
    read_fails(&vault, &big, want.keys().next().unwrap() * CS, tmp.path()).await?;

    std::fs::remove_file(&path)?;
    let r = verify(&vault, &points, |_| {}).await?;
    let want: BTreeMap<u64, Fault> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.pack == full)
        .map(|(slot, _)| (slot as u64, Fault::Missing))
        .collect();
    assert_eq!(chunk_slots(problems(&r, &big)), want);
    assert!(problems(&r, &small).is_empty());
    for p in problems(&r, &big) {
        let Problem::Chunk {
            pack, offset, slot, ..
        } = p
        else {
            unreachable!()
        };
        assert_eq!((*pack, *offset), (full, slot * CS));
    }

    std::fs::remove_file(pack_path(&dir, &page_pack))?;
    let r = verify(&vault, &points, |_| {}).await?;
    assert!(
        matches!(
            problems(&r, &big),
            [Problem::Page {
                page: 0,
                fault: Fault::Missing,
                ..
            }]
        ),
        "{r:#?}"
    );
    assert!(problems(&r, &small).is_empty());
    // A point that does not exist at all is a missing manifest.
    let ghost = PointRef {
        name: name("ghost"),
        point: lifeboat_vault::format::PointId::from_parts(1, 1)?,
    };
    let r = verify(&vault, std::slice::from_ref(&ghost), |_| {}).await?;
    assert!(matches!(
        problems(&r, &ghost),
        [Problem::Manifest {
            fault: Fault::Missing,
            ..
        }]
    ));
    Ok(())
}

/// A restore whose first chunk is damaged ends with that damage, however many runs of
/// chunks follow. It used to wait forever once the runs found outnumbered those in
/// flight and in the queue: the restore side failed, the finder waited to hand it more,
/// every thread parked (seen once in the vault benchmark, at 4 GiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_early_reports_it_instead_of_hanging() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("v");
    let vault = folder_vault(&root).await?;
    // Random chunks stored back to back: 48 MiB is a dozen runs of at most 4 MiB.
    let img = random(7, 48 << 20);
    let p = put(&vault, &name("big"), None, &img, None).await?;
    let first = page_entries(&vault, &p, 0).await?[0];
    flip(&pack_path(&root, &first.pack), u64::from(first.offset) + 40)?;
    let reader = PointReader::open(&vault, &p, 1 << 20).await?;
    let (disk, out) = (vda(), dir.path().join("out.raw"));
    let restore = reader.restore_raw(&disk, &out);
    let e = tokio::time::timeout(Duration::from_secs(120), restore)
        .await
        .expect("the restore of a damaged point hung")
        .expect_err("the restore of a damaged point succeeded");
    assert!(e.to_string().contains("chunk 0 "), "{e}");
    Ok(())
}
