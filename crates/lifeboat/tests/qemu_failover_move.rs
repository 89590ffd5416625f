//! Planned and unplanned failover end to end, every part a separate process: a server,
//! agents alpha (home) and beta (recovery host), a folder vault, a real guest whose HTTP
//! server shows its files.
//!
//! Planned: the guest writes and syncs numbered files until the ACPI shutdown stops it;
//! every write it acknowledged is on the recovery host afterwards, which runs the VM with
//! the same MAC and port; never two running copies; the source is fenced.
//! Unplanned: with alpha's agent and QEMU killed, the VM comes up on beta from the chosen
//! point; when alpha returns, even with its VM started again by hand, the VM is killed and
//! fenced there, and its diverged writes never reach the vault.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{boot_guest_with, cluster, lifeboat, wait_points};
use common::moves::{
    acked, home_equals_point, protected_with_kept_file, running, vm_row, wait_fenced_row,
    write_at_recovery_site, OneCopy, WRITER,
};
use common::start_agent_on;
use lifeboat_testkit::{free_tcp_port, http_get, wait_http};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_failover_loses_no_completed_write_and_fences_the_source() {
    let cl = cluster(None);
    let http = free_tcp_port();
    let (_vm, mut console) = boot_guest_with(&cl.home("alpha"), "web", &[], Some(http)).await;
    let (ok, _, err) = cl.protect_web(&["--wait", "--timeout", "5m"]);
    assert!(ok, "{err}");
    // Writes until the power button's handler kills every process: each file synced, then
    // acknowledged on the console (which QEMU logs to a file on the host).
    console.run(WRITER, Duration::from_secs(60)).await.unwrap();
    drop(console);
    let log = cl.home("alpha").join("vms/web/console.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked(&log).len() < 20 {
        assert!(
            Instant::now() < deadline,
            "the guest acknowledged too few writes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Never two running copies, checked all along the failover.
    let one_copy = OneCopy::watch([cl.home("alpha"), cl.home("beta")], "web");
    let started = Instant::now();
    // The command returns once the guest serves, not only runs (`--wait-for`).
    let probe = format!("http://127.0.0.1:{http}/boot-count");
    let out = cl.json(&[
        "failover",
        "web",
        "--planned",
        "--shutdown-timeout",
        "60s",
        "--wait-for",
        &probe,
        "--wait-timeout",
        "3m",
    ]);
    let took = started.elapsed();
    assert_eq!(out["kind"], "planned");
    assert_eq!(out["host"], "beta");
    assert_eq!(out["vm"], "web");
    assert_eq!(out["serving"]["probe"], probe.as_str(), "{out}");
    let serving_after = out["serving"]["after_seconds"].as_f64().unwrap();
    let (code, _) = http_get(http, "/boot-count", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(code, 200, "it served when the command returned");

    // Every acknowledged write is on the recovery host, read through the guest's httpd on
    // the same port production had (it is free on this machine now).
    let forwards: Vec<Value> = out["forwards"].as_array().unwrap().clone();
    assert_eq!(forwards[0]["host_port"].as_u64(), Some(u64::from(http)));
    let acks = acked(&log);
    assert!(acks.len() >= 20);
    wait_http(http, "/boot-count", Duration::from_secs(120))
        .await
        .unwrap();
    let recovered_at = started.elapsed();
    for n in &acks {
        let (code, body) = http_get(http, &format!("/seq/{n}"), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            code, 200,
            "acknowledged write {n} is missing after the failover"
        );
        assert_eq!(String::from_utf8_lossy(&body).trim(), n.to_string());
    }
    eprintln!(
        "planned failover: {} acknowledged writes all present; command took {took:?} (serving {serving_after:.1} s after the move ended), HTTP answered after {recovered_at:?}",
        acks.len()
    );
    assert!(one_copy.stop() > 10);

    // Same MAC and network on the recovery host.
    let spec = std::fs::read_to_string(cl.home("beta").join("vms/web/spec.toml")).unwrap();
    assert!(
        spec.contains("52:54:00:12:34:56") && spec.contains("network = \"user\""),
        "{spec}"
    );
    // The source is stopped and fenced: it does not start.
    let alpha = vm_row(&cl, "alpha", "web").unwrap();
    assert_eq!(alpha["state"]["state"], "stopped", "{alpha}");
    assert!(alpha["fenced"].is_string(), "{alpha}");
    let start = lifeboat(&cl.home("alpha"))
        .args(["vm", "start", "web"])
        .output()
        .unwrap();
    assert!(!start.status.success());
    assert!(String::from_utf8_lossy(&start.stderr).contains("fenced"));
    let beta = vm_row(&cl, "beta", "web").unwrap();
    assert!(running(&Some(beta.clone())));
    assert_eq!(beta["recovery_kind"], "planned");
    assert_eq!(beta["recovered_from"], "alpha/web");
    assert_eq!(cl.protection()["state"], "failed_over");
    // The final point is the newest and was proven equal; no sync runs any more.
    let points = wait_points(&cl, "web", 1, Duration::from_secs(10));
    assert_eq!(points.last().unwrap()["point"], out["point"]);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        wait_points(&cl, "web", 1, Duration::from_secs(10)).len(),
        points.len()
    );
    // A second failover is refused.
    let (ok, _, err) = cl.cli(&["failover", "web", "--unplanned"]);
    assert!(!ok && err.contains("failed over already"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplanned_failover_starts_from_the_point_and_the_returning_source_stays_fenced() {
    let mut cl = cluster(None);
    let http = free_tcp_port();
    let (_vm, mut console) = protected_with_kept_file(&cl, http).await;
    // The primary host dies: its agent first (replication stops), then a write that no
    // point holds, then QEMU.
    cl.alpha.child.kill().unwrap();
    cl.alpha.child.wait().unwrap();
    console
        .run(
            "echo diverged > /data/f/diverged && sync",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    drop(console);
    let kill = lifeboat(&cl.home("alpha"))
        .args(["vm", "kill", "web"])
        .output()
        .unwrap();
    assert!(kill.status.success());
    let points_before = wait_points(&cl, "web", 1, Duration::from_secs(10));

    let started = Instant::now();
    // A map to a network the host lacks is refused before anything changes.
    let (ok, _, err) = cl.cli(&[
        "failover",
        "web",
        "--unplanned",
        "--network-map",
        "user=br0",
    ]);
    assert!(!ok && err.contains("no network \"br0\""), "{err}");
    let state = cl.protection()["state"].clone();
    assert!(state == "protected" || state == "degraded", "{state}");
    let out = cl.json(&[
        "failover",
        "web",
        "--unplanned",
        "--point",
        "latest",
        "--network-map",
        "user=isolated",
    ]);
    // Mapped to the recovery host's network, the VM's own MAC.
    let spec = std::fs::read_to_string(cl.home("beta").join("vms/web/spec.toml")).unwrap();
    assert!(
        spec.contains("network = \"isolated\"") && spec.contains("52:54:00:12:34:56"),
        "{spec}"
    );
    assert_eq!(out["kind"], "unplanned");
    assert_eq!(out["point"], points_before.last().unwrap()["point"]);
    let body = wait_http(http, "/f/kept", Duration::from_secs(120))
        .await
        .unwrap();
    eprintln!(
        "unplanned failover: HTTP answered after {:?}",
        started.elapsed()
    );
    assert_eq!(body, b"kept\n");
    let (code, _) = http_get(http, "/f/diverged", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        code, 404,
        "a write no point holds cannot be on the recovery host"
    );
    let p = cl.protection();
    assert_eq!(p["state"], "failed_over");
    assert!(p["reason"].as_str().unwrap().contains("unreachable"), "{p}");

    // The primary returns, its VM started again by hand before its agent is back (the
    // worst case: a host that was only cut off). Its agent comes back; the server fences
    // the VM: killed, and it does not start again.
    let beta_pid = std::fs::read_to_string(cl.home("beta").join("vms/web/qemu.pid")).unwrap();
    let second_port = free_tcp_port();
    // Its forward would clash with beta's on this one machine: move it aside first.
    let spec_path = cl.home("alpha").join("vms/web/spec.toml");
    let spec = std::fs::read_to_string(&spec_path).unwrap();
    std::fs::write(
        &spec_path,
        spec.replace(
            &format!("host_port = {http}"),
            &format!("host_port = {second_port}"),
        ),
    )
    .unwrap();
    let start = lifeboat(&cl.home("alpha"))
        .args(["vm", "start", "web"])
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let alpha_port = cl.alpha.port;
    cl.alpha = start_agent_on(&cl.home("alpha"), "alpha", alpha_port, &[]);
    wait_fenced_row(&cl, "alpha", "web", Duration::from_secs(120));
    // The server records it once the agent answered (a moment after the VM is fenced).
    cl.wait_for("the fence recorded", Duration::from_secs(30), |p| {
        p["reason"].as_str().unwrap_or("").contains("source fenced")
    });
    let start = lifeboat(&cl.home("alpha"))
        .args(["vm", "start", "web"])
        .output()
        .unwrap();
    assert!(!start.status.success());
    assert!(String::from_utf8_lossy(&start.stderr).contains("fenced"));
    // Its diverged write never reached the vault, and the recovery site is untouched.
    let points_after = wait_points(&cl, "web", 1, Duration::from_secs(10));
    assert_eq!(
        points_after.len(),
        points_before.len(),
        "a sync ran after the failover"
    );
    assert_eq!(
        std::fs::read_to_string(cl.home("beta").join("vms/web/qemu.pid")).unwrap(),
        beta_pid
    );
    let (code, _) = http_get(http, "/f/diverged", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(code, 404);

    // Writes at the recovery site, then commit and fail back: those writes are at home,
    // home's diverged write is overwritten, and only what changed crossed the vault.
    write_at_recovery_site(&cl, "/data/f/away").await;
    let committed = cl.json(&["failover", "commit", "web"]);
    assert!(
        committed["message"].as_str().unwrap().contains("committed"),
        "{committed}"
    );
    let out = cl.json(&["failback", "web", "--shutdown-timeout", "60s"]);
    assert_eq!(out["state"], "failed_back", "{out}");
    let points = wait_points(&cl, "web", 1, Duration::from_secs(10));
    let back = points.last().unwrap().clone();
    // Tracked from its first boot on beta: the reverse delta reads and sends only what
    // the guest wrote there.
    assert_eq!(back["kind"], "incremental", "{back}");
    let read = back["bytes_read"].as_u64().unwrap();
    assert!(read < 8 << 20, "the failback read {read} bytes");
    let sent = back["new_bytes"].as_u64().unwrap();
    eprintln!(
        "failback: {sent} byte(s) stored from the recovery site (read {})",
        back["bytes_read"]
    );
    assert!(sent < 8 << 20, "failback sent {sent} bytes");
    // Home runs the VM (on the port its spec has now); the recovery VM is gone.
    let body = wait_http(second_port, "/f/away", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(body, b"away\n");
    assert_eq!(
        wait_http(second_port, "/f/kept", Duration::from_secs(30))
            .await
            .unwrap(),
        b"kept\n"
    );
    let (code, _) = http_get(second_port, "/f/diverged", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(code, 404, "home's diverged write must be overwritten");
    assert!(
        vm_row(&cl, "beta", "web").is_none(),
        "the recovery VM must be removed"
    );
    assert!(!cl.home("beta").join("recovered/web").exists());
    let home = vm_row(&cl, "alpha", "web").unwrap();
    assert!(
        running(&Some(home.clone())) && home["fenced"].is_null(),
        "{home}"
    );
    assert_eq!(cl.protection()["state"], "failed_back");

    // Bit-exact: every file the test wrote, as the failback point holds it, is at home
    // byte for byte.
    let at_point = home_equals_point(&cl, back["point"].as_str().unwrap());
    assert!(
        at_point.contains_key("away") && !at_point.contains_key("diverged"),
        "{:?}",
        at_point.keys()
    );

    // Reprotect: replication resumes from home and sends only what changed.
    let out = cl.json(&["reprotect", "web"]);
    assert_eq!(out["state"], "protected");
    let n = points.len();
    let next = wait_points(&cl, "web", n + 1, Duration::from_secs(180));
    let first = &next[n];
    let sent = first["new_bytes"].as_u64().unwrap();
    eprintln!(
        "reprotect: first sync {} read {} and sent {sent} byte(s)",
        first["kind"], first["bytes_read"]
    );
    assert!(sent < 8 << 20, "reprotect sent {sent} bytes: {first}");
    // No full resync: tracking restarted when home was made equal to the point.
    assert_eq!(first["kind"], "incremental", "{first}");
    cl.wait_for("protected", Duration::from_secs(60), |p| {
        p["state"] == "protected"
    });
}
