//! Reversed protection end to end (DESIGN.md, "Operations"), every part a separate
//! process: a server, agents alpha (home) and beta (recovery host), a folder vault, a real
//! guest whose HTTP server shows its files.
//!
//! Site A is lost; the VM fails over to beta (unplanned) and the failover is committed.
//! `reprotect` protects it where it runs: its first point is an incremental over the
//! failover's, and the guest's writes at beta reach the vault by the scheduler's syncs,
//! while the returning home stays fenced. Then site B is lost too: the protection turns
//! `degraded_reversed`, saying why, and an unplanned failback
//! brings the VM home from beta's newest point, with those writes, and beta's copy is
//! fenced and kept when its agent returns (a write no point holds stays on it, never at
//! home).

mod common;

use std::time::Duration;

use common::cluster::{cluster, lifeboat, wait_points};
use common::moves::{
    home_equals_point, protected_with_kept_file, vm_row, wait_fenced_row, wait_point_after,
    write_at_recovery_site,
};
use common::start_agent_on;
use lifeboat_testkit::{free_tcp_port, http_get, wait_http};
use serde_json::Value;

/// The non-test recovery of `web` as `failover list` shows it.
fn recovery_row(cl: &common::cluster::Cluster) -> Option<Value> {
    let all = cl.json(&["failover", "list"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|r| r["origin_vm"] == "web" && r["kind"] != "test")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversed_protection_brings_the_recovery_sites_writes_home_after_a_second_disaster() {
    let mut cl = cluster(None);
    let http = free_tcp_port();
    let (_vm, console) = protected_with_kept_file(&cl, http).await;
    drop(console);

    // Site A is lost: its agent, then its QEMU.
    cl.alpha.child.kill().unwrap();
    cl.alpha.child.wait().unwrap();
    let kill = lifeboat(&cl.home("alpha"))
        .args(["vm", "kill", "web"])
        .output()
        .unwrap();
    assert!(kill.status.success());
    let out = cl.json(&["failover", "web", "--unplanned"]);
    assert_eq!(out["kind"], "unplanned", "{out}");
    let failover_point = out["point"].as_str().unwrap().to_string();
    assert_eq!(
        wait_http(http, "/f/kept", Duration::from_secs(120))
            .await
            .unwrap(),
        b"kept\n"
    );

    // Before the failover is committed, reprotect is refused, saying what to do.
    let (ok, _, err) = cl.cli(&["reprotect", "web"]);
    assert!(!ok && err.contains("failover commit"), "{err}");
    cl.json(&["failover", "commit", "web"]);

    // Reprotect: protected where it runs, its first point only what beta wrote.
    let n = wait_points(&cl, "web", 1, Duration::from_secs(10)).len();
    let out = cl.json(&["reprotect", "web"]);
    assert_eq!(out["state"], "protected_reversed", "{out}");
    let points = wait_points(&cl, "web", n + 1, Duration::from_secs(10));
    let first = &points[n];
    assert_eq!(first["point"], out["point"], "{first}");
    assert_eq!(
        first["kind"], "incremental",
        "tracked from its first boot on the failover's point {failover_point}: {first}"
    );
    let sent = first["new_bytes"].as_u64().unwrap();
    eprintln!(
        "reprotect at the recovery site: first point read {} and sent {sent} byte(s)",
        first["bytes_read"]
    );
    assert!(sent < 8 << 20, "the first reversed point sent {sent} bytes");

    // The guest's writes at beta reach the vault on the schedule.
    write_at_recovery_site(&cl, "/data/f/away").await;
    let wrote_at = chrono::Utc::now();
    let carried = wait_point_after(&cl, "web", wrote_at, Duration::from_secs(180));
    assert_eq!(carried["kind"], "incremental", "{carried}");
    let p = cl.protection();
    assert_eq!(p["state"], "protected_reversed", "{p}");

    // Home returns: its agent answers again, and the VM there stays fenced.
    let alpha_port = cl.alpha.port;
    cl.alpha = start_agent_on(&cl.home("alpha"), "alpha", alpha_port, &[]);
    wait_fenced_row(&cl, "alpha", "web", Duration::from_secs(120));
    let start = lifeboat(&cl.home("alpha"))
        .args(["vm", "start", "web"])
        .output()
        .unwrap();
    assert!(!start.status.success(), "home's VM started while fenced");

    // Site B is lost too: its agent first (replication stops), then a write no point
    // holds, then its QEMU.
    cl.beta.child.kill().unwrap();
    cl.beta.child.wait().unwrap();
    write_at_recovery_site(&cl, "/data/f/late").await;
    let kill = lifeboat(&cl.home("beta"))
        .args(["vm", "kill", "web"])
        .output()
        .unwrap();
    assert!(kill.status.success());
    let newest = wait_points(&cl, "web", 1, Duration::from_secs(10))
        .last()
        .unwrap()
        .clone();

    // Its syncs from beta fail: degraded at the recovery site, saying why, and still
    // reversed (home stays fenced, the VM's newest point is beta's).
    let p = tokio::task::block_in_place(|| {
        cl.wait_for("degraded_reversed", Duration::from_secs(120), |p| {
            p["state"] == "degraded_reversed"
        })
    });
    let reason = p["reason"].as_str().unwrap();
    assert!(reason.contains("beta"), "{reason}");
    let status = cl.cli(&["status"]).1;
    assert!(status.contains("1 of them degraded"), "{status}");

    // A planned failback needs the recovery host: refused, saying what to do, nothing
    // changed.
    let (ok, _, err) = cl.cli(&["failback", "web", "--shutdown-timeout", "5s"]);
    assert!(!ok && err.contains("--unplanned"), "{err}");
    assert_eq!(cl.protection()["state"], "degraded_reversed");

    // Unplanned failback: home from the recovery site's newest point.
    let out = cl.json(&["failback", "web", "--unplanned"]);
    assert_eq!(out["state"], "failed_back", "{out}");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains(newest["point"].as_str().unwrap()),
        "{out} / {newest}"
    );
    for (file, body) in [("kept", "kept\n"), ("away", "away\n")] {
        let got = wait_http(http, &format!("/f/{file}"), Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(got, body.as_bytes(), "/f/{file} at home");
    }
    let (code, _) = http_get(http, "/f/late", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(code, 404, "a write no point holds cannot be at home");
    let home = vm_row(&cl, "alpha", "web").unwrap();
    assert!(home["fenced"].is_null(), "{home}");
    let rec = recovery_row(&cl).expect("beta's copy is kept");
    assert_eq!(rec["state"], "fencing", "{rec}");

    // Beta returns: its copy is fenced (it cannot start) and kept, with its late write.
    let beta_port = cl.beta.port;
    cl.beta = start_agent_on(&cl.home("beta"), "beta", beta_port, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while recovery_row(&cl).is_some_and(|r| r["state"] != "fenced") {
        assert!(
            std::time::Instant::now() < deadline,
            "beta's copy was not fenced"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_fenced_row(&cl, "beta", "web", Duration::from_secs(30));
    let start = lifeboat(&cl.home("beta"))
        .args(["vm", "start", "web"])
        .output()
        .unwrap();
    assert!(!start.status.success(), "beta's copy started while fenced");
    assert!(cl.home("beta").join("recovered/web").exists());

    // Replication resumes from home. The fenced copy is removed only when asked for by
    // name, and until then a failover to its host is refused before anything changes.
    let out = cl.json(&["reprotect", "web"]);
    assert_eq!(out["state"], "protected", "{out}");
    let (ok, _, err) = cl.cli(&["failover", "web", "--unplanned"]);
    assert!(!ok && err.contains("cleanup web --fenced"), "{err}");
    let (ok, _, err) = cl.cli(&["failover", "cleanup", "web"]);
    assert!(!ok && err.contains("--fenced"), "{err}");
    assert_eq!(recovery_row(&cl).unwrap()["state"], "fenced");
    let out = cl.json(&["failover", "cleanup", "web", "--fenced"]);
    assert_eq!(out["removed"], "web", "{out}");
    assert!(recovery_row(&cl).is_none());
    assert!(!cl.home("beta").join("recovered/web").exists());

    // Bit for bit: home's files are those of the point it came home from, site B's
    // synced write in, its late one not.
    let at_point = home_equals_point(&cl, newest["point"].as_str().unwrap());
    assert!(
        at_point.contains_key("away") && !at_point.contains_key("late"),
        "{:?}",
        at_point.keys()
    );
}
