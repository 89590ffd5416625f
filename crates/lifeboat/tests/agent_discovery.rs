//! Agents as separate processes: a scan finds them with their certificate fingerprints,
//! only the one-time code enrolls an agent, only its credential opens its API, and
//! plain HTTP is refused off loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{start_agent, Agent};

fn scan(ports: &[u16]) -> serde_json::Value {
    let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args([
            "--json",
            "hosts",
            "scan",
            "127.0.0.1/32",
            "--ports",
            &ports.join(","),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A client that accepts the agent's self-signed certificate only if it is the one with
/// `fingerprint` (what the server does after enrollment).
async fn pinned_get(
    client: &reqwest::Client,
    agent: &Agent,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = client.get(format!("https://127.0.0.1:{}{path}", agent.port));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let cert = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .unwrap()
        .to_vec();
    assert_eq!(
        lifeboat_agent::identity::fingerprint(&cert),
        agent.fingerprint
    );
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn enroll(client: &reqwest::Client, agent: &Agent, code: &str) -> (u16, serde_json::Value) {
    let resp = client
        .post(format!("https://127.0.0.1:{}/api/v1/enroll", agent.port))
        .json(&serde_json::json!({ "code": code, "server_fingerprint": "ab".repeat(32) }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn scan_finds_agents_and_only_the_code_and_credential_open_them() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start_agent(&tmp.path().join("a"), "alpha");
    let b = start_agent(&tmp.path().join("b"), "beta");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let found = scan(&[a.port, b.port, closed]);
    let agents = found["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{found:#}");
    for (agent, name) in [(&a, "alpha"), (&b, "beta")] {
        let row = agents
            .iter()
            .find(|r| r["address"] == format!("127.0.0.1:{}", agent.port))
            .unwrap_or_else(|| panic!("{name} not found: {found:#}"));
        assert_eq!(row["hostname"], name);
        assert_eq!(row["fingerprint"], agent.fingerprint.as_str());
        assert_eq!(row["fingerprint_matches"], true);
        assert_eq!(row["enrolled"], false);
    }
    assert_ne!(a.fingerprint, b.fingerprint);

    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Before enrollment: nothing but the hello.
    let (status, body) = pinned_get(&client, &a, "/api/v1/inventory", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not enrolled"));

    // The code works once; a wrong one never.
    let code = a.code.clone().expect("first start shows a code");
    let (status, _) = enroll(&client, &a, "0000-0000-0000").await;
    assert_eq!(status, 403);
    let (status, _) = enroll(&client, &a, b.code.as_deref().unwrap()).await;
    assert_eq!(status, 403, "another agent's code");
    let (status, body) = enroll(&client, &a, &code).await;
    assert_eq!(status, 200, "{body}");
    let credential = body["credential"].as_str().unwrap().to_string();
    let (status, body) = enroll(&client, &a, &code).await;
    assert_eq!(status, 409, "{body}");

    // Only the credential opens the API.
    let (status, _) = pinned_get(&client, &a, "/api/v1/inventory", None).await;
    assert_eq!(status, 401);
    let (status, _) = pinned_get(&client, &a, "/api/v1/inventory", Some("not-it")).await;
    assert_eq!(status, 401);
    let (status, _) = pinned_get(&client, &b, "/api/v1/inventory", Some(&credential)).await;
    assert_eq!(
        status, 403,
        "b is not enrolled; a's credential means nothing to it"
    );
    // The routes that sync, stop tracking and open vaults: the same rule. A request
    // without the credential never reaches the VM, whatever it asks.
    let sync = serde_json::json!({"sync_id": "s1", "point_name": "x",
        "vault": {"url": "file:///nonexistent", "passphrase": "p"}});
    for (path, token, want) in [
        ("/api/v1/vms/web/syncs", None, 401),
        ("/api/v1/vms/web/syncs", Some("not-it"), 401),
        ("/api/v1/vms/web/unprotect", None, 401),
        ("/api/v1/vault/check", Some("not-it"), 401),
    ] {
        let mut req = client
            .post(format!("https://127.0.0.1:{}{path}", a.port))
            .json(&sync);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status().as_u16(), want, "{path}");
    }
    let (status, _) = pinned_get(&client, &a, "/api/v1/syncs/s1", None).await;
    assert_eq!(status, 401);
    let status = client
        .post(format!("https://127.0.0.1:{}/api/v1/vms/web/syncs", b.port))
        .bearer_auth(&credential)
        .json(&sync)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 403, "b is not enrolled");
    // With the credential: a VM the agent does not have is named.
    let resp = client
        .post(format!("https://127.0.0.1:{}/api/v1/vms/web/syncs", a.port))
        .bearer_auth(&credential)
        .json(&sync)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let (status, body) = pinned_get(&client, &a, "/api/v1/inventory", Some(&credential)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hostname"], "alpha");
    assert_eq!(body["vms"], serde_json::json!([]));

    let found = scan(&[a.port]);
    assert_eq!(found["agents"][0]["enrolled"], true, "{found:#}");

    // The pinned client the server uses: the right fingerprint works, another is refused
    // before anything (the credential) is sent.
    use lifeboat_agent::client::AgentClient;
    let addr = format!("127.0.0.1:{}", a.port);
    let pinned = AgentClient::new(&addr, &a.fingerprint, Duration::from_secs(30))
        .unwrap()
        .with_credential(&credential.as_str().into());
    let inv = pinned.inventory().await.unwrap();
    assert_eq!(inv["hostname"], "alpha");
    let wrong = AgentClient::new(&addr, &b.fingerprint, Duration::from_secs(30))
        .unwrap()
        .with_credential(&credential.as_str().into());
    let err = format!("{:?}", wrong.inventory().await.unwrap_err());
    assert!(err.contains("pinned"), "{err}");

    // A restart keeps identity, enrollment and credential, and shows no code.
    let home_a = tmp.path().join("a");
    let old_fp = a.fingerprint.clone();
    drop(a);
    let a = start_agent(&home_a, "alpha");
    assert_eq!(a.fingerprint, old_fp);
    assert!(
        a.code.is_none() && a.banner.contains("Enrolled by the server"),
        "{}",
        a.banner
    );
    let (status, _) = pinned_get(&client, &a, "/api/v1/inventory", Some(&credential)).await;
    assert_eq!(status, 200);
}

#[test]
fn plain_http_is_refused_off_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--home")
        .arg(tmp.path())
        .args([
            "agent",
            "--listen",
            "0.0.0.0:0",
            "--insecure-http",
            "--hostname",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}

#[test]
fn scanning_a_range_too_wide_is_explained() {
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args(["hosts", "scan", "10.0.0.0/8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most a /16"), "{err}");
}
