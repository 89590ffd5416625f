//! Least privilege for hosts, end to end on a real Azure Blob emulator (Azurite): the
//! agents reach the vault with a container SAS that may read, create and list — never
//! overwrite or delete — and hold, sealed, the key of their VM's points only. The server
//! holds no vault key, but has storage credentials of its own that may delete: it applies
//! retention and removes points when asked. The VM is protected all the same.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{boot_guest, cluster_with_agent_env, lifeboat, run_ok, wait_points};
use common::cluster::{Cluster, PASSPHRASE};
use lifeboat_vault::backend::{AzureSettings, Backend, BackendError, BackendOptions, VaultUrl};
use lifeboat_vault::format::{self, manifest_key, KeyFile, Name, PointId, VaultKey};
use lifeboat_vault::{PointRef, Unlock, Vault};
use serde_json::Value;

/// The vault as the operator opens it: the account key and the passphrase.
async fn admin_vault(url: &str) -> Vault {
    let backend = Backend::open(&VaultUrl::parse(url).unwrap(), BackendOptions::default())
        .await
        .unwrap();
    Vault::open(backend, Unlock::Passphrase(PASSPHRASE.into()))
        .await
        .unwrap()
}

/// What the key sealed to `host` (in the server's database) holds, opened with that host's
/// own sealing key: what the host, and only it, can read.
async fn key_sealed_to(cl: &Cluster, host: &str) -> KeyFile {
    use base64::Engine;
    let db_url = format!(
        "sqlite://{}?mode=ro",
        cl.home("server").join("server/lifeboat.db").display()
    );
    let db = sqlx::SqlitePool::connect(&db_url).await.unwrap();
    let sealed: String = sqlx::query_scalar(
        "SELECT k.sealed FROM vault_keys k JOIN hosts h ON h.id = k.host_id WHERE h.hostname = $1",
    )
    .bind(host)
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    let sealing =
        lifeboat_agent::sealing::SealingKey::load_or_create(&cl.home(host).join("agent")).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .unwrap();
    KeyFile::decode(&sealing.open(&bytes).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_only_add_points_and_hold_their_vms_key_alone() {
    let azurite = lifeboat_testkit::Azurite::start().await.unwrap();
    let account_endpoint = format!("{}/{}", azurite.endpoint, lifeboat_testkit::AZURITE_ACCOUNT);
    // The server and the CLI (children of this process) use the account key, which may
    // delete; the agents get a SAS on top, which wins over it.
    std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
    std::env::set_var(
        "AZURE_STORAGE_ACCOUNT_NAME",
        lifeboat_testkit::AZURITE_ACCOUNT,
    );
    std::env::set_var("AZURE_STORAGE_ACCOUNT_KEY", lifeboat_testkit::AZURITE_KEY);
    std::env::set_var("AZURE_STORAGE_ENDPOINT", &account_endpoint);
    let sas = azurite.container_sas("rcl", chrono::Utc::now() + chrono::Duration::hours(3));
    let url = format!("az://{}/vault", azurite.container);
    let cl = cluster_with_agent_env(None, Some(&url), &[("AZURE_STORAGE_SAS_TOKEN", &sas)]);
    let (_vm, _console) = boot_guest(&cl.home("alpha"), "web", &[]).await;
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.protect_web(&["--wait", "--timeout", "10m"]);
        assert!(ok, "{out}\n{err}");
        wait_points(&cl, "web", 2, Duration::from_secs(300));
    });
    let admin = admin_vault(&url).await;
    let mut names: Vec<Name> = admin
        .list_points(None)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    names.dedup();
    assert_eq!(names.len(), 1, "{names:?}");
    let name = names.pop().unwrap();

    // Each host holds, sealed to it, the key of this VM's points and nothing more.
    for host in ["alpha", "beta"] {
        match key_sealed_to(&cl, host).await.key {
            VaultKey::Scope { name: scope, .. } => assert_eq!(scope, name, "{host}"),
            VaultKey::Master(_) => panic!("{host} was given the vault's master key"),
        }
    }

    // With the agents' credential, nothing written can be rewritten or deleted.
    let agent_store = Backend::open(
        &VaultUrl::parse(&url).unwrap(),
        BackendOptions {
            azure: Some(AzureSettings::emulator_with_sas(&azurite.endpoint, &sas)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let newest = admin.latest_point(&name).await.unwrap().unwrap();
    let key = manifest_key(&newest.name, &newest.point);
    let before = agent_store.get(&key).await.unwrap();
    let e = agent_store.delete(&key).await.unwrap_err();
    assert!(matches!(e, BackendError::Denied { .. }), "{e}");
    let e = agent_store
        .put(&key, Bytes::from_static(b"ransom"))
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Denied { .. }), "{e}");
    assert_eq!(agent_store.get(&key).await.unwrap(), before);
    admin.manifest(&newest).await.unwrap();
    // The agents' leases ended by creating an end object, not by deleting.
    let leases = agent_store.list("leases/").await.unwrap();
    assert!(leases.iter().any(|o| o.key.ends_with("/end")), "{leases:?}");

    // Retention is the server's, over the points its syncs reported: a reported point 30
    // days old (past every window of the policy) goes at the next sync, deleted with the
    // server's own credentials. A point of the same age that no sync reported (what
    // another host with create rights could put under this VM's name) is kept: it can
    // neither be deleted by retention nor take a real point's retention slot.
    let month_ago = chrono::Utc::now() - chrono::Duration::days(30);
    let mut planted = Vec::new();
    for (i, rnd) in [0x0001_0001u32, 0x0002_0002].into_iter().enumerate() {
        let mut old = admin.manifest(&newest).await.unwrap();
        let ms = month_ago.timestamp_millis() as u64 + i as u64 * 60_000;
        old.point = PointId::from_parts(ms, rnd).unwrap();
        old.parent = None;
        let keys = admin.keys_for(&name).unwrap();
        let (key, sealed) = format::seal_manifest(&keys, &old).unwrap();
        assert!(admin
            .backend()
            .put_if_absent(&key, Bytes::from(sealed))
            .await
            .unwrap());
        planted.push(PointRef {
            name: name.clone(),
            point: old.point,
        });
    }
    let (reported, unreported) = (&planted[0], &planted[1]);
    let db_url = format!(
        "sqlite://{}",
        cl.home("server").join("server/lifeboat.db").display()
    );
    let db = sqlx::SqlitePool::connect(&db_url).await.unwrap();
    sqlx::query(
        "INSERT INTO points (protection_id, point, cut_time, consistency, kind, bytes_read, new_bytes) \
         SELECT id, $1, $2, 'crash', 'incremental', 0, 0 FROM protections WHERE true \
         ON CONFLICT (protection_id, point) DO UPDATE SET kind = 'incremental'",
    )
    .bind(reported.point.to_string())
    .bind(reported.point.time().to_rfc3339())
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    let deadline = Instant::now() + Duration::from_secs(180);
    while admin
        .list_points(Some(&name))
        .await
        .unwrap()
        .contains(reported)
    {
        assert!(
            Instant::now() < deadline,
            "the server did not prune a reported 30-day-old point in 180 s; status: {}",
            cl.json(&["status"])
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let left = admin.list_points(Some(&name)).await.unwrap();
    assert!(left.contains(unreported), "{left:?}");
    let points = cl.json(&["points", "web"]);
    let listed = points
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["point"] == unreported.point.to_string())
        .unwrap_or_else(|| panic!("the server lists what it found: {points}"))
        .clone();
    assert_eq!(listed["kind"], "unknown", "{listed}");

    // Unprotect with --delete-points: the server deletes them, not the agent.
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.cli(&["--json", "unprotect", "web", "--delete-points"]);
        assert!(ok, "{out}\n{err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        assert!(report["points_deleted"].as_u64().unwrap() >= 2, "{report}");
        let mut c = lifeboat(cl.tmp.path());
        c.args(["--json", "vault", "--vault", &url, "list"]);
        let left: Value = serde_json::from_str(&run_ok(c)).unwrap();
        assert_eq!(left.as_array().map(Vec::len), Some(0), "{left}");
    });
}
