//! kill -9 of the server at each step of a planned failover and of a failback, and of an
//! agent in the middle of them. The server is stopped at a step by a failpoint
//! (`lifeboat_agent::failpoint`), killed, and started again; the interrupted operation is
//! then undone (before its point of no return) or finished (after it). At every moment at most one copy of the VM runs,
//! and in the end exactly one runs, holding every write the guest acknowledged.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::{boot_guest_with, cluster, Cluster};
use common::moves::{
    all_acked_present, guest_runs, in_background, where_it_runs, write_at_recovery_site,
    writing_guest, OneCopy,
};
use common::{start_agent_on, start_server};
use lifeboat_testkit::{free_tcp_port, http_get};

/// Restarts the server stopped at `failpoint` while `args` runs, kills it there, and
/// starts it again without the failpoint.
fn crash_server_at(
    cl: &mut Cluster,
    failpoint: &str,
    args: &[&str],
    while_paused: impl Fn(&Cluster),
) {
    let marker = cl.tmp.path().join("failpoint-reached");
    let _ = std::fs::remove_file(&marker);
    std::env::set_var("LIFEBOAT_FAILPOINT", failpoint);
    std::env::set_var("LIFEBOAT_FAILPOINT_FILE", &marker);
    cl.restart_server(None);
    std::env::remove_var("LIFEBOAT_FAILPOINT");
    std::env::remove_var("LIFEBOAT_FAILPOINT_FILE");
    // Its answer is lost with the server; what it did is checked by the caller.
    let command = in_background(cl, args);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "failpoint {failpoint} not reached; status: {}",
            cl.json(&["status"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while_paused(cl);
    cl.server.child.kill().unwrap();
    cl.server.child.wait().unwrap();
    command.join().unwrap();
    cl.server = start_server(&cl.home("server"), None);
}

/// Waits until the protection settles in one of `states`; returns it.
fn settled(cl: &Cluster, states: &[&str]) -> String {
    let p = cl.wait_for("the move to settle", Duration::from_secs(180), |p| {
        states.contains(&p["state"].as_str().unwrap_or(""))
    });
    p["state"].as_str().unwrap().to_string()
}

/// After a crash at `failpoint`: the move settles as `expect` (state, host that runs the
/// VM), and the running copy holds every acknowledged write (how many is returned).
async fn settled_at(
    cl: &Cluster,
    http: u16,
    failpoint: &str,
    expect: (&str, &str),
) -> (String, &'static str, usize) {
    let state = settled(cl, &[expect.0]);
    let at = where_it_runs(cl);
    assert_eq!((state.as_str(), at), expect, "after a crash at {failpoint}");
    let n = all_acked_present(cl, http).await;
    (state, at, n)
}

fn homes(cl: &Cluster) -> [PathBuf; 2] {
    [cl.home("alpha"), cl.home("beta")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_failover_survives_a_server_crash_at_each_step() {
    for failpoint in [
        "planned-after-shutdown",
        "planned-after-final-sync",
        "planned-after-fence",
        "planned-after-recovery-started",
    ] {
        let mut cl = cluster(None);
        let http = free_tcp_port();
        let _vm = writing_guest(&cl, http).await;
        let one_copy = OneCopy::watch(homes(&cl), "web");
        crash_server_at(
            &mut cl,
            failpoint,
            &["failover", "web", "--planned", "--shutdown-timeout", "60s"],
            |cl| {
                // Another move of the VM meanwhile is refused, and changes nothing.
                let (ok, _, err) = cl.cli(&["failover", "web", "--unplanned"]);
                assert!(!ok && err.contains("operation running already"), "{err}");
            },
        );
        // Before the recovery VM starts the failover rolls back (the source starts
        // again); after, it is finished.
        let (state, at, n) = settled_at(
            &cl,
            http,
            failpoint,
            if failpoint == "planned-after-recovery-started" {
                ("failed_over", "beta")
            } else {
                ("protected", "alpha")
            },
        )
        .await;
        eprintln!(
            "crash at {failpoint}: settled {state}, runs on {at}, {n} acknowledged writes present"
        );
        assert!(one_copy.stop() > 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_survives_a_server_crash_at_each_step() {
    for failpoint in [
        "failback-after-shutdown",
        "failback-after-final-sync",
        "failback-after-apply",
        "failback-after-home-started",
    ] {
        let mut cl = cluster(None);
        let http = free_tcp_port();
        let _vm = writing_guest(&cl, http).await;
        let out = cl.json(&["failover", "web", "--planned", "--shutdown-timeout", "60s"]);
        assert_eq!(out["kind"], "planned");
        // A write at the recovery site, which must survive whatever happens next.
        write_at_recovery_site(&cl, "/data/away").await;
        let one_copy = OneCopy::watch(homes(&cl), "web");
        crash_server_at(
            &mut cl,
            failpoint,
            &["failback", "web", "--shutdown-timeout", "60s"],
            |cl| {
                let (ok, _, err) = cl.cli(&["failback", "web"]);
                assert!(!ok && err.contains("operation running already"), "{err}");
            },
        );
        // Until home runs the VM a failback rolls back (the recovery VM starts again);
        // once home runs it, it is finished.
        let (state, at, n) = settled_at(
            &cl,
            http,
            failpoint,
            if failpoint == "failback-after-home-started" {
                ("failed_back", "alpha")
            } else {
                ("failed_over", "beta")
            },
        )
        .await;
        let (code, body) = http_get(http, "/away", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!((code, body.as_slice()), (200, b"away\n".as_slice()));
        eprintln!("crash at {failpoint}: settled {state}, runs on {at}, {n} acknowledged writes and the recovery site's write present");
        assert!(one_copy.stop() > 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_is_refused_untouched_when_the_other_host_is_down() {
    let mut cl = cluster(None);
    let http = free_tcp_port();
    // Before the first point there is nothing to fail over to: refused, nothing changes.
    let alpha_port = cl.alpha.port;
    cl.alpha.child.kill().unwrap();
    cl.alpha.child.wait().unwrap();
    cl.alpha = start_agent_on(
        &cl.home("alpha"),
        "alpha",
        alpha_port,
        &["--max-rate", "1M"],
    );
    let (_slow, _console) = boot_guest_with(&cl.home("alpha"), "early", &[], None).await;
    let (ok, _, err) = cl.cli(&[
        "protect",
        "early",
        "--vault",
        &cl.vault,
        "--recovery-host",
        "beta",
        "--policy",
        "frequent",
        "--no-wait",
    ]);
    assert!(ok, "{err}");
    for kind in ["--test", "--planned", "--unplanned"] {
        let (ok, _, err) = cl.cli(&["failover", "early", kind]);
        assert!(
            !ok && err.contains("no recovery point yet"),
            "{kind}: {err}"
        );
    }
    assert!(guest_runs(&cl.home("alpha"), "early"));
    assert!(cl
        .json(&["failover", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    // Unprotect needs the VM's agent: with it down, unprotect is undone after its tries,
    // and replication goes on.
    cl.alpha.child.kill().unwrap();
    cl.alpha.child.wait().unwrap();
    let (ok, _, err) = cl.cli(&["unprotect", "early"]);
    assert!(!ok && err.contains("stopping tracking"), "{err}");
    let p = cl.protection();
    assert_eq!(p["state"], "initial_sync", "{p}");
    cl.alpha = start_agent_on(&cl.home("alpha"), "alpha", alpha_port, &[]);
    let (ok, _, err) = cl.cli(&["unprotect", "early"]);
    assert!(ok, "{err}");

    let _vm = writing_guest(&cl, http).await;
    // The recovery host's agent is down: a planned failover must not stop the source.
    cl.beta.child.kill().unwrap();
    cl.beta.child.wait().unwrap();
    let (ok, _, err) = cl.cli(&["failover", "web", "--planned"]);
    assert!(!ok && err.contains("does not answer"), "{err}");
    assert!(guest_runs(&cl.home("alpha"), "web"));
    let p = cl.wait_for("protected", Duration::from_secs(60), |p| {
        p["state"] == "protected"
    });
    assert_eq!(p["state"], "protected");
    let beta_port = cl.beta.port;
    cl.beta = start_agent_on(&cl.home("beta"), "beta", beta_port, &[]);

    // Failed over; then home's agent is down: a failback must not stop the recovery VM.
    let out = cl.json(&["failover", "web", "--planned", "--shutdown-timeout", "60s"]);
    assert_eq!(out["kind"], "planned");
    cl.alpha.child.kill().unwrap();
    cl.alpha.child.wait().unwrap();
    let (ok, _, err) = cl.cli(&["failback", "web"]);
    assert!(!ok && err.contains("does not answer"), "{err}");
    assert!(guest_runs(&cl.home("beta"), "web"));
    assert_eq!(cl.protection()["state"], "failed_over");
    all_acked_present(&cl, http).await;
}

/// Restarts agent `who` with the failpoint set, runs `args` in the background, waits for
/// the failpoint, kills the agent there (kill -9) and starts it again without it.
fn crash_agent_at(
    cl: &mut Cluster,
    who: &str,
    failpoint: &str,
    args: &[&str],
) -> std::process::Output {
    let marker = cl.tmp.path().join("agent-failpoint-reached");
    let _ = std::fs::remove_file(&marker);
    let restart = |cl: &mut Cluster, extra: Option<(&str, &std::path::Path)>| {
        let agent = if who == "alpha" {
            &mut cl.alpha
        } else {
            &mut cl.beta
        };
        let port = agent.port;
        let _ = agent.child.kill();
        let _ = agent.child.wait();
        if let Some((fp, file)) = extra {
            std::env::set_var("LIFEBOAT_FAILPOINT", fp);
            std::env::set_var("LIFEBOAT_FAILPOINT_FILE", file);
        }
        let fresh = start_agent_on(&cl.home(who), who, port, &[]);
        std::env::remove_var("LIFEBOAT_FAILPOINT");
        std::env::remove_var("LIFEBOAT_FAILPOINT_FILE");
        if who == "alpha" {
            cl.alpha = fresh;
        } else {
            cl.beta = fresh;
        }
    };
    restart(cl, Some((failpoint, &marker)));
    let command = in_background(cl, args);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "agent failpoint {failpoint} not reached"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent = if who == "alpha" {
        &mut cl.alpha
    } else {
        &mut cl.beta
    };
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    // The agent is down for a while, then back. An operation on the engine follows its
    // retries and undo meanwhile (its command waits for the end); a move of the old kind
    // failed at once.
    std::thread::sleep(Duration::from_secs(3));
    restart(cl, None);
    command.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_move_is_settled() {
    let mut cl = cluster(None);
    let http = free_tcp_port();
    let _vm = writing_guest(&cl, http).await;
    let one_copy = OneCopy::watch(homes(&cl), "web");

    // The source's agent dies during the final sync (its QEMU is up, paused): once it is
    // back, the final sync is refused (the held QEMU still runs), so the failover is
    // undone and the VM runs at home again.
    let out = crash_agent_at(
        &mut cl,
        "alpha",
        "agent-final-sync-started",
        &["failover", "web", "--planned", "--shutdown-timeout", "60s"],
    );
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, n) = settled_at(
        &cl,
        http,
        "agent-final-sync-started",
        ("protected", "alpha"),
    )
    .await;
    eprintln!("agent killed in the final sync: rolled back, {n} acknowledged writes present");

    // Failed over; home's agent dies after writing the point over home's disk, before
    // proving it: the failback retries the write once the agent is back (it is
    // idempotent: only chunks that differ are written) and completes.
    let out = cl.json(&["failover", "web", "--planned", "--shutdown-timeout", "60s"]);
    assert_eq!(out["kind"], "planned");
    write_at_recovery_site(&cl, "/data/away").await;
    let out = crash_agent_at(
        &mut cl,
        "alpha",
        "agent-apply-written",
        &["failback", "web", "--shutdown-timeout", "60s"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settled_at(&cl, http, "agent-apply-written", ("failed_back", "alpha")).await;
    let (code, body) = http_get(http, "/away", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((code, body.as_slice()), (200, b"away\n".as_slice()));

    // Away again, for the recovery host's agent to die in the failback's final sync (its
    // QEMU held paused): the final sync is refused once it is back, so the failback is
    // undone and the recovery VM runs again.
    cl.json(&["reprotect", "web"]);
    let last = cl.protection()["last_point"].clone();
    cl.wait_for("a point after reprotect", Duration::from_secs(180), |p| {
        p["state"] == "protected" && p["last_point"] != last
    });
    let out = cl.json(&["failover", "web", "--planned", "--shutdown-timeout", "60s"]);
    assert_eq!(out["kind"], "planned");
    write_at_recovery_site(&cl, "/data/away").await;
    let out = crash_agent_at(
        &mut cl,
        "beta",
        "agent-final-sync-started",
        &["failback", "web", "--shutdown-timeout", "60s"],
    );
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settled_at(
        &cl,
        http,
        "agent-final-sync-started",
        ("failed_over", "beta"),
    )
    .await;
    let out = cl.json(&["failback", "web", "--shutdown-timeout", "60s"]);
    assert_eq!(out["state"], "failed_back", "{out}");
    assert_eq!(where_it_runs(&cl), "alpha");
    let n = all_acked_present(&cl, http).await;
    let (code, body) = http_get(http, "/away", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((code, body.as_slice()), (200, b"away\n".as_slice()));
    eprintln!("agents killed in the failback's apply (retried, completed) and final sync (undone), then failed back; {n} acknowledged writes and the recovery site's write at home");
    assert!(one_copy.stop() > 10);
}
