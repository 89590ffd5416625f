//! An append-only credential on Azure: a container SAS with permissions `rcl` (read,
//! create, list), the credential a hypervisor host holds so that a compromised host can add
//! recovery points but never destroy one. Against a real Azurite, with the SAS minted by
//! `lifeboat_testkit::azurite_container_sas` and the emulator's account key as the
//! administrator's credential on the same container.
//!
//! What Azure (and Azurite) does with such a SAS: Put Blob of a new blob is allowed (201);
//! Put Blob over an existing blob is refused with 403, `If-None-Match: *` or not; Delete
//! Blob is refused with 403. The backend must turn those into the vault's contract:
//! `put_if_absent` of an existing key is `false`, an overwrite or a delete is `Denied`
//! with a cause that says why, and the refusals are not retried.

mod maintenance_common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use lifeboat_testkit::{Azurite, AZURITE_ACCOUNT, AZURITE_KEY};
use lifeboat_vault::backend::{
    AzureSettings, Backend, BackendError, BackendOptions, Secret, VaultUrl,
};
use maintenance_common::test_options;

fn vault_url(azurite: &Azurite) -> VaultUrl {
    VaultUrl::parse(&format!("az://{}/vault", azurite.container)).unwrap()
}

fn sas(azurite: &Azurite, permissions: &str) -> String {
    azurite.container_sas(permissions, Utc::now() + chrono::Duration::hours(1))
}

/// The administrator: the account key, allowed everything.
async fn admin(azurite: &Azurite) -> Backend {
    let opts = BackendOptions {
        azure: Some(AzureSettings::emulator(&azurite.endpoint)),
        ..test_options()
    };
    Backend::open(&vault_url(azurite), opts).await.unwrap()
}

/// A host holding a SAS with `permissions`, and nothing else.
async fn host(azurite: &Azurite, permissions: &str) -> Backend {
    host_with(azurite, &sas(azurite, permissions), test_options()).await
}

async fn host_with(azurite: &Azurite, sas: &str, opts: BackendOptions) -> Backend {
    let opts = BackendOptions {
        azure: Some(AzureSettings::emulator_with_sas(&azurite.endpoint, sas)),
        ..opts
    };
    Backend::open(&vault_url(azurite), opts).await.unwrap()
}

fn data(len: usize, seed: u64) -> Bytes {
    Bytes::from(lifeboat_testkit::random_bytes(seed, len))
}

fn assert_denied(err: &BackendError, op: &str, says: &str) {
    let text = err.to_string();
    println!("{text}");
    assert!(
        matches!(err, BackendError::Denied { op: o, .. } if *o == op),
        "{err:?}"
    );
    assert!(text.contains(says), "{text}");
}

const POINT: &str = "points/web1/1764136800000-1a2b3c4d";

#[tokio::test]
async fn rcl_put_if_absent_creates_a_new_object() {
    let azurite = Azurite::start().await.unwrap();
    let host = host(&azurite, "rcl").await;
    assert!(host.put_if_absent(POINT, data(300, 1)).await.unwrap());
    assert_eq!(host.get(POINT).await.unwrap(), data(300, 1));
    assert_eq!(
        admin(&azurite).await.get(POINT).await.unwrap(),
        data(300, 1)
    );
}

#[tokio::test]
async fn rcl_put_if_absent_of_an_existing_key_is_false_and_keeps_the_bytes() {
    let azurite = Azurite::start().await.unwrap();
    let host = host(&azurite, "rcl").await;
    assert!(host.put_if_absent(POINT, data(300, 1)).await.unwrap());
    // Azure answers 403 here, not 409: the backend must look before calling it a refusal.
    assert!(!host.put_if_absent(POINT, data(300, 2)).await.unwrap());
    assert_eq!(host.get(POINT).await.unwrap(), data(300, 1));
    // Also for an object the administrator wrote.
    admin(&azurite)
        .await
        .put("config", data(50, 3))
        .await
        .unwrap();
    assert!(!host.put_if_absent("config", data(50, 4)).await.unwrap());
    assert_eq!(host.get("config").await.unwrap(), data(50, 3));
}

#[tokio::test]
async fn rcl_overwrite_is_denied_and_keeps_the_bytes() {
    let azurite = Azurite::start().await.unwrap();
    let host = host(&azurite, "rcl").await;
    // A plain put of a new key is a create, which the SAS allows.
    host.put("packs/ab/ab01", data(100, 1)).await.unwrap();
    let err = host.put("packs/ab/ab01", data(100, 2)).await.unwrap_err();
    assert_denied(&err, "write", "this credential may not overwrite objects");
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = host
        .put_parts("packs/ab/ab01", vec![data(10, 3), data(10, 4)])
        .await
        .unwrap_err();
    assert_denied(&err, "write", "may not overwrite");
    assert_eq!(host.get("packs/ab/ab01").await.unwrap(), data(100, 1));
}

#[tokio::test]
async fn rcl_delete_is_denied_at_once_and_the_object_stays() {
    let azurite = Azurite::start().await.unwrap();
    let sas = sas(&azurite, "rcl");
    // Backoff long enough that one retry would show in the elapsed time.
    let opts = BackendOptions {
        initial_backoff: Duration::from_secs(3),
        max_backoff: Duration::from_secs(3),
        max_elapsed: Duration::from_secs(30),
        ..test_options()
    };
    let host = host_with(&azurite, &sas, opts).await;
    host.put(POINT, data(200, 1)).await.unwrap();
    let started = Instant::now();
    let err = host.delete(POINT).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a refusal was retried: {:?}",
        started.elapsed()
    );
    assert_denied(&err, "delete", "this credential may not delete objects");
    let text = format!("{err} {err:?}");
    assert!(text.contains("append-only"), "{text}");
    assert!(text.contains("`rcl`"), "{text}");
    let signature = sas.rsplit("sig=").next().unwrap();
    assert!(!text.contains(signature), "the SAS leaked: {text}");
    assert_eq!(host.get(POINT).await.unwrap(), data(200, 1));
    assert!(host.head(POINT).await.unwrap().is_some());
}

/// The same delete with the account key works: the tests above see the SAS's limits,
/// not a container that refuses everyone.
#[tokio::test]
async fn the_account_key_on_the_same_container_may_delete() {
    let azurite = Azurite::start().await.unwrap();
    let host = host(&azurite, "rcl").await;
    let admin = admin(&azurite).await;
    host.put(POINT, data(200, 1)).await.unwrap();
    assert!(host.delete(POINT).await.is_err());
    admin.delete(POINT).await.unwrap();
    assert_eq!(admin.head(POINT).await.unwrap(), None);
    assert_eq!(host.head(POINT).await.unwrap(), None);
}

#[tokio::test]
async fn rcl_reads_and_lists() {
    let azurite = Azurite::start().await.unwrap();
    let host = host(&azurite, "rcl").await;
    admin(&azurite)
        .await
        .put("config", data(40, 1))
        .await
        .unwrap();
    let body = data(1000, 2);
    host.put("packs/ab/ab01", body.clone()).await.unwrap();
    host.put_if_absent(POINT, data(30, 3)).await.unwrap();
    assert_eq!(host.get("config").await.unwrap(), data(40, 1));
    assert_eq!(
        host.get_range("packs/ab/ab01", 100..200).await.unwrap(),
        body.slice(100..200)
    );
    let err = host
        .get_range("packs/ab/ab01", 900..1001)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::BadRange { .. }), "{err:?}");
    let info = host.head("packs/ab/ab01").await.unwrap().unwrap();
    assert_eq!((info.key.as_str(), info.size), ("packs/ab/ab01", 1000));
    assert_eq!(host.head("packs/ab/none").await.unwrap(), None);
    assert!(host.get("packs/ab/none").await.unwrap_err().is_not_found());
    let mut keys: Vec<String> = host
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["config", "packs/ab/ab01", POINT]);
    assert_eq!(host.list("packs/").await.unwrap().len(), 1);
}

/// Given a SAS and an account key, the backend uses the SAS alone: object_store on its
/// own would sign with the key and give the host full rights back.
#[tokio::test]
async fn settings_with_a_sas_and_an_account_key_use_the_sas() {
    let azurite = Azurite::start().await.unwrap();
    let mut settings = AzureSettings::emulator(&azurite.endpoint);
    assert!(settings.access_key.is_some());
    settings.sas_token = Some(Secret::new(sas(&azurite, "rcl")));
    let opts = BackendOptions {
        azure: Some(settings),
        ..test_options()
    };
    let host = Backend::open(&vault_url(&azurite), opts).await.unwrap();
    host.put(POINT, data(20, 1)).await.unwrap();
    let err = host.delete(POINT).await.unwrap_err();
    assert_denied(&err, "delete", "may not delete");
    let err = host.put(POINT, data(20, 2)).await.unwrap_err();
    assert_denied(&err, "write", "may not overwrite");
    assert_eq!(host.get(POINT).await.unwrap(), data(20, 1));
}

/// A SAS without `c` (or `w`) cannot add recovery points: say so, create nothing.
#[tokio::test]
async fn rl_put_if_absent_of_a_new_key_is_denied() {
    let azurite = Azurite::start().await.unwrap();
    let host = host(&azurite, "rl").await;
    let admin = admin(&azurite).await;
    let err = host.put_if_absent(POINT, data(30, 1)).await.unwrap_err();
    assert_denied(&err, "create", "this credential may not create objects");
    assert!(err.to_string().contains("`rl`"), "{err}");
    assert_eq!(admin.head(POINT).await.unwrap(), None);
    let err = host.put("packs/ab/ab01", data(30, 2)).await.unwrap_err();
    assert_denied(&err, "write", "may not create");
    // An existing key is still "already there", whatever the credential may do.
    admin.put("config", data(30, 3)).await.unwrap();
    assert!(!host.put_if_absent("config", data(30, 4)).await.unwrap());
    assert_eq!(admin.get("config").await.unwrap(), data(30, 3));
}

/// A pasted SAS without its signature is refused when the vault opens, without echoing it.
#[tokio::test]
async fn a_sas_without_a_signature_is_refused_at_open() {
    let opts = BackendOptions {
        azure: Some(AzureSettings::emulator_with_sas(
            "http://127.0.0.1:1",
            "sv=2021-08-06&sr=c&sp=rcl&se=2030-01-01T00%3A00%3A00Z&secret-looking-part",
        )),
        ..test_options()
    };
    let err = Backend::open(&VaultUrl::parse("az://lifeboat-test/vault").unwrap(), opts)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BackendError::Config { .. }), "{err:?}");
    assert!(text.contains("AZURE_STORAGE_SAS_TOKEN"), "{text}");
    assert!(!text.contains("secret-looking-part"), "{text}");
    let opts = BackendOptions {
        azure: Some(AzureSettings::emulator_with_sas(
            "http://127.0.0.1:1",
            "?sv=2021-08-06&sr=c&sp=rcl",
        )),
        ..test_options()
    };
    let err = Backend::open(&VaultUrl::parse("az://lifeboat-test/vault").unwrap(), opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no signature"), "{err}");
}

// ---- From the environment, as a host is configured. ----
//
// The environment is the process's: each case runs in a child process of this test
// binary (the ignored `env_child` test), given its variables by `Command::env`, so that no
// test changes the environment of the threads around it.

const CHILD_FLAG: &str = "LIFEBOAT_TEST_AZURE_ENV_CHILD";

async fn run_env_child(extra: &[(&str, &str)]) {
    let azurite = Azurite::start().await.unwrap();
    let admin = admin(&azurite).await;
    admin.put(POINT, data(20, 1)).await.unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["env_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_FLAG, vault_url(&azurite).to_string())
        .env("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT)
        .env("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
        .env(
            "AZURE_STORAGE_ENDPOINT",
            format!("{}/{AZURITE_ACCOUNT}", azurite.endpoint),
        )
        .env("AZURE_STORAGE_SAS_TOKEN", sas(&azurite, "rcl"))
        .env_remove("AZURE_STORAGE_SAS_KEY")
        .env_remove("AZURE_STORAGE_USE_EMULATOR")
        .env_remove("AZURITE_BLOB_STORAGE_URL");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child failed");
    // The child must really have run (a filter typo would run nothing and succeed).
    assert!(stdout.contains("1 passed"), "{stdout}");
    // And changed nothing it may not.
    assert_eq!(admin.get(POINT).await.unwrap(), data(20, 1));
    assert_eq!(admin.get("points/web1/new").await.unwrap(), data(20, 3));
}

#[tokio::test]
async fn a_sas_from_the_environment_wins_over_an_account_key_there() {
    run_env_child(&[]).await;
}

/// object_store's emulator mode (switched on by AZURE_STORAGE_USE_EMULATOR in its
/// `from_env`) would sign with the account key and ignore the SAS.
#[tokio::test]
async fn a_sas_from_the_environment_wins_in_emulator_mode_too() {
    run_env_child(&[("AZURE_STORAGE_USE_EMULATOR", "true")]).await;
}

#[tokio::test]
#[ignore = "run by the tests above in a child process, with its own environment"]
async fn env_child() {
    let Ok(url) = std::env::var(CHILD_FLAG) else {
        panic!("only run from a_sas_from_the_environment_* (needs {CHILD_FLAG})");
    };
    // `azure: None`: settings and object_store's builder both read the environment.
    let host = Backend::open(&VaultUrl::parse(&url).unwrap(), test_options())
        .await
        .unwrap();
    let err = host.delete(POINT).await.unwrap_err();
    assert_denied(&err, "delete", "may not delete");
    let err = host.put(POINT, data(20, 2)).await.unwrap_err();
    assert_denied(&err, "write", "may not overwrite");
    assert!(!host.put_if_absent(POINT, data(20, 2)).await.unwrap());
    assert!(host
        .put_if_absent("points/web1/new", data(20, 3))
        .await
        .unwrap());
}
