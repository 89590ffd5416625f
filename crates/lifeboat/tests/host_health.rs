//! The server greets every enrolled host's agent every 10 s: `hosts list`, `GET
//! /api/v1/hosts` and `/metrics` (`lifeboat_host_up`, `lifeboat_host_version_skew`) say
//! whether it answers and with which version. An agent of another release line is refused
//! at enrollment, and one that becomes skewed (an upgrade of one side only) is shown with
//! what to upgrade. The skewed agent is the test double of `security_probes` claiming
//! another version: no other release of Lifeboat exists to run.

mod common;

use std::time::{Duration, Instant};

use common::hostile_agent::{Attack, HostileAgent};
use common::{client, enroll, start_agent, start_agent_on, start_server, Server};
use serde_json::Value;

/// `hosts list --json`'s row for the host at `address`.
fn host_row(server: &Server, address: &str) -> Value {
    let (ok, out, err) = client(server, Some(&server.token), &["--json", "hosts", "list"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    rows.into_iter()
        .find(|r| r["address"] == address)
        .unwrap_or_else(|| panic!("{address} is not listed: {out}"))
}

/// Waits (the server greets every 10 s) until the host at `address` satisfies `ok`.
fn wait_health(server: &Server, address: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = host_row(server, address);
        if ok(&row["health"]) {
            return row;
        }
        assert!(Instant::now() < deadline, "never {what}: {row}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn metrics(server: &Server) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", "-H"])
        .arg(format!("Authorization: Bearer {}", server.token))
        .arg(format!("{}/metrics", server.url))
        .output()
        .unwrap();
    assert!(out.status.success(), "GET /metrics failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_host_is_shown_up_down_and_up_again_with_its_agents_version() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    let agent = start_agent(&tmp.path().join("alpha"), "alpha");
    let address = format!("127.0.0.1:{}", agent.port);
    let (ok, _, err) = enroll(
        &server,
        Some(&server.token),
        &address,
        agent.code.as_deref().unwrap(),
        Some(&agent.fingerprint),
    );
    assert!(ok, "{err}");
    let row = wait_health(&server, &address, "up", |h| h["up"] == true);
    assert_eq!(row["health"]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(row["health"].get("version_skew").is_none(), "{row}");
    let m = metrics(&server);
    assert!(m.contains("lifeboat_host_up{host=\"alpha\"} 1"), "{m}");
    assert!(
        m.contains("lifeboat_host_version_skew{host=\"alpha\"} 0"),
        "{m}"
    );
    let (ok, out, _) = client(&server, Some(&server.token), &["hosts", "list"]);
    assert!(
        ok && out.contains(" up ") && out.contains(env!("CARGO_PKG_VERSION")),
        "{out}"
    );

    // Its agent stops: down, and said why.
    let port = agent.port;
    drop(agent);
    let row = wait_health(&server, &address, "down", |h| h["up"] == false);
    assert!(row["health"]["error"].as_str().is_some(), "{row}");
    let m = metrics(&server);
    assert!(m.contains("lifeboat_host_up{host=\"alpha\"} 0"), "{m}");
    let (ok, out, _) = client(&server, Some(&server.token), &["hosts", "list"]);
    assert!(
        ok && out.contains("down") && out.contains("alpha: its agent did not answer"),
        "{out}"
    );

    // Back on its port: up again.
    let _agent = start_agent_on(&tmp.path().join("alpha"), "alpha", port, &[]);
    wait_health(&server, &address, "up again", |h| h["up"] == true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_another_release_line_is_refused_at_enrollment_and_shown_when_skewed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    let other = HostileAgent::start(&tmp.path().join("other"), Attack::TinyVms).await;
    let address = other.addr.to_string();
    let fp = other.fingerprint.clone();

    let enroll_it = || {
        tokio::task::block_in_place(|| {
            enroll(
                &server,
                Some(&server.token),
                &address,
                "any-code",
                Some(&fp),
            )
        })
    };

    // Newer than the server: refused, and nothing enrolled.
    other.claim_version("99.0.0");
    let (ok, _, err) = enroll_it();
    assert!(!ok, "an agent of another release line was enrolled");
    assert!(err.contains("upgrade the server first"), "{err}");
    let (ok, out, _) = tokio::task::block_in_place(|| {
        client(&server, Some(&server.token), &["--json", "hosts", "list"])
    });
    assert!(ok && out.trim() == "[]", "{out}");

    // The same line: enrolled. Then the agent is "downgraded": shown skewed.
    other.claim_version(env!("CARGO_PKG_VERSION"));
    let (ok, _, err) = enroll_it();
    assert!(ok, "{err}");
    other.claim_version("0.0.1");
    let row = tokio::task::block_in_place(|| {
        wait_health(&server, &address, "skewed", |h| {
            h["version_skew"].as_str().is_some()
        })
    });
    assert_eq!(row["health"]["agent_version"], "0.0.1");
    let skew = row["health"]["version_skew"].as_str().unwrap();
    assert!(
        skew.contains(&format!(
            "upgrade the agent to {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{skew}"
    );
    let m = tokio::task::block_in_place(|| metrics(&server));
    assert!(
        m.contains("lifeboat_host_version_skew{host=\"hostile\"} 1"),
        "{m}"
    );
    let (ok, out, _) =
        tokio::task::block_in_place(|| client(&server, Some(&server.token), &["hosts", "list"]));
    assert!(
        ok && out.contains("skewed") && out.contains("upgrade the agent"),
        "{out}"
    );
}
