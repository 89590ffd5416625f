//! The server, two agents, and the CLI as separate processes: hosts enroll with their
//! one-time codes, `hosts list` and `vms list` show them, an agent that stops answering is
//! named with the reason, and API calls without or with a wrong token are refused.

mod common;

use common::{client, client_with, enroll, start_agent, start_server, start_server_with};
use lifeboat_testkit::fresh_postgres_database;

#[test]
fn hosts_enroll_once_and_the_api_needs_its_token_on_sqlite() {
    hosts_enroll_once_and_the_api_needs_its_token(None);
}

#[test]
fn hosts_enroll_once_and_the_api_needs_its_token_on_postgres() {
    hosts_enroll_once_and_the_api_needs_its_token(Some(fresh_postgres_database()));
}

fn hosts_enroll_once_and_the_api_needs_its_token(database: Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server"), database.as_deref());
    let a = start_agent(&tmp.path().join("a"), "alpha");
    let b = start_agent(&tmp.path().join("b"), "beta");
    let tok = Some(server.token.as_str());
    let addr_a = format!("127.0.0.1:{}", a.port);
    let addr_b = format!("127.0.0.1:{}", b.port);

    // No token, a wrong token: refused, and nothing is enrolled.
    let (ok, _, err) = client(&server, None, &["hosts", "list"]);
    assert!(!ok && err.contains("no API token"), "{err}");
    let (ok, _, err) = client(&server, Some("nope"), &["hosts", "list"]);
    assert!(!ok && err.contains("wrong API token"), "{err}");

    // A wrong code: the agent's refusal, shown as is.
    let (ok, _, err) = enroll(&server, tok, &addr_a, "0000-0000-0000", None);
    assert!(!ok && err.contains("refused the code"), "{err}");

    // The right code, with the fingerprint the operator checked.
    let code_a = a.code.clone().unwrap();
    let (ok, out, err) = client_with(
        &server,
        tok,
        &[
            "--json",
            "hosts",
            "enroll",
            &addr_a,
            "--fingerprint",
            &a.fingerprint,
        ],
        &[("LIFEBOAT_ENROLL_CODE", &code_a)],
    );
    assert!(ok, "{err}");
    let host: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(host["hostname"], "alpha");
    assert_eq!(host["fingerprint"], a.fingerprint.as_str());
    // Trust on first use for b (no --fingerprint): the presented certificate is pinned.
    let code_b = b.code.clone().unwrap();
    let (ok, _, err) = enroll(&server, tok, &addr_b, &code_b, None);
    assert!(ok, "{err}");
    // Codes work once.
    let (ok, _, err) = enroll(&server, tok, &addr_a, &code_a, None);
    assert!(!ok && err.contains("enrolled already"), "{err}");

    let (ok, out, err) = client(&server, tok, &["--json", "hosts", "list"]);
    assert!(ok, "{err}");
    let hosts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(hosts[1]["fingerprint"], b.fingerprint.as_str());
    assert!(
        hosts[0].get("credential").is_none(),
        "credentials never leave the server"
    );

    let (ok, out, err) = client(&server, tok, &["--json", "vms", "list"]);
    assert!(ok, "{err}");
    let vms: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(vms["unreachable"], serde_json::json!([]), "{vms:#}");

    // A scan lists enrolled agents with their VMs (none here), and an agent another
    // server would have to enroll without them.
    let c = start_agent(&tmp.path().join("c"), "gamma");
    let ports = format!("{},{},{}", a.port, b.port, c.port);
    let (ok, out, err) = client(
        &server,
        tok,
        &["--json", "hosts", "scan", "127.0.0.1/32", "--ports", &ports],
    );
    assert!(ok, "{err}");
    let scan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let by_name = |n: &str| {
        scan["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["hostname"] == n)
            .unwrap_or_else(|| panic!("{n} not found: {scan}"))
            .clone()
    };
    assert_eq!(by_name("alpha")["vms"], serde_json::json!([]), "{scan}");
    assert!(by_name("gamma")["vms"].is_null(), "{scan}");
    drop(c);

    // Operations and policies answer (none running yet; the built-in policies).
    for (path, want) in [
        ("/api/v1/operations", "[]"),
        ("/api/v1/policies", "\"frequent\""),
    ] {
        let out = std::process::Command::new("curl")
            .args(["-sf", "-H"])
            .arg(format!("Authorization: Bearer {}", server.token))
            .arg(format!("{}{path}", server.url))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && body.contains(want),
            "{path}: {body}"
        );
    }

    // The API's description needs no token and is the committed document.
    let doc = std::process::Command::new("curl")
        .args(["-sf", &format!("{}/api/v1/openapi.json", server.url)])
        .output()
        .unwrap();
    assert!(doc.status.success());
    let committed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ))
    .unwrap();
    assert_eq!(doc.stdout, committed);

    // An agent that stops answering is named, with the reason; the other still answers.
    drop(b);
    let (ok, out, err) = client(&server, tok, &["vms", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Host beta") && out.contains("did not answer"),
        "{out}"
    );
    drop(a);
}

/// Over TLS, on the server's own machine, the CLI pins the certificate in HOME and reads
/// the token from HOME; another fingerprint is refused before the token is sent.
#[test]
fn the_cli_pins_the_servers_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("server-home");
    let server = start_server_with(&home, None, true);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .arg("--home")
            .arg(&home)
            .args(["hosts", "list", "--server", &server.url])
            .args(extra)
            .env_remove("LIFEBOAT_TOKEN")
            .env_remove("LIFEBOAT_SERVER_FINGERPRINT")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("No hosts enrolled"), "{out}");
    let other = "ab".repeat(32);
    let (code, _, err) = run(&["--server-fingerprint", &other]);
    // A failed pin is no unreachable server (6, worth a retry): 1.
    assert_eq!(code, Some(1), "a wrong pin must fail: {err}");
    assert!(err.contains("not the pinned"), "{err}");
    let (code, _, err) = run(&["--server-fingerprint", &server.fingerprint]);
    assert_eq!(code, Some(0), "{err}");
}

/// The client config file supplies what flags and environment leave unset; a token in a
/// file others can read is refused with the fix.
#[test]
fn the_client_config_file_names_the_server_and_token() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    let config = tmp.path().join("client.toml");
    // The server's state (credentials, vault passphrases) is root's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("server/server"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .args(["--json", "hosts", "list"])
            .env("LIFEBOAT_CONFIG", &config)
            .env("LIFEBOAT_HOME", "/nonexistent-lifeboat-home")
            .env_remove("LIFEBOAT_SERVER")
            .env_remove("LIFEBOAT_TOKEN")
            .env_remove("LIFEBOAT_TOKEN_FILE")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\ntoken = \"{}\"\n",
            server.url, server.token
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = run();
    assert!(!ok && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, out, err) = run();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]");
    std::fs::write(&config, "srever = \"x\"\n").unwrap();
    let (ok, _, err) = run();
    assert!(
        !ok && err.contains("client.toml:1: unknown field `srever`"),
        "{err}"
    );
}
