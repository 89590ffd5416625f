//! Protection into an Azure Blob vault (Azurite, with the account key), under the `hourly`
//! policy, without waiting an hour: the policy table the API serves is the one README and
//! docs/protection.md give; the first point is made at once, app-consistent, and lands in
//! the container, whence its data disk restores bit for bit; the server schedules the next
//! sync one interval after this one; `/metrics` counts that sync
//! (`lifeboat_vm_syncs_total`, `lifeboat_vm_last_sync_duration_seconds`…); and a test
//! failover from the container whose `--wait-for` never answers exits 4.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use chrono::{DateTime, Utc};
use common::cluster::{boot_guest, cluster_with_vault, lifeboat, run_ok, Cluster};
use serde_json::Value;

const DATA_MIB: usize = 8;

/// A qcow2 disk of random bytes (the vault cannot shrink them).
fn random_qcow2(dir: &Path) -> std::path::PathBuf {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..DATA_MIB << 20)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let raw = dir.join("data.raw");
    std::fs::write(&raw, bytes).unwrap();
    let qcow = dir.join("data.qcow2");
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow);
    run_ok(c);
    qcow
}

fn get(cl: &Cluster, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", "-H"])
        .arg(format!("Authorization: Bearer {}", cl.server.token))
        .arg(format!("{}{path}", cl.server.url))
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {path} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the sample `name{host="alpha",vm="web"}`.
fn sample(metrics: &str, name: &str) -> f64 {
    let key = format!("{name}{{host=\"alpha\",vm=\"web\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("no {key}in:\n{metrics}"))
        .parse()
        .unwrap()
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_protected_hourly_into_azure_blob_restores_bit_for_bit() {
    let azurite = lifeboat_testkit::Azurite::start().await.unwrap();
    // The agents (children of this process) and the CLI reach the container with these.
    std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
    std::env::set_var(
        "AZURE_STORAGE_ACCOUNT_NAME",
        lifeboat_testkit::AZURITE_ACCOUNT,
    );
    std::env::set_var("AZURE_STORAGE_ACCOUNT_KEY", lifeboat_testkit::AZURITE_KEY);
    std::env::set_var(
        "AZURE_STORAGE_ENDPOINT",
        format!("{}/{}", azurite.endpoint, lifeboat_testkit::AZURITE_ACCOUNT),
    );
    let url = format!("az://{}/vault", azurite.container);
    let cl = cluster_with_vault(None, Some(&url));
    let data = random_qcow2(cl.tmp.path());
    let (_vm, _console) = boot_guest(&cl.home("alpha"), "web", std::slice::from_ref(&data)).await;

    tokio::task::block_in_place(|| {
        // The policy as the API serves it: a sync every hour, each app-consistent,
        // Degraded past 3 hours, hourly points for 7 days and daily ones for 90.
        let policies: Value = serde_json::from_str(&get(&cl, "/api/v1/policies")).unwrap();
        let hourly = policies
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "hourly")
            .unwrap_or_else(|| panic!("no hourly policy: {policies}"));
        for (field, secs) in [
            ("interval_secs", 3600),
            ("rpo_threshold_secs", 3 * 3600),
            ("app_consistent_every_secs", 3600),
            ("keep_within_secs", 0),
            ("keep_hourly_secs", 7 * 86_400),
            ("keep_daily_secs", 90 * 86_400),
        ] {
            assert_eq!(hourly[field], secs, "{field}: {hourly}");
        }

        let started = Instant::now();
        let (ok, out, err) = cl.cli(&[
            "protect",
            "web",
            "--vault",
            &url,
            "--recovery-host",
            "beta",
            "--policy",
            "hourly",
            "--wait",
            "--timeout",
            "10m",
        ]);
        assert!(ok, "{out}\n{err}");
        let waited = started.elapsed().as_secs_f64();
        let points = cl.json(&["points", "web"]);
        let points = points.as_array().unwrap();
        assert_eq!(points.len(), 1, "{points:?}");
        let point = &points[0];
        assert_eq!(point["consistency"], "app", "{point}");
        let cut = time(&point["cut_time"]);
        let p = cl.protection();
        assert_eq!(
            (p["policy"].as_str(), p["rpo_threshold_seconds"].as_u64()),
            (Some("hourly"), Some(3 * 3600)),
            "{p}"
        );

        // The next sync, as the server scheduled it: one interval after this one started.
        let next = tokio::runtime::Handle::current().block_on(next_sync_at(&cl));
        let gap = (next - cut).num_seconds();
        assert!(
            (3540..=3600).contains(&gap),
            "next sync {next}, {gap} s after the cut {cut}"
        );

        // The sync, as Prometheus sees it.
        let metrics = get(&cl, "/metrics");
        assert_eq!(
            sample(&metrics, "lifeboat_vm_syncs_total"),
            1.0,
            "{metrics}"
        );
        let took = sample(&metrics, "lifeboat_vm_last_sync_duration_seconds");
        assert!(
            took > 0.0 && took <= waited,
            "{took} s (protect waited {waited:.1} s)"
        );
        assert!(
            sample(&metrics, "lifeboat_vm_replicated_bytes_total") >= (DATA_MIB << 20) as f64,
            "{metrics}"
        );
        let newest = sample(&metrics, "lifeboat_vm_newest_point_timestamp_seconds");
        assert!(
            (newest - cut.timestamp_millis() as f64 / 1000.0).abs() < 1.0,
            "{newest} vs {cut}"
        );
        assert_eq!(
            sample(&metrics, "lifeboat_vm_rpo_threshold_seconds"),
            10800.0
        );
        assert_eq!(
            sample(&metrics, "lifeboat_vm_consecutive_sync_failures"),
            0.0
        );
        // The scheduler went round (about once a second) while the sync ran.
        let rounds: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("lifeboat_scheduler_rounds_total{} "))
            .unwrap_or_else(|| panic!("no scheduler rounds in:\n{metrics}"))
            .parse()
            .unwrap();
        assert!(rounds >= 1.0, "{rounds}");

        // The point is in the container: its data disk comes back bit for bit.
        let id = point["point"].as_str().unwrap();
        let restored = cl.tmp.path().join("vdb.raw");
        let mut c = lifeboat(cl.tmp.path());
        c.args(["vault", "--vault", &url, "restore", id, "--disk", "vdb"])
            .arg(&restored);
        run_ok(c);
        let same = Command::new("qemu-img")
            .args(["compare", "-q", "-U", "-f", "raw", "-F", "qcow2"])
            .arg(&restored)
            .arg(&data)
            .status()
            .unwrap();
        assert!(
            same.success(),
            "the point's vdb differs from the guest's disk"
        );
        let mut c = lifeboat(cl.tmp.path());
        c.args(["vault", "--vault", &url, "verify"]);
        run_ok(c);
        // …and no second sync came early.
        assert_eq!(cl.json(&["points", "web"]).as_array().unwrap().len(), 1);

        // A test copy started from that point in the container, waited for on a port
        // where nothing ever answers: exit 4, and the copy runs on until cleaned up.
        let nothing = format!("tcp:127.0.0.1:{}", lifeboat_testkit::free_tcp_port());
        let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .args([
                "--json",
                "failover",
                "web",
                "--test",
                "--wait-for",
                &nothing,
            ])
            .args(["--wait-timeout", "2s"])
            .env("LIFEBOAT_SERVER", &cl.server.url)
            .env("LIFEBOAT_TOKEN", &cl.server.token)
            .env("LIFEBOAT_HOME", "/nonexistent-lifeboat-home")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        let err: Value = serde_json::from_str(err.trim()).unwrap();
        assert_eq!(err["exit_code"], 4, "{err}");
        assert!(
            err["error"].as_str().unwrap().contains("the VM runs on"),
            "{err}"
        );
        let copies = cl.json(&["failover", "list"]);
        assert_eq!(copies.as_array().map(Vec::len), Some(1), "{copies}");
        let (ok, _, err) = cl.cli(&["failover", "cleanup", "web"]);
        assert!(ok, "{err}");
    });
}

/// The protection's next sync time as the server's scheduler recorded it.
async fn next_sync_at(cl: &Cluster) -> DateTime<Utc> {
    let db_url = format!(
        "sqlite://{}?mode=ro",
        cl.home("server").join("server/lifeboat.db").display()
    );
    let db = sqlx::SqlitePool::connect(&db_url).await.unwrap();
    let next: String = sqlx::query_scalar("SELECT next_sync_at FROM protections")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    DateTime::parse_from_rfc3339(&next)
        .unwrap()
        .with_timezone(&Utc)
}
