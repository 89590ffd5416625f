//! Operations run in the server, not in the request (DESIGN.md, "Operations"), shown on
//! real agents and a guest that writes and acknowledges numbered files:
//! - a cancel while the source shuts down undoes the planned failover: the source runs
//!   again, unfenced, with every write;
//! - a failure injected after a step before the point of no return undoes the failover;
//! - with every step run twice (`LIFEBOAT_SAGA_REPEAT=1`) a planned failover whose CLI
//!   is killed mid-way still completes, on the recovery host, with every write; its final
//!   sync, asked twice, is one job on the agent and makes one point;
//! - a failback that fails after a step before its point of no return is undone: the VM
//!   runs on at the recovery site with every write, home fenced;
//! - an unprotect that fails so is undone: the VM stays protected and gets new points;
//! - an enable that fails after recording the protection leaves nothing of it;
//! - past the point of no return a cancel is refused, saying why, and a kill -9 of the
//!   server there is followed by the restarted server finishing the move, which
//!   `operations follow` follows to its end;
//! - the operation's event stream tells every log line once, in order, and ends with
//!   the operation's end.
//!
//! At every moment at most one copy of the VM runs. `LIFEBOAT_SAGA_CAMPAIGN=full` adds a
//! failure injected after every step of the planned failover, the failback and the
//! unprotect before their points of no return (a long campaign).

mod common;

use std::time::{Duration, Instant};

use common::cluster::{cluster, Cluster};
use common::moves::{all_acked_present, where_it_runs, writing_guest, OneCopy};
use common::start_server;
use lifeboat_server::ops::{failback, failover, undone_if_failed_after, unprotect};
use lifeboat_testkit::free_tcp_port;
use serde_json::Value;

/// Every event of operation `id`'s stream (`/api/v1/operations/{id}/events`) as (name,
/// data), read with a plain HTTP client until the server ends the stream.
async fn operation_events_at(server: &str, token: &str, id: &str) -> Vec<(String, String)> {
    let url = format!("{server}/api/v1/operations/{id}/events");
    let mut resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            name.map(|n| (n, data.join("\n")))
        })
        .collect()
}

fn operation(cl: &Cluster, id: &str) -> Value {
    cl.json(&["operations", "show", id])
}

/// Polls the operation until `pred` holds; panics with it after `limit`.
fn wait_op(
    cl: &Cluster,
    id: &str,
    what: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let op = operation(cl, id);
        if pred(&op) {
            return op;
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {what}: {op:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ended(op: &Value) -> bool {
    op["status"] != "running"
}

/// Starts a planned failover without following it; its operation's id.
fn start_planned(cl: &Cluster, timeout: &str) -> String {
    let op = cl.json(&[
        "failover",
        "web",
        "--planned",
        "--shutdown-timeout",
        timeout,
        "--no-wait",
    ]);
    assert_eq!(op["status"], "running", "{op}");
    assert_eq!(op["kind"], "failover-planned", "{op}");
    op["id"].as_str().unwrap().to_string()
}

/// Restarts the server with `env` set (and nothing else of the test's own).
fn restart_server_with(cl: &mut Cluster, env: &[(&str, &str)]) {
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    cl.restart_server(None);
    for (k, _) in env {
        std::env::remove_var(k);
    }
}

/// The VM is home and protected, runs there only, with every acknowledged write.
async fn home_and_whole(cl: &Cluster, http: u16, after: &str) {
    let p = cl.wait_for("protected", Duration::from_secs(120), |p| {
        p["state"] == "protected"
    });
    assert_eq!(p["state"], "protected", "{after}");
    assert_eq!(where_it_runs(cl), "alpha", "{after}");
    assert!(
        cl.json(&["failover", "list"])
            .as_array()
            .unwrap()
            .is_empty(),
        "{after}: a copy is left on beta"
    );
    let n = all_acked_present(cl, http).await;
    eprintln!("{after}: home, protected, {n} acknowledged writes present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_survive_clients_cancels_failures_and_server_crashes() {
    let mut cl = cluster(None);
    let http = free_tcp_port();
    let _vm = writing_guest(&cl, http).await;
    let one_copy = OneCopy::watch([cl.home("alpha"), cl.home("beta")], "web");
    let mut cases = 0;

    // 1. Cancel while the source shuts down (the guest ignores ACPI: the shutdown takes
    // its whole timeout): the failover is undone after that step.
    let id = start_planned(&cl, "20s");
    let stream = {
        let (url, token, id) = (cl.server.url.clone(), cl.server.token.clone(), id.clone());
        tokio::spawn(async move { operation_events_at(&url, &token, &id).await })
    };
    wait_op(&cl, &id, "the shutdown", Duration::from_secs(120), |op| {
        op["log"]
            .as_str()
            .unwrap_or("")
            .contains("shutting web down")
            || ended(op)
    });
    let asked = cl.json(&["operations", "cancel", &id, "--no-wait"]);
    assert_eq!(asked["cancel_requested"], true, "{asked}");
    let op = wait_op(&cl, &id, "the undo", Duration::from_secs(180), ended);
    assert_eq!(op["status"], "cancelled", "{op:#}");
    assert!(
        op["log"]
            .as_str()
            .unwrap()
            .contains("step shutdown-source undone"),
        "{op:#}"
    );
    // Its event stream told every line once, in order, and ended with the operation.
    let events = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("the event stream did not end with the operation")
        .unwrap();
    let lines: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "log")
        .map(|(_, d)| d.as_str())
        .collect();
    let logged: Vec<&str> = op["log"].as_str().unwrap().lines().collect();
    assert_eq!(
        lines, logged,
        "the stream's log lines are the operation's log"
    );
    let ops: Vec<Value> = events
        .iter()
        .filter(|(n, _)| n == "operation")
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events[0].0, "log", "the log so far comes first: {events:?}");
    assert!(ops.len() >= 3, "progress as it happened: {ops:#?}");
    assert_eq!(events.last().unwrap().0, "operation");
    assert_eq!(ops.last().unwrap()["status"], "cancelled");
    assert!(ops
        .iter()
        .any(|o| o["cancel_requested"] == true && o["status"] == "running"));
    home_and_whole(&cl, http, "cancelled during the shutdown").await;
    cases += 1;

    // 2. A failure after a step up to the point of no return: undone, said why. With the
    // full campaign, after every such step, as the engine's own list names them.
    let campaign = std::env::var("LIFEBOAT_SAGA_CAMPAIGN").is_ok_and(|v| v == "full");
    let fail_at: Vec<&str> = if campaign {
        undone_if_failed_after(failover::PLANNED_STEPS)
    } else {
        vec!["fence-source"]
    };
    for step in fail_at {
        restart_server_with(
            &mut cl,
            &[("LIFEBOAT_SAGA_FAIL", &format!("failover-planned:{step}"))],
        );
        let (ok, _, err) = cl.cli(&["failover", "web", "--planned", "--shutdown-timeout", "5s"]);
        assert!(!ok, "failure after {step}: the failover succeeded");
        assert!(
            err.contains(&format!("step {step} failed")) && err.contains("undone"),
            "failure after {step}: {err}"
        );
        home_and_whole(&cl, http, &format!("failure after {step}")).await;
        cases += 1;
    }

    // 3. Every action run twice; the CLI killed once the source is shut down: the
    // failover completes without it.
    restart_server_with(&mut cl, &[("LIFEBOAT_SAGA_REPEAT", "1")]);
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args(["failover", "web", "--planned", "--shutdown-timeout", "5s"])
        .env("LIFEBOAT_SERVER", &cl.server.url)
        .env("LIFEBOAT_TOKEN", &cl.server.token)
        .env("LIFEBOAT_HOME", "/nonexistent-lifeboat-home")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = || -> Option<Value> {
        cl.json(&["operations", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == "failover-planned" && o["status"] == "running")
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let id = loop {
        if let Some(op) = running() {
            if op["steps_done"].as_i64().unwrap() >= 4 {
                break op["id"].as_str().unwrap().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the failover did not reach its final sync"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    cli.kill().unwrap();
    cli.wait().unwrap();
    let op = wait_op(
        &cl,
        &id,
        "the failover without its CLI",
        Duration::from_secs(300),
        ended,
    );
    assert_eq!(op["status"], "succeeded", "{op:#}");
    assert_eq!(op["result"]["kind"], "planned", "{op:#}");
    // The final sync, asked twice, is one job on the agent: one final point.
    let finals: std::collections::BTreeSet<&str> = op["log"]
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.split("final point ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(finals.len(), 1, "the final sync ran twice: {finals:?}");
    assert!(
        op["log"]
            .as_str()
            .unwrap()
            .matches("equals the source disks")
            .count()
            >= 2,
        "the final sync step did not run twice: {op:#}"
    );
    assert_eq!(where_it_runs(&cl), "beta");
    assert_eq!(cl.protection()["state"], "failed_over");
    let n = all_acked_present(&cl, http).await;
    eprintln!("every step twice, CLI killed: failed over, {n} acknowledged writes present");
    cases += 1;

    // 4. A failback that fails after a step up to its point of no return: undone, the VM
    // runs on at the recovery site with every write, home fenced. With the full campaign,
    // after every such step (past it a move goes on to its end: case 8).
    let fail_at: Vec<&str> = if campaign {
        undone_if_failed_after(failback::STEPS)
    } else {
        vec!["apply-at-home"]
    };
    for step in fail_at {
        restart_server_with(
            &mut cl,
            &[("LIFEBOAT_SAGA_FAIL", &format!("failback:{step}"))],
        );
        let (ok, _, err) = cl.cli(&["failback", "web", "--shutdown-timeout", "5s"]);
        assert!(!ok, "failure after {step}: the failback succeeded");
        assert!(
            err.contains(&format!("step {step} failed")) && err.contains("undone"),
            "failback failure after {step}: {err}"
        );
        assert_eq!(cl.protection()["state"], "failed_over", "after {step}");
        assert_eq!(where_it_runs(&cl), "beta", "failback failure after {step}");
        let home = common::moves::vm_row(&cl, "alpha", "web");
        assert!(
            home.as_ref().is_some_and(|r| r["fenced"].is_string()),
            "home stays fenced after {step}: {home:?}"
        );
        let n = all_acked_present(&cl, http).await;
        eprintln!("failback failure after {step}: undone, {n} acknowledged writes at B");
        cases += 1;
    }

    // 5. Home again, for the last case.
    restart_server_with(&mut cl, &[]);
    let back = cl.json(&["failback", "web", "--shutdown-timeout", "5s"]);
    assert_eq!(back["state"], "failed_back", "{back}");
    cl.json(&["reprotect", "web"]);
    let last = cl.protection()["last_point"].clone();
    cl.wait_for("a point after reprotect", Duration::from_secs(120), |p| {
        p["state"] == "protected" && p["last_point"] != last
    });

    // 6. An unprotect that fails after a step up to its point of no return: undone, the
    // VM stays protected and gets new points (a resync when tracking was stopped). With
    // the full campaign, after every such step.
    let fail_at: Vec<&str> = if campaign {
        undone_if_failed_after(unprotect::STEPS)
    } else {
        vec!["stop-tracking"]
    };
    for step in fail_at {
        restart_server_with(
            &mut cl,
            &[("LIFEBOAT_SAGA_FAIL", &format!("disable:{step}"))],
        );
        let last = cl.protection()["last_point"].clone();
        let (ok, _, err) = cl.cli(&["unprotect", "web"]);
        assert!(!ok, "failure after {step}: the unprotect succeeded");
        assert!(
            err.contains(&format!("step {step} failed")) && err.contains("undone"),
            "unprotect failure after {step}: {err}"
        );
        cl.wait_for(
            &format!("a point after the unprotect undone after {step}"),
            Duration::from_secs(180),
            |p| p["state"] == "protected" && p["last_point"] != last,
        );
        assert_eq!(where_it_runs(&cl), "alpha");
        eprintln!("unprotect failure after {step}: undone, replication goes on");
        cases += 1;
    }
    restart_server_with(&mut cl, &[]);

    // 7. Unprotected, then an enable that fails after recording the protection: undone,
    // nothing is left of it (the VM is not protected, no operation runs); enabled again,
    // it syncs from scratch.
    let (ok, out, err) = cl.cli(&["unprotect", "web"]);
    assert!(ok, "{out}\n{err}");
    restart_server_with(
        &mut cl,
        &[("LIFEBOAT_SAGA_FAIL", "enable:record-protection")],
    );
    let (ok, _, err) = cl.protect("web", &["--wait", "--timeout", "5m"]);
    assert!(
        !ok && err.contains("step record-protection failed") && err.contains("undone"),
        "enable failure after record-protection: {err}"
    );
    let status = cl.json(&["status"]);
    assert_eq!(
        status["protected_vms"], 0,
        "nothing left of the protection: {status}"
    );
    assert_eq!(
        status["running_operations"].as_array().unwrap().len(),
        0,
        "{status}"
    );
    cases += 1;
    restart_server_with(&mut cl, &[]);
    let (ok, out, err) = cl.protect("web", &["--wait", "--timeout", "10m"]);
    assert!(ok, "enabled again: {out}\n{err}");
    eprintln!("enable failure after record-protection: undone; enabled again");

    // 8. Past the point of no return: cancel refused, the server killed there, and the
    // restarted server finishes the move.
    let marker = cl.tmp.path().join("failpoint-reached");
    let _ = std::fs::remove_file(&marker);
    restart_server_with(
        &mut cl,
        &[
            ("LIFEBOAT_FAILPOINT", "failover-planned:record"),
            ("LIFEBOAT_FAILPOINT_FILE", marker.to_str().unwrap()),
        ],
    );
    let id = start_planned(&cl, "5s");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the failover did not reach its record step: {:#}",
            operation(&cl, &id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, _, err) = cl.cli(&["operations", "cancel", &id]);
    assert!(!ok && err.contains("point of no return"), "{err}");
    cl.server.child.kill().unwrap();
    cl.server.child.wait().unwrap();
    cl.server = start_server(&cl.home("server"), None);
    // `operations follow` picks it up and follows it to its end.
    let result = cl.json(&["operations", "follow", &id]);
    assert_eq!(result["kind"], "planned", "{result}");
    let op = operation(&cl, &id);
    assert_eq!(op["status"], "succeeded", "{op:#}");
    assert!(
        op["log"]
            .as_str()
            .unwrap()
            .contains("past its point of no return and goes on"),
        "{op:#}"
    );
    assert_eq!(where_it_runs(&cl), "beta");
    assert_eq!(cl.protection()["state"], "failed_over");
    all_acked_present(&cl, http).await;
    cases += 1;

    assert!(one_copy.stop() > 10);
    eprintln!("{cases} operation cases ran on real agents");
}
