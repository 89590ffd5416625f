//! gc on a real folder vault: after a prune it deletes exactly the packs only the pruned
//! points used, every remaining point still restores bit for bit; a dry run deletes
//! nothing; a writer at work loses nothing; an unreadable manifest or page stops it.

mod maintenance_common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use lifeboat_vault::format::{lease_object_key, LeaseObject, PackId, SessionId};
use lifeboat_vault::store::lease::LeaseRecord;
use lifeboat_vault::store::{execute_prune, gc, plan_gc, plan_prune, verify, RetentionPolicy};
use lifeboat_vault::{PointRef, Vault};
use maintenance_common::*;

const SIZE: usize = 8 << 20;
const HOUR: Duration = Duration::from_secs(3600);

async fn new_packs(vault: &Vault, before: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    Ok(pack_keys(vault)
        .await?
        .difference(before)
        .cloned()
        .collect())
}

async fn prune_all_but_newest(vault: &Vault) -> Result<Vec<PointRef>> {
    let policy = RetentionPolicy {
        keep_within: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let plan = plan_prune(vault, &policy, None, Utc::now() + TimeDelta::days(1)).await?;
    Ok(execute_prune(vault, &plan).await?.deleted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_after_prune_deletes_exactly_the_dead_packs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let vault = folder_vault(&dir).await?;
    let a = name("a");

    let before = pack_keys(&vault).await?;
    let a1 = put(&vault, &a, None, &image(1, SIZE), None).await?;
    let a1_packs = new_packs(&vault, &before).await?;
    // a2 starts afresh (no parent): nothing of a1 is in it.
    let before = pack_keys(&vault).await?;
    let a2_img = image(2, SIZE);
    let a2 = put(&vault, &a, None, &a2_img, None).await?;
    let a2_packs = new_packs(&vault, &before).await?;
    // a3 is a2 with one chunk changed: it keeps most of a2's pack alive.
    let mut a3_img = a2_img.clone();
    a3_img[(2 << 20) + 5] ^= 0xff;
    let a3 = put(&vault, &a, Some(&a2), &a3_img, Some(&[((2 << 20) + 5, 1)])).await?;
    let b_img = image(3, SIZE);
    let b = put(&vault, &name("b"), None, &b_img, None).await?;
    // A stale lease of a writer dead for an hour (as an earlier version wrote it: one
    // object, rewritten to renew).
    let stale = lease_object_key(&SessionId::random(), LeaseObject::Whole);
    let record = LeaseRecord {
        name: a.clone(),
        parent: Some(a1.point),
        started: Utc::now() - TimeDelta::hours(2),
        host: "gone".into(),
        end_commit: None,
    };
    vault
        .backend()
        .put(&stale, Bytes::from(serde_json::to_vec(&record)?))
        .await?;
    age(&object_path(&dir, &stale), HOUR)?;

    let pruned = prune_all_but_newest(&vault).await?;
    assert_eq!(pruned, vec![a1.clone(), a2.clone()]);
    let all = pack_keys(&vault).await?;

    // Dry run: the plan names a1's packs; nothing goes.
    let dry = gc(&vault, Duration::ZERO, true).await?;
    assert!(dry.dry_run && !dry.blocked);
    let planned: BTreeSet<String> = dry
        .plan
        .delete_packs
        .iter()
        .map(|p| p.key.clone())
        .collect();
    assert_eq!(planned, a1_packs);
    assert_eq!(dry.packs_deleted, 0);
    assert_eq!(pack_keys(&vault).await?, all);
    assert_eq!(dry.plan.delete_leases.len(), 1);
    assert!(vault.backend().head(&stale).await?.is_some());

    let report = gc(&vault, Duration::ZERO, false).await?;
    assert_eq!(report.packs_deleted, a1_packs.len() as u64);
    let sizes: u64 = dry.plan.delete_packs.iter().map(|p| p.size).sum();
    assert_eq!(report.bytes_freed, sizes);
    assert_eq!(report.packs_kept, (all.len() - a1_packs.len()) as u64);
    assert_eq!(report.leases_deleted, 1);
    assert!(vault.backend().head(&stale).await?.is_none());
    assert_eq!(
        pack_keys(&vault).await?,
        all.difference(&a1_packs).cloned().collect()
    );
    // a2's pack lives on for a3, with a2's page and a3's replaced chunk dead in it.
    let a2_pack: PackId = a2_packs
        .iter()
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()?;
    let partly = report
        .plan
        .partly_dead
        .iter()
        .find(|p| p.pack == a2_pack)
        .expect("a2's pack is partly dead");
    assert_eq!(partly.dead_blobs, 2, "{partly:?}");
    assert!(report.waste_bytes >= partly.dead_bytes && partly.dead_bytes > 0);
    assert!(report.plan.missing_packs.is_empty() && report.plan.foreign.is_empty());
    serde_json::to_string(&report)?;

    assert_eq!(restored(&vault, &a3, tmp.path()).await?, a3_img);
    assert_eq!(restored(&vault, &b, tmp.path()).await?, b_img);
    assert!(verify(&vault, &vault.list_points(None).await?, |_| {})
        .await?
        .is_clean());

    // Nothing left to collect.
    let again = gc(&vault, Duration::ZERO, false).await?;
    assert_eq!((again.packs_deleted, again.leases_deleted), (0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_while_a_writer_runs_loses_nothing() -> Result<()> {
    const BIG: usize = 32 << 20;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let vault = folder_vault(&dir).await?;
    let a = name("a");
    let a1_img = image(1, BIG);
    let a1 = put(&vault, &a, None, &a1_img, None).await?;
    let b = put(&vault, &name("b"), None, &image(2, SIZE), None).await?;

    // A writer that crashed long ago left a pack no manifest names.
    let before = pack_keys(&vault).await?;
    // (A writer keeps up to 8 MiB in flight: 32 MiB fills a 16 MiB pack before it returns.)
    let mut crashed = begin(&vault, &name("c"), None, BIG as u64).await?;
    crashed
        .write(&vda(), 0, Bytes::from(random(7, BIG)))
        .await?;
    let orphan = wait_for_new_pack(&vault, &before).await?;
    drop(crashed);
    // Age every pack there is by two hours: the grace is over for all of them.
    for k in pack_keys(&vault).await? {
        age(&object_path(&dir, &k), 2 * HOUR)?;
    }

    // A writer on top of a1: 32 MiB of new data, so one pack is uploaded before commit.
    let before = pack_keys(&vault).await?;
    let mut w = begin(&vault, &a, Some(&a1), BIG as u64).await?;
    let w_img = random(8, BIG);
    w.write(&vda(), 0, Bytes::copy_from_slice(&w_img)).await?;
    let writers_pack = wait_for_new_pack(&vault, &before).await?;

    let report = gc(&vault, HOUR, false).await?;
    assert!(!report.blocked);
    let deleted: Vec<&str> = report
        .plan
        .delete_packs
        .iter()
        .map(|p| p.key.as_str())
        .collect();
    assert_eq!(deleted, vec![orphan.as_str()]);
    assert!(report.plan.packs_young >= 1);
    let now_packs = pack_keys(&vault).await?;
    assert!(now_packs.contains(&writers_pack));
    assert!(!now_packs.contains(&orphan));

    // Even with no grace at all, the live writer's packs are newer than its lease.
    let report = gc(&vault, Duration::ZERO, false).await?;
    assert_eq!(report.packs_deleted, 0, "{:#?}", report.plan.delete_packs);
    assert!(pack_keys(&vault).await?.contains(&writers_pack));

    let m = w.commit().await?;
    let w_point = PointRef {
        name: m.name,
        point: m.point,
    };
    let points = vault.list_points(None).await?;
    assert_eq!(points.len(), 3);
    assert!(verify(&vault, &points, |_| {}).await?.is_clean());
    assert_eq!(restored(&vault, &w_point, tmp.path()).await?, w_img);
    assert_eq!(restored(&vault, &a1, tmp.path()).await?, a1_img);
    assert!(restored(&vault, &b, tmp.path()).await.is_ok());
    Ok(())
}

/// Waits until a pack uploaded in the background shows in the listing.
async fn wait_for_new_pack(vault: &Vault, before: &BTreeSet<String>) -> Result<String> {
    for _ in 0..200 {
        if let Some(k) = new_packs(vault, before).await?.into_iter().next() {
            return Ok(k);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no pack was uploaded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_manifest_or_page_stops_gc() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let vault = folder_vault(&dir).await?;
    let a = name("a");
    put(&vault, &a, None, &image(1, 4 << 20), None).await?;
    put(&vault, &a, None, &image(2, 4 << 20), None).await?;
    let b = put(&vault, &name("b"), None, &image(3, 4 << 20), None).await?;
    prune_all_but_newest(&vault).await?;
    let all = pack_keys(&vault).await?;

    let path = manifest_path(&dir, &b);
    flip(&path, 50)?;
    let report = gc(&vault, Duration::ZERO, false).await?;
    assert!(report.blocked);
    assert_eq!(report.packs_deleted, 0);
    assert!(report.plan.delete_packs.is_empty());
    assert_eq!(report.plan.unreadable.len(), 1);
    assert!(
        report.plan.unreadable[0]
            .object
            .contains(&b.point.to_string()),
        "{:?}",
        report.plan.unreadable
    );
    assert_eq!(pack_keys(&vault).await?, all);
    flip(&path, 50)?;

    let page = vault.manifest(&b).await?.disks[0].pages[0];
    let path = pack_path(&dir, &page.pack);
    flip(&path, u64::from(page.offset) + 60)?;
    let plan = plan_gc(&vault, Duration::ZERO).await?;
    assert!(plan.is_blocked() && plan.delete_packs.is_empty());
    assert!(plan.unreadable[0].object.contains(&page.id.to_string()));
    let report = lifeboat_vault::store::execute_gc(&vault, plan).await?;
    assert_eq!(report.packs_deleted, 0);
    assert_eq!(pack_keys(&vault).await?, all);
    flip(&path, u64::from(page.offset) + 60)?;

    // The parent of a live writer gone missing also stops gc.
    let record = LeaseRecord {
        name: a.clone(),
        parent: Some(lifeboat_vault::format::PointId::from_parts(5, 5)?),
        started: Utc::now(),
        host: "here".into(),
        end_commit: None,
    };
    let lease = lease_object_key(&SessionId::random(), LeaseObject::Renewal(0));
    vault
        .backend()
        .put(&lease, Bytes::from(serde_json::to_vec(&record)?))
        .await?;
    let report = gc(&vault, Duration::ZERO, false).await?;
    assert!(report.blocked, "{:#?}", report.plan);
    assert_eq!(pack_keys(&vault).await?, all);
    vault.backend().delete(&lease).await?;

    let report = gc(&vault, Duration::ZERO, false).await?;
    assert!(!report.blocked && report.packs_deleted == 1, "{report:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_only_create_lease_objects_and_gc_removes_old_ones() -> Result<()> {
    use lifeboat_vault::store::lease::live_leases;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let vault = folder_vault(&dir).await?;
    let leases = |vault: Vault| async move {
        let mut keys: Vec<String> = vault
            .backend()
            .list("leases/")
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        anyhow::Ok(keys)
    };
    let w = begin(&vault, &name("a"), None, SIZE as u64).await?;
    let started = leases(vault.clone()).await?;
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(started[0].ends_with("/0"), "{started:?}");
    let first = std::fs::read(object_path(&dir, &started[0]))?;
    assert_eq!(live_leases(&vault).await?.len(), 1);
    // What the next lease names as its parent: a point that exists.
    let parent_point = w.commit().await?.point;
    // Ended by one more object; the first is as it was, nothing was deleted.
    let ended = leases(vault.clone()).await?;
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert!(ended.contains(&started[0]) && ended.iter().any(|k| k.ends_with("/end")));
    assert_eq!(std::fs::read(object_path(&dir, &started[0]))?, first);
    assert!(live_leases(&vault).await?.is_empty());
    // A renewal newer than an old first object keeps a session alive; only an end that
    // reveals the secret its first renewal committed to stops it.
    let s = SessionId::random();
    let secret = b"the writer's own secret, 32 byte";
    let record = LeaseRecord {
        name: name("b"),
        parent: Some(parent_point),
        started: Utc::now() - TimeDelta::hours(1),
        host: "h".into(),
        end_commit: Some(blake3::hash(secret).to_hex().to_string()),
    };
    let body = Bytes::from(serde_json::to_vec(&record)?);
    for n in [0, 1] {
        let key = lease_object_key(&s, LeaseObject::Renewal(n));
        assert!(vault.backend().put_if_absent(&key, body.clone()).await?);
    }
    age(
        &object_path(&dir, &lease_object_key(&s, LeaseObject::Renewal(0))),
        HOUR,
    )?;
    assert_eq!(live_leases(&vault).await?.len(), 1);
    // gc removes what is old (the ended writer's objects, aged; the old renewal), never
    // the live session's newest renewal.
    for k in &ended {
        age(&object_path(&dir, k), HOUR)?;
    }
    gc(&vault, Duration::ZERO, false).await?;
    assert_eq!(
        leases(vault.clone()).await?,
        vec![lease_object_key(&s, LeaseObject::Renewal(1))]
    );
    assert_eq!(live_leases(&vault).await?.len(), 1);
    // Someone else with create rights: a renewal of their own naming another parent, and
    // an end without the secret. The lease still protects what its writer named, and
    // lives on (at worst longer: prune and gc hold back, never delete).
    let forged = LeaseRecord {
        parent: None,
        end_commit: None,
        ..record.clone()
    };
    let key = lease_object_key(&s, LeaseObject::Renewal(2));
    let forged_body = Bytes::from(serde_json::to_vec(&forged)?);
    assert!(vault.backend().put_if_absent(&key, forged_body).await?);
    let end = lease_object_key(&s, LeaseObject::End);
    assert!(vault.backend().put_if_absent(&end, Bytes::new()).await?);
    let live = live_leases(&vault).await?;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].parent, Some(parent_point));
    // The writer's own end (another session, as the end key is taken) stops its lease.
    let t = SessionId::random();
    let first = lease_object_key(&t, LeaseObject::Renewal(0));
    assert!(vault.backend().put_if_absent(&first, body.clone()).await?);
    assert_eq!(live_leases(&vault).await?.len(), 2);
    let end = lease_object_key(&t, LeaseObject::End);
    let secret_bytes = Bytes::from_static(secret);
    assert!(vault.backend().put_if_absent(&end, secret_bytes).await?);
    assert_eq!(live_leases(&vault).await?.len(), 1);
    Ok(())
}
