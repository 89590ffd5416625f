//! One suite, every backend: the same test functions run against a folder in a temporary
//! directory, S3 on a real `s3s-fs`, and Azure Blob on a real Azurite (both from
//! `lifeboat-testkit`; install them with `scripts/object-servers.sh`). A backend that
//! passes here gives the vault what `docs/vault-format.md` relies on.

mod maintenance_common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use lifeboat_testkit::{Azurite, S3Server};
use lifeboat_vault::backend::{
    AzureSettings, Backend, BackendError, BackendOptions, S3Settings, VaultUrl,
};
use maintenance_common::test_options;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Folder,
    S3,
    Azure,
}

/// Keeps the storage alive (and lets a test kill it) for as long as the test runs.
enum Server {
    Folder(#[allow(dead_code)] tempfile::TempDir),
    S3(S3Server),
    Azure(Azurite),
}

struct Fixture {
    backend: Backend,
    server: Server,
}

async fn fixture(kind: Kind) -> Fixture {
    fixture_at(kind, "vault").await
}

async fn fixture_at(kind: Kind, prefix: &str) -> Fixture {
    let mut opts = test_options();
    let (url, server) = match kind {
        Kind::Folder => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("file://{}/{prefix}", dir.path().display());
            (url, Server::Folder(dir))
        }
        Kind::S3 => {
            let s3 = S3Server::start().await.unwrap();
            let mut settings = S3Settings::with_keys(&s3.access_key, &s3.secret_key);
            settings.endpoint = Some(s3.endpoint.clone());
            opts.s3 = Some(settings);
            (format!("s3://{}/{prefix}", s3.bucket), Server::S3(s3))
        }
        Kind::Azure => {
            let azurite = Azurite::start().await.unwrap();
            opts.azure = Some(AzureSettings::emulator(&azurite.endpoint));
            let url = format!("az://{}/{prefix}", azurite.container);
            (url, Server::Azure(azurite))
        }
    };
    let url = VaultUrl::parse(&url).unwrap();
    let backend = Backend::open(&url, opts).await.unwrap();
    Fixture { backend, server }
}

fn data(len: usize, seed: u64) -> Bytes {
    Bytes::from(lifeboat_testkit::random_bytes(seed, len))
}

async fn put_get_round_trip(kind: Kind) {
    let f = fixture(kind).await;
    let body = data(1000, 1);
    f.backend.put("config", body.clone()).await.unwrap();
    assert_eq!(f.backend.get("config").await.unwrap(), body);
    f.backend.put("empty", Bytes::new()).await.unwrap();
    assert!(f.backend.get("empty").await.unwrap().is_empty());
}

async fn get_missing_is_not_found(kind: Kind) {
    let f = fixture(kind).await;
    let err = f.backend.get("points/web1/nothing").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&f.backend.url().to_string()), "{text}");
    assert!(text.contains("points/web1/nothing"), "{text}");
}

async fn overwrite_replaces(kind: Kind) {
    let f = fixture(kind).await;
    f.backend.put("leases/a", data(500, 1)).await.unwrap();
    f.backend.put("leases/a", data(70, 2)).await.unwrap();
    assert_eq!(f.backend.get("leases/a").await.unwrap(), data(70, 2));
}

async fn put_if_absent_keeps_the_first(kind: Kind) {
    let f = fixture(kind).await;
    let key = "points/web1/1764136800000-1a2b3c4d";
    assert!(f.backend.put_if_absent(key, data(300, 1)).await.unwrap());
    assert!(!f.backend.put_if_absent(key, data(300, 2)).await.unwrap());
    assert_eq!(f.backend.get(key).await.unwrap(), data(300, 1));
}

async fn put_if_absent_race_has_one_winner(kind: Kind) {
    let f = fixture(kind).await;
    let key = "points/web1/1764136800000-00000000";
    let attempts = (0..8u64).map(|i| f.backend.put_if_absent(key, data(4096, i + 10)));
    let results: Vec<bool> = join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<usize> = (0..8).filter(|&i| results[i]).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let stored = f.backend.get(key).await.unwrap();
    assert_eq!(stored, data(4096, winners[0] as u64 + 10));
}

async fn get_range_reads_slices(kind: Kind) {
    let f = fixture(kind).await;
    let body = data(1000, 3);
    f.backend.put("packs/ab/pack", body.clone()).await.unwrap();
    let b = &f.backend;
    assert_eq!(
        b.get_range("packs/ab/pack", 100..200).await.unwrap(),
        body.slice(100..200)
    );
    assert_eq!(
        b.get_range("packs/ab/pack", 992..1000).await.unwrap(),
        body.slice(992..)
    );
    assert_eq!(b.get_range("packs/ab/pack", 0..1000).await.unwrap(), body);
    for range in [900..1001, 1000..1008, 2000..2100] {
        let err = b
            .get_range("packs/ab/pack", range.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::BadRange { .. }),
            "{range:?}: {err:?}"
        );
        assert!(err.to_string().contains("only 1000 bytes"), "{err}");
    }
    let err = b.get_range("packs/ab/missing", 0..10).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

async fn head_reports_size_and_time(kind: Kind) {
    let f = fixture(kind).await;
    assert_eq!(f.backend.head("config").await.unwrap(), None);
    f.backend.put("config", data(123, 4)).await.unwrap();
    let info = f.backend.head("config").await.unwrap().unwrap();
    assert_eq!(info.key, "config");
    assert_eq!(info.size, 123);
    let age = chrono::Utc::now() - info.last_modified;
    assert!(
        age.num_seconds().abs() < 120,
        "last_modified {}",
        info.last_modified
    );
}

async fn list_by_prefix(kind: Kind) {
    let f = fixture(kind).await;
    let keys = [
        "config",
        "packs/ab/ab01",
        "packs/ab/ab02",
        "packs/cd/cd03",
        "points/web1/1764136800000-1a2b3c4d",
    ];
    for (i, key) in keys.iter().enumerate() {
        f.backend.put(key, data(10 + i, i as u64)).await.unwrap();
    }
    let listed = |prefix: &'static str| {
        let backend = f.backend.clone();
        async move {
            let mut infos = backend.list(prefix).await.unwrap();
            infos.sort_by(|a, b| a.key.cmp(&b.key));
            infos
                .into_iter()
                .map(|i| (i.key, i.size))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed("packs/").await,
        [
            ("packs/ab/ab01".into(), 11),
            ("packs/ab/ab02".into(), 12),
            ("packs/cd/cd03".into(), 13)
        ]
    );
    assert_eq!(listed("packs/a").await.len(), 2);
    assert_eq!(listed("packs/ab/ab02").await.len(), 1);
    assert_eq!(listed("packs").await.len(), 3);
    assert_eq!(listed("").await.len(), 5);
    assert!(listed("leases/").await.is_empty());
    assert!(listed("nothing").await.is_empty());
}

async fn delete_is_idempotent(kind: Kind) {
    let f = fixture(kind).await;
    f.backend.put("leases/s1", data(10, 5)).await.unwrap();
    f.backend.delete("leases/s1").await.unwrap();
    assert_eq!(f.backend.head("leases/s1").await.unwrap(), None);
    f.backend.delete("leases/s1").await.unwrap();
    f.backend.delete("leases/never-was").await.unwrap();
    assert!(f.backend.list("leases/").await.unwrap().is_empty());
}

async fn many_concurrent_puts(kind: Kind) {
    let f = fixture(kind).await;
    let puts = (0..200u64).map(|i| {
        let backend = f.backend.clone();
        async move {
            let key = format!("packs/{:02x}/{i:032x}", i % 7);
            backend.put(&key, data(1024, i)).await
        }
    });
    for result in join_all(puts).await {
        result.unwrap();
    }
    let infos = f.backend.list("packs/").await.unwrap();
    assert_eq!(infos.len(), 200);
    assert!(infos.iter().all(|i| i.size == 1024));
}

async fn large_object_round_trip(kind: Kind) {
    let f = fixture(kind).await;
    let body = data(20 << 20, 6);
    f.backend.put("packs/ff/large", body.clone()).await.unwrap();
    assert_eq!(
        f.backend
            .head("packs/ff/large")
            .await
            .unwrap()
            .unwrap()
            .size,
        20 << 20
    );
    assert!(f.backend.get("packs/ff/large").await.unwrap() == body);
    let tail = (20 << 20) - 8..20 << 20;
    assert_eq!(
        f.backend
            .get_range("packs/ff/large", tail.clone())
            .await
            .unwrap(),
        body.slice(tail.start as usize..)
    );
}

async fn escaping_keys_are_refused(kind: Kind) {
    let f = fixture(kind).await;
    let b = &f.backend;
    for key in ["../x", "a/../../x", "/etc/passwd", "", "a//b", "x#1"] {
        let err = b.put(key, data(1, 1)).await.unwrap_err();
        assert!(matches!(err, BackendError::BadKey { .. }), "{key}: {err:?}");
        assert!(
            matches!(b.get(key).await, Err(BackendError::BadKey { .. })),
            "{key}"
        );
        assert!(
            matches!(b.delete(key).await, Err(BackendError::BadKey { .. })),
            "{key}"
        );
    }
    let err = b.list("../").await.unwrap_err();
    assert!(matches!(err, BackendError::BadKey { .. }), "{err:?}");
    let long = "a".repeat(1000);
    assert!(matches!(
        b.head(&long).await,
        Err(BackendError::BadKey { .. })
    ));
    if let Server::Folder(dir) = &f.server {
        // Nothing was written beside the vault folder.
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
    }
}

/// Two vaults in one bucket under different prefixes do not see each other.
async fn prefixes_keep_vaults_apart(kind: Kind) {
    let f = fixture_at(kind, "site-a").await;
    let url = match f.backend.url() {
        VaultUrl::Folder { path } => format!("file://{}", path.with_file_name("site-b").display()),
        VaultUrl::S3 { bucket, .. } => format!("s3://{bucket}/site-b"),
        VaultUrl::Azure { container, .. } => format!("az://{container}/site-b"),
    };
    let mut opts = test_options();
    match &f.server {
        Server::S3(s3) => {
            let mut settings = S3Settings::with_keys(&s3.access_key, &s3.secret_key);
            settings.endpoint = Some(s3.endpoint.clone());
            opts.s3 = Some(settings);
        }
        Server::Azure(a) => opts.azure = Some(AzureSettings::emulator(&a.endpoint)),
        Server::Folder(_) => {}
    }
    let other = Backend::open(&VaultUrl::parse(&url).unwrap(), opts)
        .await
        .unwrap();
    f.backend.put("config", data(5, 1)).await.unwrap();
    other.put("config", data(6, 2)).await.unwrap();
    assert_eq!(f.backend.get("config").await.unwrap(), data(5, 1));
    assert_eq!(other.list("").await.unwrap().len(), 1);
    assert_eq!(f.backend.list("").await.unwrap()[0].key, "config");
}

/// The whole vault on this backend: init, a full point and a child point, both restored
/// bit for bit, and verify clean.
async fn recovery_points_round_trip(kind: Kind) {
    use lifeboat_vault::format::{KdfParams, Name};
    use lifeboat_vault::{PointOptions, PointReader, PointRef, PointWriter, Vault};
    let f = fixture(kind).await;
    let (vault, _) = Vault::init(f.backend.clone(), "pw", 64 << 10, KdfParams::INSECURE_FAST)
        .await
        .unwrap();
    let disk = Name::new("vda").unwrap();
    let size = 6u64 << 20;
    let mut image = vec![0u8; size as usize];
    image[1 << 20..3 << 20].copy_from_slice(&data(2 << 20, 7));
    let mut parent: Option<PointRef> = None;
    for round in 0..2u64 {
        if round == 1 {
            image[(4 << 20)..(4 << 20) + 70_000].copy_from_slice(&data(70_000, 9));
        }
        let mut w = PointWriter::begin(
            &vault,
            PointOptions::one_disk(
                Name::new("web1").unwrap(),
                parent.clone(),
                disk.clone(),
                size,
            ),
        )
        .await
        .unwrap();
        w.write(&disk, 0, Bytes::from(image.clone())).await.unwrap();
        let m = w.commit().await.unwrap();
        let point = PointRef {
            name: m.name,
            point: m.point,
        };
        let reader = PointReader::open(&vault, &point, 4 << 20).await.unwrap();
        let out = tempfile::NamedTempFile::new().unwrap();
        reader.restore_raw(&disk, out.path()).await.unwrap();
        assert_eq!(
            std::fs::read(out.path()).unwrap(),
            image,
            "{kind:?} round {round}"
        );
        parent = Some(point);
    }
    let points = vault.list_points(None).await.unwrap();
    assert_eq!(points.len(), 2);
    let report = lifeboat_vault::store::verify(&vault, &points, |_| {})
        .await
        .unwrap();
    assert!(report.is_clean(), "{kind:?}: {report:?}");
    drop(f.server);
}

macro_rules! conformance {
    ($kind:ident: $($test:ident),* $(,)?) => {
        #[allow(non_snake_case)]
        mod $kind {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Kind::$kind).await
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($test:ident),* $(,)?) => {
        conformance!(Folder: $($test),*);
        conformance!(S3: $($test),*);
        conformance!(Azure: $($test),*);
    };
}

all_backends!(
    put_get_round_trip,
    get_missing_is_not_found,
    overwrite_replaces,
    put_if_absent_keeps_the_first,
    get_range_reads_slices,
    head_reports_size_and_time,
    list_by_prefix,
    delete_is_idempotent,
    many_concurrent_puts,
    large_object_round_trip,
    escaping_keys_are_refused,
    prefixes_keep_vaults_apart,
    recovery_points_round_trip,
);

// s3s-fs checks `If-None-Match: *` and then writes, not atomically: racing creators can
// all win there (seen: 4 of 8). Real S3 decides on the server atomically; the folder
// (hard link) and Azurite do here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_put_if_absent_race_has_one_winner() {
    put_if_absent_race_has_one_winner(Kind::Folder).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_put_if_absent_race_has_one_winner() {
    put_if_absent_race_has_one_winner(Kind::Azure).await
}

// ---- A storage that is down: a clear error in bounded time, never a hang. ----

fn assert_unreachable(err: &BackendError, endpoint: &str, started: Instant) {
    let text = err.to_string();
    assert!(err.is_unreachable(), "{err:?}");
    assert!(text.contains("cannot reach the storage at"), "{text}");
    assert!(text.contains(endpoint), "{text}");
    assert!(text.contains("after 3 attempts"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn s3_on_a_closed_port_is_unreachable() {
    let port = lifeboat_testkit::free_tcp_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut settings = S3Settings::with_keys("key", "secret-that-must-not-leak");
    settings.endpoint = Some(endpoint.clone());
    let opts = BackendOptions {
        s3: Some(settings),
        ..test_options()
    };
    let url = VaultUrl::parse("s3://bucket/p").unwrap();
    let backend = Backend::open(&url, opts).await.unwrap();
    let started = Instant::now();
    let err = backend.get("config").await.unwrap_err();
    assert_unreachable(&err, &endpoint, started);
    let text = err.to_string();
    println!("{text}");
    assert!(text.starts_with("vault s3://bucket/p: "), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(!text.contains("secret-that-must-not-leak"), "{text}");
    assert!(!format!("{err:?} {backend:?}").contains("secret-that-must-not-leak"));
}

#[tokio::test]
async fn azurite_killed_mid_test_is_unreachable() {
    let mut f = fixture(Kind::Azure).await;
    f.backend.put("config", data(10, 1)).await.unwrap();
    let Server::Azure(azurite) = &mut f.server else {
        unreachable!()
    };
    let endpoint = azurite.endpoint.clone();
    azurite.kill();
    let started = Instant::now();
    let err = f.backend.get("config").await.unwrap_err();
    assert_unreachable(&err, &endpoint, started);
    let started = Instant::now();
    let err = f.backend.put("packs/ab/x", data(10, 2)).await.unwrap_err();
    assert_unreachable(&err, &endpoint, started);
}

#[tokio::test]
async fn s3_killed_mid_test_is_unreachable() {
    let mut f = fixture(Kind::S3).await;
    f.backend.put("config", data(10, 1)).await.unwrap();
    let Server::S3(s3) = &mut f.server else {
        unreachable!()
    };
    let endpoint = s3.endpoint.clone();
    s3.kill();
    let started = Instant::now();
    let err = f.backend.list("packs/").await.unwrap_err();
    assert_unreachable(&err, &endpoint, started);
}

#[tokio::test]
async fn folder_that_cannot_be_created_names_the_url() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let url = VaultUrl::parse(&format!("file://{}/file/vault", dir.path().display())).unwrap();
    let err = Backend::open(&url, test_options()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("vault {url}: ")), "{text}");
    assert!(text.contains("cannot create the folder"), "{text}");
}

#[tokio::test]
async fn folder_is_created_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/vault");
    let url = VaultUrl::parse(&format!("file://{}", path.display())).unwrap();
    let backend = Backend::open(&url, test_options()).await.unwrap();
    backend.put("config", data(3, 1)).await.unwrap();
    assert!(path.join("config").is_file());
}
