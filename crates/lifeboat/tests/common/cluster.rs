//! A protection cluster for tests: a server, agents alpha and beta enrolled, a folder
//! vault, and the test guest booted on a host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_hypervisor::{QemuConfig, QemuDriver, VmName};
use lifeboat_testkit::{boot_timeout, SerialConsole};
use serde_json::Value;

use super::{agent_command, client, spawn_agent, start_server_with, Agent, Server};

pub const PASSPHRASE: &str = "correct horse battery staple";

pub fn lifeboat(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    c.arg("--home")
        .arg(home)
        .args(["--accel", "tcg"])
        .env("LIFEBOAT_PASSPHRASE", PASSPHRASE);
    c
}

pub fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{c:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Kills the guest however the test ends, so no QEMU outlives it.
pub struct KillVm(pub PathBuf, pub &'static str);
impl Drop for KillVm {
    fn drop(&mut self) {
        let _ = lifeboat(&self.0).args(["vm", "kill", self.1]).output();
    }
}

/// Defines and boots the test guest as `vm` on the host whose home is `home`, with
/// `extra` qcow2 disks after its own (vdb, vdc…).
pub async fn boot_guest(
    home: &Path,
    vm: &'static str,
    extra: &[PathBuf],
) -> (KillVm, SerialConsole) {
    boot_guest_with(home, vm, extra, None).await
}

/// `boot_guest` with a NIC whose guest port 80 (busybox httpd serving /data) answers on
/// 127.0.0.1:`http_port` when given.
pub async fn boot_guest_with(
    home: &Path,
    vm: &'static str,
    extra: &[PathBuf],
    http_port: Option<u16>,
) -> (KillVm, SerialConsole) {
    std::fs::create_dir_all(home).unwrap();
    let disk = lifeboat_testkit::guest_disk_copy(home, &format!("{vm}.qcow2")).unwrap();
    let spec = home.join(format!("{vm}.toml"));
    let mut text = format!(
        "name = \"{vm}\"\nmemory_mib = 256\nvcpus = 1\n[[disks]]\nname = \"vda\"\npath = \"{}\"\nformat = \"qcow2\"\n",
        disk.display()
    );
    for (i, d) in extra.iter().enumerate() {
        let name = format!("vd{}", (b'b' + i as u8) as char);
        text += &format!(
            "[[disks]]\nname = \"{name}\"\npath = \"{}\"\nformat = \"qcow2\"\n",
            d.display()
        );
    }
    if let Some(port) = http_port {
        text += &format!(
            "[[nics]]\nmac = \"52:54:00:12:34:56\"\nnetwork = \"user\"\nhost_forwards = [{{ host_port = {port}, guest_port = 80 }}]\n"
        );
    }
    std::fs::write(&spec, text).unwrap();
    let mut c = lifeboat(home);
    c.args(["vm", "define"]).arg(&spec);
    run_ok(c);
    let mut c = lifeboat(home);
    c.args(["vm", "start", vm]);
    run_ok(c);
    let guard = KillVm(home.to_path_buf(), vm);
    let driver = QemuDriver::new(QemuConfig::new(home)).unwrap();
    let socket = driver.serial_socket(&VmName::new(vm).unwrap()).unwrap();
    let mut console = SerialConsole::connect(&socket, Duration::from_secs(60))
        .await
        .unwrap();
    console.wait_ready(boot_timeout()).await.unwrap();
    (guard, console)
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub server: Server,
    pub alpha: Agent,
    pub beta: Agent,
    pub vault: String,
}

impl Cluster {
    pub fn home(&self, who: &str) -> PathBuf {
        self.tmp.path().join(who)
    }

    /// Stops the server and starts it again on its home (and `database`).
    pub fn restart_server(&mut self, database: Option<&str>) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
        self.server = super::start_server(&self.home("server"), database);
    }

    /// Asserts that no file of the server's home (its SQLite database with its journal,
    /// tokens, identity) holds a secret of the vault (`vault_secrets`): the server keeps
    /// only keys sealed to agents (docs/security.md).
    pub fn assert_server_opens_no_vault(&self) {
        let found = self.server_files_holding(&self.vault_secrets());
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    /// What opens the vault's points, each named: the passphrase, the master key, and
    /// the key of every VM that has points (a format-2 vault's VM key opens that VM's
    /// points, so one in the server's files is as bad as the master key), each key raw,
    /// in base64 and in hex. Costs one passphrase unlock: the rest opens with a key file.
    pub fn vault_secrets(&self) -> Vec<(String, Vec<u8>)> {
        let dir = self.tmp.path().join("exported-vault-keys");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let master = dir.join("master.json");
        let vault = |key_file: Option<&Path>| {
            let mut c = lifeboat(&self.home("client"));
            c.args(["--json", "vault", "--vault", &self.vault]);
            if let Some(k) = key_file {
                c.arg("--key-file").arg(k);
            }
            c
        };
        let mut c = vault(None);
        c.args(["key", "export"]).arg(&master);
        run_ok(c);
        let mut secrets = vec![("the passphrase".to_string(), PASSPHRASE.as_bytes().to_vec())];
        secrets.extend(encodings(
            "the master key",
            &read_key(&master, "master_key"),
        ));
        let mut c = vault(Some(&master));
        c.arg("list");
        let points: Value = serde_json::from_str(&run_ok(c)).unwrap();
        let mut names: Vec<&str> = points
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        names.sort();
        names.dedup();
        for (i, name) in names.iter().enumerate() {
            let file = dir.join(format!("vm-{i}.json"));
            let mut c = vault(Some(&master));
            c.args(["key", "export", "--vm", name]).arg(&file);
            let out = c.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && err.contains("only a format-2 vault has a key per VM") {
                break; // One key for every VM: the master key's sub-keys, covered above.
            }
            assert!(out.status.success(), "key export --vm {name}: {err}");
            secrets.extend(encodings(
                &format!("the key of {name}"),
                &read_key(&file, "scope_key"),
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
        secrets
    }

    /// The files of the server's home that hold one of `secrets`, as `FILE holds WHAT`.
    pub fn server_files_holding(&self, secrets: &[(String, Vec<u8>)]) -> Vec<String> {
        let mut found = Vec::new();
        let mut files = 0;
        let home = self.home("server");
        for entry in super::tree(&home).iter().map(|rel| home.join(rel)) {
            if !entry.is_file() {
                continue;
            }
            let bytes = std::fs::read(&entry).unwrap();
            files += 1;
            for (what, needle) in secrets {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(format!("{} holds {what}", entry.display()));
                }
            }
        }
        assert!(files > 0, "no server files to look at");
        found
    }

    /// A client command with the server's token and the vault passphrase.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        std::env::set_var("LIFEBOAT_PASSPHRASE", PASSPHRASE);
        client(&self.server, Some(&self.server.token), args)
    }

    /// `lifeboat protect web` to this cluster's vault, recoverable on beta, every 5 s;
    /// `extra` adds options (`--wait`…). Returns (success, stdout, stderr).
    pub fn protect_web(&self, extra: &[&str]) -> (bool, String, String) {
        self.protect("web", extra)
    }

    /// `lifeboat protect VM`, as `protect_web` does for web.
    pub fn protect(&self, vm: &str, extra: &[&str]) -> (bool, String, String) {
        let mut args = vec![
            "protect",
            vm,
            "--vault",
            &self.vault,
            "--recovery-host",
            "beta",
            "--policy",
            "frequent",
        ];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    /// The only protection's view (`status`).
    pub fn protection(&self) -> Value {
        self.json(&["status"])["protections"][0].clone()
    }

    /// Polls the protection until `pred` holds; panics with the last view after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let p = self.protection();
            if pred(&p) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}; last: {p:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.cli(&all);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

/// However a test ends, no QEMU of its hosts outlives it: recovered VMs included, which
/// no `KillVm` guards.
impl Drop for Cluster {
    fn drop(&mut self) {
        // The server and the agents first: left running, one could start a VM again
        // (an operation's undo) after its QEMU was killed below.
        for child in [
            &mut self.server.child,
            &mut self.alpha.child,
            &mut self.beta.child,
        ] {
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in ["alpha", "beta"] {
            let vms = self.home(host).join("vms");
            for dir in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
                let pid = std::fs::read_to_string(dir.path().join("qemu.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok());
                if let Some(pid) = pid {
                    // Only if it is still that VM's QEMU (pids are reused).
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let ours = String::from_utf8_lossy(&cmd).contains(&*vms.to_string_lossy());
                    if ours {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
                    }
                }
            }
        }
    }
}

/// A server (TLS when `tls`), agents alpha (with `alpha_options`) and beta, not enrolled,
/// and a vault: a folder, or `vault`.
pub fn unenrolled_cluster(
    database: Option<&str>,
    vault: Option<&str>,
    tls: bool,
    alpha_options: &[&str],
) -> Cluster {
    unenrolled_cluster_env(database, vault, tls, alpha_options, &[])
}

/// `unenrolled_cluster` whose agents get `agent_env` on top of this process's environment
/// (e.g. storage credentials of their own, unlike the server's).
pub fn unenrolled_cluster_env(
    database: Option<&str>,
    vault: Option<&str>,
    tls: bool,
    alpha_options: &[&str],
    agent_env: &[(&str, &str)],
) -> Cluster {
    unenrolled_hosts(database, vault, tls, (alpha_options, &[]), agent_env)
}

/// A server and agents alpha and beta with `options` each, not enrolled, and a vault.
fn unenrolled_hosts(
    database: Option<&str>,
    vault: Option<&str>,
    tls: bool,
    (alpha_options, beta_options): (&[&str], &[&str]),
    agent_env: &[(&str, &str)],
) -> Cluster {
    let tmp = tempfile::Builder::new()
        .prefix("lbp")
        .tempdir_in("/tmp")
        .unwrap();
    let server = start_server_with(&tmp.path().join("server"), database, tls);
    let agent = |name: &str, options: &[&str]| {
        let mut c = agent_command(&tmp.path().join(name), name, 0, options);
        c.envs(agent_env.iter().copied());
        spawn_agent(c)
    };
    let alpha = agent("alpha", alpha_options);
    let beta = agent("beta", beta_options);
    let vault = match vault {
        Some(v) => v.to_string(),
        None => format!("file://{}", tmp.path().join("vault").display()),
    };
    let mut c = lifeboat(tmp.path());
    c.args(["vault", "--vault", &vault, "init"]);
    run_ok(c);
    Cluster {
        tmp,
        server,
        alpha,
        beta,
        vault,
    }
}

/// A server (SQLite, or PostgreSQL at `database`), agents alpha and beta enrolled, and a
/// folder vault.
pub fn cluster(database: Option<&str>) -> Cluster {
    cluster_with_vault(database, None)
}

/// `cluster` with the vault at `vault` (an s3:// or az:// URL whose credentials are in this
/// process's environment, which the agents inherit) instead of a folder.
pub fn cluster_with_vault(database: Option<&str>, vault: Option<&str>) -> Cluster {
    cluster_with_agent_env(database, vault, &[])
}

/// `cluster_with_vault` whose agents get `agent_env` besides this process's environment.
pub fn cluster_with_agent_env(
    database: Option<&str>,
    vault: Option<&str>,
    agent_env: &[(&str, &str)],
) -> Cluster {
    enroll_all(unenrolled_cluster_env(
        database,
        vault,
        false,
        &[],
        agent_env,
    ))
}

/// `cluster` whose agent alpha runs with `alpha_options` (e.g. `--hypervisor libvirt`).
pub fn cluster_with_alpha(alpha_options: &[&str]) -> Cluster {
    cluster_with_hosts(alpha_options, &[])
}

/// `cluster` whose agents alpha and beta run with these options.
pub fn cluster_with_hosts(alpha_options: &[&str], beta_options: &[&str]) -> Cluster {
    enroll_all(unenrolled_hosts(
        None,
        None,
        false,
        (alpha_options, beta_options),
        &[],
    ))
}

fn enroll_all(cl: Cluster) -> Cluster {
    for a in [&cl.alpha, &cl.beta] {
        let addr = format!("127.0.0.1:{}", a.port);
        let code = a.code.clone().unwrap();
        let (ok, _, err) = super::enroll(
            &cl.server,
            Some(&cl.server.token),
            &addr,
            &code,
            Some(&a.fingerprint),
        );
        assert!(ok, "{err}");
    }
    cl
}

/// Waits until `vm` has at least `n` points; returns them.
pub fn wait_points(cl: &Cluster, vm: &str, n: usize, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let points = cl.json(&["points", vm]);
        let points = points.as_array().unwrap().clone();
        if points.len() >= n {
            return points;
        }
        assert!(
            Instant::now() < deadline,
            "{vm} has {} point(s) after {limit:?}; status: {}",
            points.len(),
            cl.json(&["status"])
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The 32-byte key in `field` of the key file at `path` (base64 there).
fn read_key(path: &Path, field: &str) -> Vec<u8> {
    use base64::Engine;
    let json: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(json[field].as_str().unwrap())
        .unwrap();
    assert_eq!(key.len(), 32, "{field} of {}", path.display());
    key
}

/// `key` as a file could hold it, each named after `what`: raw, in base64 (standard or
/// URL-safe; unpadded, so padded copies match too) and in hex (lower and upper case).
fn encodings(what: &str, key: &[u8]) -> Vec<(String, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        (what.to_string(), key.to_vec()),
        (
            format!("{what} in base64"),
            STANDARD_NO_PAD.encode(key).into_bytes(),
        ),
        (
            format!("{what} in URL-safe base64"),
            URL_SAFE_NO_PAD.encode(key).into_bytes(),
        ),
        (format!("{what} in hex"), hex.clone().into_bytes()),
        (
            format!("{what} in upper-case hex"),
            hex.to_uppercase().into_bytes(),
        ),
    ]
}
