//! Crashes during replication: the server and the agent are killed with SIGKILL during an
//! initial sync and during incremental syncs. After each restart the replication resumes
//! on its own; at the end every point the server lists is in the vault and the other way
//! round, every point verifies, and the newest point equals the guest's disk bit for bit.
//! While the agent is down the VM is Degraded with the reason, then Protected again.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{boot_guest, cluster, lifeboat, run_ok, Cluster};
use common::start_agent_on;
use serde_json::Value;

/// The second disk: random data, so a sync of it takes long enough to be interrupted.
const DATA_DISK_MIB: usize = 256;
/// The agent's bandwidth cap: a whole-disk sync takes ~16 s, an incremental of 64 MiB ~4 s,
/// long enough to be caught mid-copy by a test polling the server.
const MAX_RATE: &str = "16M";

fn random_qcow2(dir: &Path, mib: usize) -> std::path::PathBuf {
    let raw = dir.join("data.raw");
    let qcow = dir.join("data.qcow2");
    let mut f = std::fs::File::create(&raw).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut state = 0x9e3779b97f4a7c15u64;
    for _ in 0..mib {
        for c in buf.chunks_mut(8) {
            // xorshift: incompressible and fast, so the vault cannot shrink it.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            c.copy_from_slice(&state.to_le_bytes());
        }
        std::io::Write::write_all(&mut f, &buf).unwrap();
    }
    drop(f);
    run_ok({
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow);
        c
    });
    std::fs::remove_file(&raw).unwrap();
    qcow
}

/// True while the agent is copying a sync of at least `min` bytes, not yet near its end.
fn copying(p: &Value, min: u64) -> bool {
    let total = p["sync"]["bytes_total"].as_u64().unwrap_or(0);
    let done = p["sync"]["bytes_done"].as_u64().unwrap_or(0);
    total >= min && done > 0 && done < total / 2
}

fn points(cl: &Cluster) -> Vec<String> {
    cl.json(&["points", "web"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["point"].as_str().unwrap().to_string())
        .collect()
}

fn vault_points(cl: &Cluster) -> Vec<String> {
    let mut c = lifeboat(cl.tmp.path());
    c.args(["--json", "vault", "--vault", &cl.vault, "list"]);
    let v: Value = serde_json::from_str(&run_ok(c)).unwrap();
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["point"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn restart_server(cl: &mut Cluster, database: Option<&str>) {
    cl.restart_server(database);
}

fn kill_agent(cl: &mut Cluster) {
    let _ = cl.alpha.child.kill();
    let _ = cl.alpha.child.wait();
}

fn restart_agent(cl: &mut Cluster) {
    let port = cl.alpha.port;
    cl.alpha = start_agent_on(&cl.home("alpha"), "alpha", port, &["--max-rate", MAX_RATE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_resumes_after_kill_9_of_server_and_agent() {
    let mut cl = cluster(None);
    // The agent of the protected VM, restarted with the bandwidth cap.
    kill_agent(&mut cl);
    restart_agent(&mut cl);
    let data = random_qcow2(cl.tmp.path(), DATA_DISK_MIB);
    let (_vm, mut console) =
        boot_guest(&cl.home("alpha"), "web", std::slice::from_ref(&data)).await;
    let min = (DATA_DISK_MIB as u64 / 2) << 20;
    let started = Instant::now();
    let protect = |cl: &Cluster| {
        let (ok, _, err) = cl.protect_web(&["--no-wait"]);
        assert!(ok, "{err}");
    };

    // 1. The agent dies during the initial sync: after its restart the sync starts over
    //    (a resync on top of nothing) and completes.
    tokio::task::block_in_place(|| {
        protect(&cl);
        cl.wait_for("the initial sync to copy", Duration::from_secs(300), |p| {
            copying(p, min)
        });
        kill_agent(&mut cl);
        std::thread::sleep(Duration::from_secs(2));
        restart_agent(&mut cl);
        let p = cl.wait_for("the first point", Duration::from_secs(600), |p| {
            p["last_point"].is_string()
        });
        eprintln!(
            "[{:?}] first point after an agent kill: {}",
            started.elapsed(),
            p["last_point"]
        );
    });

    // 2. The server dies during the initial sync of a fresh protection: after its restart
    //    it asks the agent about the same sync and records its point.
    tokio::task::block_in_place(|| {
        let (ok, _, err) = cl.cli(&["unprotect", "web", "--delete-points"]);
        assert!(ok, "{err}");
        protect(&cl);
        cl.wait_for("the initial sync to copy", Duration::from_secs(300), |p| {
            copying(p, min)
        });
        restart_server(&mut cl, None);
        let p = cl.wait_for("the first point", Duration::from_secs(600), |p| {
            p["last_point"].is_string()
        });
        eprintln!(
            "[{:?}] first point after a server kill: {}",
            started.elapsed(),
            p["last_point"]
        );
    });

    // 3. Incremental syncs: the guest overwrites a large part of its data disk, and the
    //    server, then the agent, is killed while a sync copies it.
    for victim in ["server", "agent"] {
        console
            .run(
                "dd if=/dev/vda of=/dev/vdb bs=1M count=64 conv=fsync 2>/dev/null",
                Duration::from_secs(300),
            )
            .await
            .unwrap();
        tokio::task::block_in_place(|| {
            let before = points(&cl).len();
            cl.wait_for(
                "an incremental sync to copy",
                Duration::from_secs(300),
                |p| p["last_point"].is_string() && copying(p, 32 << 20),
            );
            if victim == "server" {
                restart_server(&mut cl, None);
            } else {
                kill_agent(&mut cl);
                // Unreachable: Degraded, and the reason names the agent.
                let p = cl.wait_for("Degraded", Duration::from_secs(120), |p| {
                    p["state"] == "degraded"
                });
                let reason = p["reason"].as_str().unwrap();
                assert!(
                    reason.contains("alpha") && reason.contains("unreachable"),
                    "{reason}"
                );
                restart_agent(&mut cl);
            }
            let p = cl.wait_for(
                "Protected with a new point",
                Duration::from_secs(600),
                |p| p["state"] == "protected" && points_after(&cl, before),
            );
            eprintln!(
                "[{:?}] {victim} killed mid-incremental; now {}",
                started.elapsed(),
                p["last_point"]
            );
        });
    }

    // 4. QEMU is killed: its dirty bitmaps are lost. While the VM is down it is Degraded;
    //    once it runs again the next sync is a resync by digest comparison, not a gap.
    let home = cl.home("alpha");
    run_ok({
        let mut c = lifeboat(&home);
        c.args(["vm", "kill", "web"]);
        c
    });
    tokio::task::block_in_place(|| {
        let p = cl.wait_for("Degraded", Duration::from_secs(120), |p| {
            p["state"] == "degraded"
        });
        eprintln!("[{:?}] VM killed: {}", started.elapsed(), p["reason"]);
    });
    run_ok({
        let mut c = lifeboat(&home);
        c.args(["vm", "start", "web"]);
        c
    });
    let driver =
        lifeboat_hypervisor::QemuDriver::new(lifeboat_hypervisor::QemuConfig::new(&home)).unwrap();
    let socket = driver
        .serial_socket(&lifeboat_hypervisor::VmName::new("web").unwrap())
        .unwrap();
    console = lifeboat_testkit::SerialConsole::connect(&socket, Duration::from_secs(60))
        .await
        .unwrap();
    console
        .wait_ready(lifeboat_testkit::boot_timeout())
        .await
        .unwrap();
    console
        .run(
            "dd if=/dev/vda of=/dev/vdb bs=1M count=8 seek=100 conv=fsync 2>/dev/null",
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        cl.wait_for("a resync point", Duration::from_secs(300), |_| {
            cl.json(&["points", "web"])
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["kind"] == "resync")
        });
        let p = cl.wait_for("Protected", Duration::from_secs(120), |p| {
            p["state"] == "protected"
        });
        eprintln!(
            "[{:?}] resynced after the VM restart: {}",
            started.elapsed(),
            p["last_point"]
        );
    });

    // 5. The newest point disappears from the vault (deleted by hand): the bitmaps hold
    //    only what changed since it, so the next sync must not build on an older point —
    //    it resyncs.
    tokio::task::block_in_place(|| {
        // Right after a sync ends, so the next one (5 s later) starts after the deletion.
        let n = cl.protection()["syncs_committed"].as_u64().unwrap();
        let p = cl.wait_for("a fresh point", Duration::from_secs(60), |p| {
            p["syncs_committed"].as_u64().unwrap() > n && p["sync"].is_null()
        });
        let newest = p["last_point"].as_str().unwrap().to_string();
        let manifest = cl.tmp.path().join("vault/points/alpha.web").join(&newest);
        std::fs::remove_file(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let resyncs = |cl: &Cluster| {
            cl.json(&["points", "web"])
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["kind"] == "resync")
                .count()
        };
        let before = resyncs(&cl);
        cl.wait_for(
            "a resync after the lost point",
            Duration::from_secs(120),
            |_| resyncs(&cl) > before,
        );
    });

    // 6. Nothing lost, nothing torn: the server's points are the vault's, all verify, and a
    //    point taken after the guest stopped writing equals its data disk.
    console.run("sync", Duration::from_secs(60)).await.unwrap();
    tokio::task::block_in_place(|| {
        let quiet = chrono::Utc::now();
        cl.wait_for("a point after the writes", Duration::from_secs(120), |p| {
            p["last_point_time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t > quiet)
        });
        // Every point in the vault is known to the server (it records a point within a
        // poll of its commit), and the server knows of no point the vault lacks.
        let vault = vault_points(&cl);
        std::thread::sleep(Duration::from_secs(3));
        let ours = points(&cl);
        let newest = vault.last().unwrap().clone();
        for v in &vault {
            assert!(
                ours.contains(v),
                "the vault's point {v} is unknown to the server: {ours:?}"
            );
        }
        for o in &ours {
            assert!(
                vault.contains(o) || *o > newest,
                "the server lists {o}, which the vault lacks"
            );
        }
        let (ok, _, err) = cl.cli(&["unprotect", "web"]);
        assert!(ok, "{err}");
        let mut c = lifeboat(cl.tmp.path());
        c.args(["vault", "--vault", &cl.vault, "verify"]);
        run_ok(c);
        let latest = vault_points(&cl).last().unwrap().clone();
        let raw = cl.tmp.path().join("vdb.raw");
        let mut c = lifeboat(cl.tmp.path());
        c.args([
            "vault", "--vault", &cl.vault, "restore", &latest, "--disk", "vdb",
        ])
        .arg(&raw);
        run_ok(c);
        let same = Command::new("qemu-img")
            .args(["compare", "-q", "-U", "-f", "raw", "-F", "qcow2"])
            .arg(&raw)
            .arg(&data)
            .status()
            .unwrap();
        assert!(
            same.success(),
            "the newest point's vdb differs from the guest's disk"
        );
    });
}

fn points_after(cl: &Cluster, before: usize) -> bool {
    points(cl).len() > before
}
