//! The README's run command, end to end: `lifeboat demo` boots the guest, cuts, writes,
//! cuts again and proves the replica equals the disk. Run through the real binary.

use std::process::Command;

fn lifeboat(home: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    c.arg("--home").arg(home).args(["--accel", "tcg"]);
    c
}

/// Kills the demo VM however the test ends, so no QEMU outlives it.
struct KillOnDrop(std::path::PathBuf);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = lifeboat(&self.0).args(["vm", "kill", "demo"]).output();
    }
}

#[test]
fn demo_proves_the_replica_and_leaves_a_usable_system() {
    let tmp = tempfile::Builder::new()
        .prefix("lb")
        .tempdir_in("/tmp")
        .unwrap();
    let _guard = KillOnDrop(tmp.path().to_path_buf());
    let out = lifeboat(tmp.path()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("bit for bit"), "{stdout}");
    assert!(stdout.contains("Incremental cut of demo"), "{stdout}");
    assert!(stdout.contains("hello from the lifeboat demo"), "{stdout}");

    // The commands the demo suggests work on what it left running.
    let list = lifeboat(tmp.path())
        .args(["--json", "vm", "list"])
        .output()
        .unwrap();
    let vms: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(vms[0]["name"], "demo");
    assert_eq!(vms[0]["state"]["state"], "running");
    let status = lifeboat(tmp.path())
        .args(["--json", "cbt", "status", "demo"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["state"], "tracking");

    // Running it again replaces the old demo VM instead of failing.
    let again = lifeboat(tmp.path())
        .args(["demo", "--stop"])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let state = lifeboat(tmp.path())
        .args(["--json", "vm", "status", "demo"])
        .output()
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["state"]["state"], "stopped");
}
