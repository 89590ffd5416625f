//! A key per VM (vault format 2) on a real folder vault: a host given one VM's key reads
//! and writes that VM's points and no other's, cannot forge another VM's points, and holds
//! nothing that opens the rest of the vault.

mod maintenance_common;

use anyhow::Result;
use bytes::Bytes;
use lifeboat_vault::backend::{Backend, BackendOptions, VaultUrl};
use lifeboat_vault::format::{self, KeyFile, PointId, VaultKey};
use lifeboat_vault::store::verify;
use lifeboat_vault::{PointRef, Unlock, Vault, VaultError};
use maintenance_common::*;

const SIZE: usize = 4 << 20;

async fn reopen(dir: &std::path::Path, key: KeyFile) -> Result<Vault> {
    let url = VaultUrl::parse(&format!("file://{}", dir.display()))?;
    let backend = Backend::open(&url, BackendOptions::default()).await?;
    Ok(Vault::open(backend, Unlock::KeyFile(key)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vms_key_opens_that_vm_only() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let admin = folder_vault(&dir).await?;
    assert!(admin.config().scoped(), "new vaults have a key per VM");
    let (web, db) = (name("web1"), name("db1"));
    let (web_img, db_img) = (image(1, SIZE), image(2, SIZE));
    let web_point = put(&admin, &web, None, &web_img, None).await?;
    let db_point = put(&admin, &db, None, &db_img, None).await?;

    // What the server seals to web1's host: web1's key only.
    let master = admin
        .master_key()
        .expect("opened with the master key")
        .clone();
    let web_key = KeyFile::scope(admin.config(), &master, &web)?;
    assert!(matches!(web_key.key, VaultKey::Scope { .. }));
    let host = reopen(&dir, web_key).await?;
    assert!(host.master_key().is_none());
    assert_eq!(host.scope(), Some(&web));

    // Its own VM: read bit for bit, and a child point written on top.
    assert_eq!(restored(&host, &web_point, tmp.path()).await?, web_img);
    let mut web_img2 = web_img.clone();
    web_img2[12345] ^= 0xff;
    let child = put(
        &host,
        &web,
        Some(&web_point),
        &web_img2,
        Some(&[(12345, 1)]),
    )
    .await?;
    assert_eq!(restored(&admin, &child, tmp.path()).await?, web_img2);

    // Another VM: listed (names and times are plaintext), never read nor written.
    assert_eq!(host.list_points(Some(&db)).await?.len(), 1);
    for e in [
        host.manifest(&db_point).await.unwrap_err(),
        restored(&host, &db_point, tmp.path())
            .await
            .unwrap_err()
            .downcast::<VaultError>()?,
        begin(&host, &db, None, SIZE as u64)
            .await
            .err()
            .expect("no writer for another VM")
            .downcast::<VaultError>()?,
    ] {
        assert!(matches!(e, VaultError::OtherScope { .. }), "{e}");
        assert!(
            e.to_string().contains("opens only the points of web1"),
            "{e}"
        );
    }

    // Even with web1's sub-keys in hand (what a compromised host has), db1's chunks do
    // not open: the first data chunk of db1's point, fetched raw.
    let web_keys = host.keys_for(&web)?;
    let entry = page_entries(&admin, &db_point, 0)
        .await?
        .into_iter()
        .find(|e| !e.is_zero())
        .expect("db1 has data");
    let start = u64::from(entry.offset);
    let sealed = admin
        .backend()
        .get_range(
            &format::pack_key(&entry.pack),
            start..start + u64::from(entry.len),
        )
        .await?;
    assert!(format::open_chunk(&web_keys, &entry.chunk, &sealed, CHUNK).is_err());

    // A forged point of db1, sealed with web1's keys (the host can create objects): the
    // real key refuses it, and verify names it as damaged. db1's real point is untouched.
    let mut forged = admin.manifest(&web_point).await?;
    forged.name = db.clone();
    forged.point = PointId::from_parts(db_point.point.time().timestamp_millis() as u64 + 1, 7)?;
    forged.parent = None;
    let (key, bytes) = format::seal_manifest(&web_keys, &forged)?;
    assert!(
        host.backend()
            .put_if_absent(&key, Bytes::from(bytes))
            .await?
    );
    let forged_ref = PointRef {
        name: db.clone(),
        point: forged.point,
    };
    let e = admin.manifest(&forged_ref).await.unwrap_err();
    assert!(matches!(e, VaultError::Format(_)), "{e}");
    let all = admin.list_points(None).await?;
    let report = verify(&admin, &all, |_| {}).await?;
    let bad: Vec<_> = report
        .points
        .iter()
        .filter(|p| !p.problems.is_empty())
        .map(|p| (p.name.clone(), p.point))
        .collect();
    assert_eq!(bad, vec![(db.clone(), forged.point)]);
    assert_eq!(restored(&admin, &db_point, tmp.path()).await?, db_img);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_cannot_build_on_another_vms_point_under_separate_keys() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let scoped = folder_vault(&tmp.path().join("v2")).await?;
    let img = image(3, SIZE);
    let base = put(&scoped, &name("golden"), None, &img, None).await?;
    let e = begin(&scoped, &name("web1"), Some(&base), SIZE as u64)
        .await
        .err()
        .expect("refused")
        .downcast::<VaultError>()?;
    assert!(
        e.to_string().contains("cannot build on a point of golden"),
        "{e}"
    );
    // With one key for every VM (format 1), it can, and stores only what differs.
    let shared = folder_vault_version(&tmp.path().join("v1"), 1).await?;
    let base = put(&shared, &name("golden"), None, &img, None).await?;
    let web = put(&shared, &name("web1"), Some(&base), &img, Some(&[])).await?;
    assert_eq!(shared.manifest(&web).await?.stats.new_chunks, 0);
    assert_eq!(restored(&shared, &web, tmp.path()).await?, img);
    Ok(())
}
