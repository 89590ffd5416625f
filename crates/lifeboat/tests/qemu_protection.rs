//! Protecting a VM end to end, every part a separate process: a server, two agents on one
//! machine (own ports and homes), and a real guest that keeps writing numbered files.
//!
//! The property: every recovery point holds every write the guest completed before the
//! point's cut, and nothing the guest began after the next cut. Points are restored from
//! the vault and their files read from the guest's ext4 partition.

mod common;

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::cluster::{boot_guest, cluster, lifeboat, run_ok, wait_points, Cluster};
use lifeboat_testkit::{fresh_postgres_database, guest_data_files, SerialConsole};
use serde_json::Value;

/// A write the guest completed: file `n` was written and synced between `started` and
/// `acked` (host clock).
#[derive(Debug, Clone, Copy)]
pub struct Write {
    pub n: u64,
    pub started: DateTime<Utc>,
    pub acked: DateTime<Utc>,
}

/// Writes `/data/seq/N` (content `N`) and syncs, again and again, until told to stop.
fn start_writer(
    mut console: SerialConsole,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(SerialConsole, Vec<Write>)> {
    tokio::spawn(async move {
        console
            .run("mkdir -p /data/seq && sync", Duration::from_secs(60))
            .await
            .unwrap();
        let mut writes = Vec::new();
        let mut n = 0u64;
        while !*stop.borrow() {
            let started = Utc::now();
            console
                .run(
                    &format!("echo {n} > /data/seq/{n} && sync"),
                    Duration::from_secs(120),
                )
                .await
                .unwrap();
            writes.push(Write {
                n,
                started,
                acked: Utc::now(),
            });
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (console, writes)
    })
}

/// Restores `point` and returns the numbered files it holds.
fn files_of_point(cl: &Cluster, point: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let scratch = cl.tmp.path().join(format!("restore-{point}"));
    std::fs::create_dir_all(&scratch).unwrap();
    let raw = scratch.join("disk.raw");
    let mut c = lifeboat(cl.tmp.path());
    c.args(["vault", "--vault", &cl.vault, "restore", point])
        .arg(&raw);
    run_ok(c);
    let files = guest_data_files(&raw, "/seq", &scratch).unwrap();
    std::fs::remove_dir_all(&scratch).unwrap();
    files
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Every write acknowledged before a point's cut is in it, whole; nothing begun after the
/// next cut is.
fn check_points(cl: &Cluster, points: &[Value], writes: &[Write]) {
    let mut checked = 0;
    for (k, p) in points.iter().enumerate() {
        let id = p["point"].as_str().unwrap();
        let cut = time(&p["cut_time"]);
        let next_cut = points.get(k + 1).map(|n| time(&n["cut_time"]));
        let files = files_of_point(cl, id);
        for w in writes {
            let name = w.n.to_string();
            if w.acked < cut {
                let content = files.get(&name).unwrap_or_else(|| {
                    panic!(
                        "point {id} (cut {cut}) lacks write {} acknowledged at {}",
                        w.n, w.acked
                    )
                });
                assert_eq!(
                    content,
                    format!("{}\n", w.n).as_bytes(),
                    "point {id}: file {} is torn",
                    w.n
                );
            }
            if let Some(next) = next_cut {
                assert!(
                    !(w.started > next && files.contains_key(&name)),
                    "point {id} (cut {cut}) holds write {} begun at {}, after the next cut {next}",
                    w.n,
                    w.started
                );
            }
        }
        let before = writes.iter().filter(|w| w.acked < cut).count();
        eprintln!(
            "point {id}: cut {cut}, {} files; {before} writes acknowledged before the cut",
            files.len()
        );
        // Whatever else is there is a write in flight at the cut: whole or empty.
        for (name, content) in &files {
            assert!(
                content.is_empty() || content == format!("{name}\n").as_bytes(),
                "point {id}: file {name} holds {content:?}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} points checked");
}

async fn protect_and_check(database: Option<String>) {
    let cl = cluster(database.as_deref());
    let (_vm, console) = boot_guest(&cl.home("alpha"), "web", &[]).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = start_writer(console, stop_rx);

    // Enable replication and wait for the first point, with progress.
    let (ok, out, err) =
        tokio::task::block_in_place(|| cl.protect_web(&["--wait", "--timeout", "10m"]));
    assert!(ok, "protect: {out}\n{err}");
    assert!(out.contains("web is Protected"), "{out}");
    // Protecting it again is refused, and says why.
    let (ok, _, err) = cl.protect_web(&["--no-wait"]);
    assert!(!ok && err.contains("protected already"), "{err}");

    let points =
        tokio::task::block_in_place(|| wait_points(&cl, "web", 6, Duration::from_secs(600)));
    stop_tx.send(true).unwrap();
    // The guest runs qemu-guest-agent: the first point froze its filesystems; the policy
    // asks for that every 15 minutes, so the next ones are crash-consistent.
    assert_eq!(points[0]["consistency"], "app", "{points:?}");
    assert!(
        points[1..].iter().all(|p| p["consistency"] == "crash"),
        "{points:?}"
    );
    let (_console, writes) = writer.await.unwrap();
    assert!(
        writes.len() > 20,
        "the guest wrote only {} files",
        writes.len()
    );

    // What the operator sees.
    let vms = cl.json(&["vms", "list"]);
    let web = vms["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web["host"], "alpha");
    assert_eq!(web["recovery_host"], "beta");
    assert!(web["last_point"].is_string(), "{web}");
    assert!(web["rpo_seconds"].as_f64().unwrap() < 60.0, "{web}");
    let status = cl.json(&["status"]);
    assert_eq!(status["protected_vms"], 1, "{status}");
    let metrics = Command::new("curl")
        .args(["-sf", "-H"])
        .arg(format!("Authorization: Bearer {}", cl.server.token))
        .arg(format!("{}/metrics", cl.server.url))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    // With a protected VM's samples too, Prometheus' own linter has nothing to say.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus; scripts/test installs it)");
    {
        use std::io::Write;
        let mut stdin = lint.stdin.take().unwrap();
        stdin.write_all(metrics.as_bytes()).unwrap();
    }
    let lint = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        lint.status.success() && said.trim().is_empty(),
        "{said}\n{metrics}"
    );
    for per_vm in [
        "lifeboat_vm_rpo_seconds",
        "lifeboat_vm_rpo_threshold_seconds",
        "lifeboat_vm_newest_point_timestamp_seconds",
        "lifeboat_vm_replicated_bytes_total",
        "lifeboat_vm_consecutive_sync_failures",
    ] {
        assert!(
            metrics.contains(&format!("{per_vm}{{host=\"alpha\",vm=\"web\"}}")),
            "{per_vm}: {metrics}"
        );
    }
    assert!(
        metrics.contains(
            "lifeboat_vm_protection_state{host=\"alpha\",vm=\"web\",state=\"protected\"} 1"
        ) || metrics.contains("state=\"degraded\"} 1"),
        "{metrics}"
    );
    // Both hosts answer the server's greetings (every 10 s; the syncs took longer).
    for host in ["alpha", "beta"] {
        assert!(
            metrics.contains(&format!("lifeboat_host_up{{host=\"{host}\"}} 1")),
            "{metrics}"
        );
    }
    // The vault's size is what its folder held when measured: more than nothing, no
    // more than it holds now (packs stay until `vault gc`; only small manifests go).
    let sample = |name: &str| -> u64 {
        let key = format!("{name}{{vault=\"{}\"}} ", cl.vault);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no {key}: {metrics}"))
            .parse()
            .unwrap()
    };
    let (measured, objects) = (
        sample("lifeboat_vault_stored_bytes"),
        sample("lifeboat_vault_objects"),
    );
    let folder = std::path::PathBuf::from(cl.vault.strip_prefix("file://").unwrap());
    let on_disk: u64 = walk_sizes(&folder);
    assert!(
        measured > 0 && objects > 0 && measured <= on_disk + (1 << 20),
        "measured {measured} bytes in {objects} objects; the folder holds {on_disk}"
    );

    tokio::task::block_in_place(|| check_points(&cl, &points, &writes));

    // Each point carries the VM's spec, for the recovery host to rebuild the VM from.
    let backend = lifeboat_vault::backend::Backend::open(
        &lifeboat_vault::backend::VaultUrl::parse(&cl.vault).unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let vault = lifeboat_vault::Vault::open(
        backend,
        lifeboat_vault::Unlock::Passphrase(common::cluster::PASSPHRASE.into()),
    )
    .await
    .unwrap();
    let newest = vault.list_points(None).await.unwrap().pop().unwrap();
    let manifest = vault.manifest(&newest).await.unwrap();
    let spec = lifeboat_hypervisor::VmSpec::parse(
        std::str::from_utf8(manifest.vm_config.as_deref().unwrap()).unwrap(),
        std::path::Path::new("manifest"),
    )
    .unwrap();
    assert_eq!(spec.name.as_str(), "web");
    assert_eq!(spec.disks[0].name.as_str(), "vda");

    // Disable: tracking is removed and, asked for, the points too.
    let (ok, out, err) = cl.cli(&["unprotect", "web", "--delete-points"]);
    assert!(ok, "{err}");
    assert!(out.contains("change tracking removed"), "{out}");
    let vms = cl.json(&["vms", "list"]);
    assert_eq!(vms["vms"][0]["protection"], "unprotected", "{vms}");
    let mut c = lifeboat(&cl.home("alpha"));
    c.args(["cbt", "status", "web"]);
    assert!(run_ok(c).contains("not tracked"));
    let mut c = lifeboat(cl.tmp.path());
    c.args(["--json", "vault", "--vault", &cl.vault, "list"]);
    let left: Value = serde_json::from_str(&run_ok(c)).unwrap();
    assert_eq!(left.as_array().map(Vec::len), Some(0), "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_vm_gets_consistent_points_on_sqlite() {
    protect_and_check(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_vm_gets_consistent_points_on_postgres() {
    protect_and_check(Some(fresh_postgres_database())).await;
}

/// The bytes of every file under `dir`.
fn walk_sizes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                walk_sizes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}
