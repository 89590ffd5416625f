//! The files the previous release left behind, opened by this build (issue 16, "Upgrades").
//!
//! `scripts/upgrade-fixture REV` built revision REV, ran a server, an agent and a folder
//! vault with it (VM `web` protected, two points of different content) and packed the
//! server's home (its SQLite database), the agent's home and the vault with a manifest
//! into `tests/fixtures/upgrade/REV.tar.zst`. Here only this build's binary opens them:
//! the server starts on the old database (migrations apply; host, protection and points
//! are there as before), the agent starts on the old home (same identity, still enrolled:
//! the server reaches it with the pinned certificate and the old credential, and the home
//! now carries its state version), every point restores bit for bit from the old vault,
//! and the old protection goes on: with the VM started again (it has no OS: SeaBIOS
//! idles), the new agent adds a point to the old vault.
//!
//! Lifeboat has no tagged release yet: the fixture comes from 06b6a0b, the state before
//! the upgrade work of issue 16. When v0.1.0 is tagged, it is made again from the tag.
//!
//! An upgrade in place changes the binary, nothing else: the database, the agent's
//! records and the VM's spec hold absolute paths (the vault's URL, the VM's disk), and
//! the server knows the agent by `address:port`. So the files go back where the old
//! release wrote them and the agent listens where it listened, as on the upgraded host:
//! inside a mount and network namespace of this test's own (`unshare`), where the
//! fixture's root is a bind mount of the unpacked copy on a private `/tmp` and loopback
//! is private, so no path or port of the machine is used (the server's port is picked
//! free). The vault itself holds no path: it is also read from where it was unpacked.

mod common;

use common::cluster::run_ok;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The release whose files are opened (`scripts/upgrade-fixture 06b6a0b`).
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/upgrade/06b6a0b.tar.zst"
);

/// A mount and network namespace where the fixture's root is the unpacked copy: a
/// process that holds them, entered by every command of the test.
struct Place {
    holder: Child,
    /// The unpacked copy, as this process sees it.
    real: PathBuf,
    /// The fixture's root, as the commands inside see it.
    root: PathBuf,
}

impl Place {
    fn new(real: &Path, root: &Path) -> Place {
        // A tmpfs over /tmp first: the mount point is made there, not on the machine's /tmp.
        let script = r#"set -e
ip link set lo up
mount -t tmpfs -o mode=1777 lifeboat-upgrade /tmp
mkdir -p "$1"
mount --bind "$0" "$1"
echo ready
exec sleep 3600"#;
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ])
            .arg(script)
            .arg(real)
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux)");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "making the namespaces (needs root: unshare, mount)"
        );
        Place {
            holder,
            real: real.to_path_buf(),
            root: root.to_path_buf(),
        }
    }

    /// `lifeboat ARGS…` inside.
    fn lifeboat(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "-n", "--"])
            .arg(env!("CARGO_BIN_EXE_lifeboat"));
        c
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // A QEMU the new agent started (a cut of the stopped VM) ends with the test.
        let pid_file = self.real.join("alpha/vms/web/qemu.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let vms = self.root.join("alpha/vms");
            if String::from_utf8_lossy(&cmd).contains(&*vms.to_string_lossy()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A daemon that is killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `c` and reads its stdout until a line `done` accepts; the lines read.
fn start_daemon(mut c: Command, done: impl Fn(&str) -> bool) -> (Daemon, Vec<String>) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let daemon = Daemon(child);
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let end = done(&line);
        lines.push(line);
        if end {
            return (daemon, lines);
        }
    }
    panic!("{c:?} ended before its banner: {lines:#?}");
}

fn sha256(path: &Path) -> String {
    let out = run_ok({
        let mut c = Command::new("sha256sum");
        c.arg(path);
        c
    });
    out.split_whitespace().next().unwrap().to_string()
}

/// Polls `probe` until it returns something; panics naming `what` after `limit`.
fn wait_until<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_previous_releases_database_agent_home_and_vault_open_with_this_build() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let real = tmp.path().join("fixture");
    std::fs::create_dir(&real).unwrap();
    run_ok({
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"zstd -dc "$0" | tar -x -C "$1""#)
            .arg(FIXTURE)
            .arg(&real);
        c
    });
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(real.join("manifest.json")).unwrap()).unwrap();
    let root = PathBuf::from(manifest["root"].as_str().unwrap());
    let vm = manifest["vm"].as_str().unwrap();
    let host = &manifest["host"];
    let points = manifest["points"].as_array().unwrap();
    let listed: Vec<&str> = points
        .iter()
        .filter(|p| p["listed_by_server"] == true)
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert!(listed.len() >= 2, "the fixture lacks points: {manifest:#}");
    let place = Place::new(&real, &root);

    // The server, on the old database: migrations apply, and what it knew is there.
    let mut server = place.lifeboat();
    server
        .arg("--home")
        .arg(root.join("server"))
        .args(["server", "--listen", "127.0.0.1:0", "--insecure-http"])
        .env_remove("LIFEBOAT_DATABASE");
    let (_server, banner) = start_daemon(server, |l| l == "Ready");
    let url = banner
        .iter()
        .find_map(|l| l.strip_prefix("API on "))
        .unwrap_or_else(|| panic!("no API address in {banner:#?}"))
        .to_string();
    let token = std::fs::read_to_string(real.join("server/server/admin.token")).unwrap();
    let client = |args: &[&str]| -> Value {
        let mut c = place.lifeboat();
        c.arg("--json")
            .args(args)
            .env("LIFEBOAT_SERVER", &url)
            .env("LIFEBOAT_TOKEN", token.trim())
            .env("LIFEBOAT_HOME", "/nonexistent-lifeboat-home");
        serde_json::from_str(&run_ok(c)).unwrap()
    };
    let hosts = client(&["hosts", "list"]);
    let hosts = hosts.as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:#?}");
    for field in ["hostname", "address", "fingerprint"] {
        assert_eq!(hosts[0][field], host[field], "{field}");
    }
    let status = client(&["status"]);
    let protection = &status["protections"][0];
    assert_eq!(protection["id"], manifest["protection"]["id"], "{status:#}");
    assert_eq!(protection["vm"], vm);
    let server_points = || -> Vec<String> {
        client(&["points", vm])
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["point"].as_str().unwrap().to_string())
            .collect()
    };
    let mut before = server_points();
    before.sort();
    let mut expected: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(before, expected, "the points the server lists");

    // The host came back with the new binary: its VM is started again (QEMU did not
    // outlive the fixture), and a `vm` command only reads the home's state version.
    let mut start = place.lifeboat();
    start
        .arg("--home")
        .arg(root.join("alpha"))
        .args(["--accel", "tcg", "vm", "start", vm]);
    run_ok(start);
    let marker = real.join("alpha/agent/state-version");
    assert!(!marker.exists(), "the old release wrote no state version");

    // The agent, on the old home, where it listened.
    let mut agent = place.lifeboat();
    agent
        .arg("--home")
        .arg(root.join("alpha"))
        .args(["--accel", "tcg", "agent", "--listen"])
        .arg(host["address"].as_str().unwrap())
        .args(["--hostname", "alpha", "--hypervisor", "qemu"]);
    let (_agent, banner) = start_daemon(agent, |l| {
        l.starts_with("Enroll this host")
            || l.starts_with("Enrolled by")
            || l.starts_with("Not enrolled")
    });
    let fingerprint = format!(
        "Certificate fingerprint (SHA-256): {}",
        host["fingerprint"].as_str().unwrap()
    );
    assert!(banner.contains(&fingerprint), "same identity: {banner:#?}");
    assert!(
        banner.last().unwrap().starts_with("Enrolled by the server"),
        "still enrolled: {banner:#?}"
    );
    let version = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(
        version,
        format!(
            "{}\nwritten by Lifeboat {}\n",
            lifeboat_agent::state_version::FORMAT,
            lifeboat_agent::VERSION
        )
    );
    // The server still trusts it: its inventory needs the pinned certificate and the
    // credential the old release's enrollment gave.
    let vms = client(&["vms", "list"]);
    assert_eq!(vms["unreachable"], serde_json::json!([]), "{vms:#}");
    assert!(
        vms["vms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["vm"] == vm && v["host"] == "alpha"),
        "{vms:#}"
    );

    // Every point, restored by this build from the old vault, bit for bit.
    let vault = format!("file://{}", real.join("vault").display());
    let lifeboat = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
        c.env(
            "LIFEBOAT_PASSPHRASE",
            manifest["passphrase"].as_str().unwrap(),
        )
        .args(["vault", "--vault", &vault]);
        c
    };
    for p in points {
        let id = p["id"].as_str().unwrap();
        let out = tmp.path().join(format!("{id}.raw"));
        let mut c = lifeboat();
        c.arg("restore").arg(id).arg(&out);
        run_ok(c);
        assert_eq!(
            std::fs::metadata(&out).unwrap().len(),
            manifest["disk_bytes"].as_u64().unwrap()
        );
        assert_eq!(sha256(&out), p["sha256"].as_str().unwrap(), "point {id}");
        std::fs::remove_file(&out).unwrap();
    }
    let mut c = lifeboat();
    c.arg("verify");
    run_ok(c);

    // And the protection goes on: the new agent adds a point to the old vault, built
    // on the old ones, with the disk's content.
    let new_point = wait_until("a point by the new agent", Duration::from_secs(300), || {
        server_points().into_iter().find(|p| !before.contains(p))
    });
    let out = tmp.path().join("new.raw");
    let mut c = lifeboat();
    c.arg("restore").arg(&new_point).arg(&out);
    run_ok(c);
    let last = points
        .iter()
        .max_by_key(|p| p["created"].as_str().unwrap())
        .unwrap();
    assert_eq!(sha256(&out), last["sha256"].as_str().unwrap());
}

/// The other way round: a home a newer Lifeboat wrote stops this build's agent and `vm`
/// commands before they change anything (not even the modes an older agent tightens).
#[test]
fn a_home_written_by_a_newer_release_stops_the_agent_and_is_left_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let journal = home.join("agent/syncs/s1.json");
    std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
    std::fs::write(&journal, b"{}").unwrap();
    let newer = format!(
        "{}\nwritten by Lifeboat 9.9.9\n",
        lifeboat_agent::state_version::FORMAT + 1
    );
    std::fs::write(home.join("agent/state-version"), &newer).unwrap();
    for (path, mode) in [(&home, 0o755), (&journal, 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let before = lifeboat_hypervisor::private::exposed(&home).unwrap();

    for args in [
        &["agent", "--listen", "127.0.0.1:0", "--hypervisor", "qemu"][..],
        &["vm", "list"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("this home was written by Lifeboat 9.9.9")
                && err.contains("run Lifeboat 9.9.9 or newer, or restore the home"),
            "{args:?}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(home.join("agent/state-version")).unwrap(),
            newer
        );
        assert_eq!(
            lifeboat_hypervisor::private::exposed(&home).unwrap(),
            before
        );
        assert!(
            !home.join("vms").exists(),
            "{args:?} made the driver's folder"
        );
    }
}
