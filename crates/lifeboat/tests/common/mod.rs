//! Shared helpers: `lifeboat agent` and `lifeboat server` as separate processes.
#![allow(dead_code)]

pub mod bridge;
pub mod cluster;
pub mod dashboard;
pub mod debian;
pub mod hostile_agent;
pub mod libvirt;
pub mod login;
pub mod moves;
pub mod site;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Agent {
    pub child: Child,
    pub port: u16,
    pub fingerprint: String,
    pub code: Option<String>,
    pub banner: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that talks to `agent` as its server would: enrolled with its code (the server
/// fingerprint made up), its certificate not checked; and the credential it got.
pub async fn enrolled_raw_client(agent: &Agent) -> (reqwest::Client, String) {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let enrolled: serde_json::Value = client
        .post(format!("https://127.0.0.1:{}/api/v1/enroll", agent.port))
        .json(&serde_json::json!({"code": agent.code.clone().unwrap(),
            "server_fingerprint": "ab".repeat(32)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let credential = enrolled["credential"].as_str().unwrap().to_string();
    (client, credential)
}

/// Starts `lifeboat agent` on a port the system picks and reads its banner.
pub fn start_agent(home: &Path, hostname: &str) -> Agent {
    start_agent_on(home, hostname, 0, &[])
}

/// `start_agent` on `port` (0: any), with `extra` agent options: an agent restarted on its
/// port keeps its address.
pub fn start_agent_on(home: &Path, hostname: &str, port: u16, extra: &[&str]) -> Agent {
    spawn_agent(agent_command(home, hostname, port, extra))
}

/// The command `start_agent_on` runs, to be changed before `spawn_agent` (limits…).
pub fn agent_command(home: &Path, hostname: &str, port: u16, extra: &[&str]) -> Command {
    let listen = format!("127.0.0.1:{port}");
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    c.args(["--home"]).arg(home).args(["--accel", "tcg"]).args([
        "agent",
        "--listen",
        &listen,
        "--hostname",
        hostname,
    ]);
    // The QEMU driver unless the test asks for another: libvirtd may answer here.
    if !extra.contains(&"--hypervisor") {
        c.args(["--hypervisor", "qemu"]);
    }
    c.args(extra);
    c
}

/// Starts an agent's command and reads its banner (TLS or `--insecure-http`).
pub fn spawn_agent(mut command: Command) -> Agent {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut port, mut fingerprint, mut code, mut banner) = (0, String::new(), None, String::new());
    let mut plain = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(addr) = line
            .strip_prefix("Listening on https://")
            .or_else(|| line.strip_prefix("Listening on http://"))
        {
            plain = line.starts_with("Listening on http://");
            port = addr.rsplit(':').next().unwrap().parse().unwrap();
        }
        if let Some(fp) = line.strip_prefix("Certificate fingerprint (SHA-256): ") {
            fingerprint = fp.to_string();
        }
        if let Some(c) = line.strip_prefix("Enrollment code (shown once): ") {
            code = Some(c.to_string());
        }
        if line.starts_with("Enroll this host")
            || line.starts_with("Enrolled by")
            || line.starts_with("Not enrolled")
        {
            break;
        }
    }
    assert!(
        port > 0 && (plain || fingerprint.len() == 64),
        "banner: {banner}"
    );
    Agent {
        child,
        port,
        fingerprint,
        code,
        banner,
    }
}

/// Sets this test's umask (and so its agents' and CLI runs') to the 022 most hosts run
/// with, under which a file made without an explicit mode is readable by everyone.
pub fn usual_umask() {
    // SAFETY: umask only swaps the process's file-mode mask; it has no memory effects.
    unsafe {
        libc::umask(0o022);
    }
}

/// Every file and directory under `dir`, relative to it, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Asserts that nothing under `home` is open to group or others (read, write or enter),
/// except the paths in `skip` (relative to `home`; say why at the call).
pub fn assert_private(home: &Path, skip: &[&str]) {
    let open: Vec<String> = lifeboat_hypervisor::private::exposed(home)
        .unwrap()
        .into_iter()
        .filter(|(p, _)| !skip.iter().any(|o| *p == home.join(o)))
        .map(|(p, mode)| format!("{} {mode:o}", p.display()))
        .collect();
    assert!(
        open.is_empty(),
        "open to group or others under {}: {open:#?}",
        home.display()
    );
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub fingerprint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `lifeboat server` (plain HTTP on loopback; state in `database`, or SQLite in
/// `home`) and reads its banner.
pub fn start_server(home: &Path, database: Option<&str>) -> Server {
    start_server_with(home, database, false)
}

/// `start_server`, serving TLS with the server's own identity when `tls`.
pub fn start_server_with(home: &Path, database: Option<&str>, tls: bool) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    cmd.arg("--home")
        .arg(home)
        .args(["server", "--listen", "127.0.0.1:0"]);
    if !tls {
        cmd.arg("--insecure-http");
    }
    // The URL holds a password: in the environment, never on the command line.
    match database {
        Some(url) => cmd.env("LIFEBOAT_DATABASE", url),
        None => cmd.env_remove("LIFEBOAT_DATABASE"),
    };
    spawn_server(cmd, home)
}

/// Starts a server's command and reads its banner; a restarted server's token (printed
/// at first start only) is read from `home` on this machine.
pub fn spawn_server(mut cmd: Command, home: &Path) -> Server {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut token, mut fingerprint, mut banner) =
        (String::new(), String::new(), String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(u) = line.strip_prefix("API on ") {
            url = u.to_string();
        }
        if let Some(fp) = line.strip_prefix("Certificate fingerprint (SHA-256): ") {
            fingerprint = fp.to_string();
        }
        if line.starts_with("API token") {
            token = line.rsplit(": ").next().unwrap().to_string();
        }
        if line == "Ready" {
            break;
        }
    }
    if token.is_empty() {
        // A restarted server printed its token at first start only.
        token = std::fs::read_to_string(home.join("server/admin.token"))
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    assert!(!url.is_empty() && !token.is_empty(), "banner: {banner}");
    Server {
        child,
        url,
        token,
        fingerprint,
    }
}

/// Runs a client command against `server` with its token; (success, stdout, stderr).
pub fn client(server: &Server, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    client_with(server, token, args, &[])
}

/// `lifeboat hosts enroll ADDRESS [--fingerprint FP]` with the code in the environment,
/// as an operator passes it (never on the command line).
pub fn enroll(
    server: &Server,
    token: Option<&str>,
    address: &str,
    code: &str,
    fingerprint: Option<&str>,
) -> (bool, String, String) {
    let mut args = vec!["hosts", "enroll", address];
    if let Some(fp) = fingerprint {
        args.extend(["--fingerprint", fp]);
    }
    client_with(server, token, &args, &[("LIFEBOAT_ENROLL_CODE", code)])
}

/// `client` with extra environment variables.
pub fn client_with(
    server: &Server,
    token: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    c.envs(env.iter().copied());
    c.args(args)
        .env("LIFEBOAT_SERVER", &server.url)
        .env("LIFEBOAT_HOME", "/nonexistent-lifeboat-home");
    match token {
        Some(t) => c.env("LIFEBOAT_TOKEN", t),
        None => c.env_remove("LIFEBOAT_TOKEN"),
    };
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Reads `lifeboat up`'s stdout until its "Running" line (the first build of the guest
/// comes first: 10 minutes at most); everything it printed until then.
pub fn up_until_running(stdout: std::process::ChildStdout) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut seen = String::new();
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(600))
            .unwrap_or_else(|_| panic!("`up` did not get to Running; it printed:\n{seen}"));
        seen += &line;
        seen.push('\n');
        if line == "Running" {
            return seen;
        }
    }
}
