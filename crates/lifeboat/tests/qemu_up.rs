//! The README's run command: `lifeboat up` starts server, agent and vault in one process,
//! enrolls its agent, boots the demo guest, protects it, and keeps running; the commands it
//! suggests then show the VM Protected.

mod common;

use std::process::{Command, Stdio};

fn lifeboat(home: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    c.arg("--home").arg(home).args(["--accel", "tcg"]);
    c.env_remove("LIFEBOAT_PASSPHRASE")
        .env_remove("LIFEBOAT_TOKEN");
    c
}

/// Stops `up` and the demo VM however the test ends.
struct Cleanup(std::path::PathBuf, std::process::Child);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.1.kill();
        let _ = self.1.wait();
        let _ = lifeboat(&self.0).args(["vm", "kill", "demo"]).output();
    }
}

#[test]
fn up_protects_the_demo_guest_and_keeps_running() {
    let tmp = tempfile::Builder::new()
        .prefix("lbu")
        .tempdir_in("/tmp")
        .unwrap();
    let home = tmp.path().to_path_buf();
    let mut child = lifeboat(&home)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _cleanup = Cleanup(home.clone(), child);
    let seen = common::up_until_running(stdout);
    let api = seen
        .lines()
        .find_map(|l| l.trim().strip_prefix("API:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no API line: {seen}"))
        .to_string();
    assert!(seen.contains("demo is Protected: recovery point"), "{seen}");
    assert!(seen.contains("vault.passphrase"), "{seen}");
    let out = lifeboat(&home)
        .args(["--json", "status", "--server", &api])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["protected_vms"], 1, "{status}");
    assert_eq!(status["protections"][0]["vm"], "demo", "{status}");
    assert!(
        status["protections"][0]["last_point"].is_string(),
        "{status}"
    );
    // The vault it made opens with the passphrase it kept, and holds the point.
    let pass = std::fs::read_to_string(home.join("up/vault.passphrase")).unwrap();
    let vault = format!("file://{}", home.join("vault").display());
    let out = lifeboat(&home)
        .args(["--json", "vault", "--vault", &vault, "list"])
        .env("LIFEBOAT_PASSPHRASE", pass.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let points: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!points.as_array().unwrap().is_empty(), "{points}");
}
