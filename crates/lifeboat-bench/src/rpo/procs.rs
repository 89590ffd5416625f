//! The bench's Lifeboat processes, all the release `lifeboat` binary: the server and the
//! agent as long-running children whose startup banners are parsed the way
//! crates/lifeboat/tests/common/mod.rs does, and one-shot client commands. Also the
//! agent's CPU time and peak RSS from /proc.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// What /proc says of a process: one reader, shared with the tests.
pub use lifeboat_testkit::{cpu_seconds, status_kb};

/// Passphrase of the bench's throwaway vault (`LIFEBOAT_PASSPHRASE`).
pub const PASSPHRASE: &str = "lifeboat-bench rpo passphrase";
/// A server or agent that prints no complete banner within this is taken as broken.
const BANNER_TIMEOUT: Duration = Duration::from_secs(120);

/// How to run `lifeboat`: the binary, and the server to talk to once there is one.
#[derive(Clone)]
pub struct Lifeboat {
    pub bin: PathBuf,
    /// `LIFEBOAT_HOME` of client commands: a directory of the bench's own, so that a
    /// `/var/lib/lifeboat` left by `lifeboat up` on this machine is never read.
    pub client_home: PathBuf,
    /// (URL, API token) once the server is up.
    pub server: Option<(String, String)>,
}

impl Lifeboat {
    /// `lifeboat --home HOME --accel tcg …`: host-side commands (vault, vm, agent).
    /// TCG because KVM on the bench machines does not boot guests, and `auto` would
    /// spend 10 s finding that out.
    pub fn on_home(&self, home: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--home")
            .arg(home)
            .args(["--accel", "tcg"])
            .env("LIFEBOAT_PASSPHRASE", PASSPHRASE)
            .stdin(Stdio::null());
        c
    }

    /// A client command against the bench's server, with its token.
    pub fn client(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.args(args)
            .env("LIFEBOAT_HOME", &self.client_home)
            .env("LIFEBOAT_PASSPHRASE", PASSPHRASE)
            .env_remove("LIFEBOAT_SERVER_FINGERPRINT")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some((url, token)) = &self.server {
            c.env("LIFEBOAT_SERVER", url).env("LIFEBOAT_TOKEN", token);
        }
        c
    }

    /// Enrolls the agent at `address` (the code goes in the environment, as an operator's
    /// would, never on the command line).
    pub async fn enroll(&self, address: &str, code: &str, fingerprint: &str) -> Result<String> {
        let args = ["hosts", "enroll", address, "--fingerprint", fingerprint];
        let mut c = self.client(&args);
        c.env("LIFEBOAT_ENROLL_CODE", code);
        self.run_client(c, &args).await
    }

    /// Runs a client command; its stdout, or an error with both outputs.
    pub async fn client_ok(&self, args: &[&str]) -> Result<String> {
        self.run_client(self.client(args), args).await
    }

    async fn run_client(&self, mut c: tokio::process::Command, args: &[&str]) -> Result<String> {
        let out = c
            .output()
            .await
            .with_context(|| format!("run {} {args:?}", self.bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "`lifeboat {}` failed ({}):\n{stdout}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// `lifeboat --json ARGS…`, parsed.
    pub async fn client_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.client_ok(&all).await?;
        serde_json::from_str(&out).with_context(|| format!("`lifeboat {}`: {out}", all.join(" ")))
    }
}

/// Runs a short host-side command to its end; its stdout, or an error with both outputs.
pub fn run_ok(mut cmd: Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("run {:?}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// A long-running `lifeboat server` or `lifeboat agent`, killed on drop.
pub struct Daemon {
    pub child: Child,
    /// Where its stdout (after the banner) and stderr go.
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its log, when the process has exited: the numbers of a
    /// run whose server or agent died would mean nothing.
    pub fn check_alive(&mut self, what: &str) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{what} exited ({status}); the end of {}:\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGKILL: the bench throws the whole cluster away, nothing to shut down cleanly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` with stdout piped and stderr to `log`, and returns its banner lines up
/// to the one `last` accepts. A thread keeps copying its stdout to the log afterwards,
/// so a late `println!` in the daemon never meets a closed pipe.
fn spawn_with_banner(
    mut cmd: Command,
    log: &Path,
    what: &str,
    last: fn(&str) -> bool,
) -> Result<(Daemon, Vec<String>)> {
    let err = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut out_log = err.try_clone()?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("start {what}: {cmd:?}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let daemon = Daemon {
        child,
        log: log.to_path_buf(),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // After the banner nobody listens; the log keeps whatever else it prints.
            let _ = writeln!(out_log, "{line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + BANNER_TIMEOUT;
    let mut banner = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = last(&line);
                banner.push(line);
                if done {
                    return Ok((daemon, banner));
                }
            }
            Err(e) => {
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no banner within {BANNER_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => "it exited".into(),
                };
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "{what}: {why}; banner so far:\n{}\nlog {}:\n{tail}",
                    banner.join("\n"),
                    log.display()
                );
            }
        }
    }
}

pub struct Server {
    pub daemon: Daemon,
    pub url: String,
    pub token: String,
}

/// `lifeboat --home HOME server --listen 127.0.0.1:0 --insecure-http`: plain HTTP on
/// loopback, SQLite in HOME, a port the system picks.
pub fn start_server(lb: &Lifeboat, home: &Path, log: &Path) -> Result<Server> {
    start_server_on(lb, home, log, None)
}

/// `start_server` on the database at `database` (given in `LIFEBOAT_DATABASE`, where the
/// process list does not show a password) instead of SQLite in `home`.
pub fn start_server_on(
    lb: &Lifeboat,
    home: &Path,
    log: &Path,
    database: Option<&str>,
) -> Result<Server> {
    let mut cmd = lb.on_home(home);
    cmd.args(["server", "--listen", "127.0.0.1:0", "--insecure-http"]);
    if let Some(url) = database {
        cmd.env("LIFEBOAT_DATABASE", url);
    }
    let (daemon, banner) = spawn_with_banner(cmd, log, "lifeboat server", |l| l == "Ready")?;
    let mut url = None;
    let mut token = None;
    for line in &banner {
        if let Some(u) = line.strip_prefix("API on ") {
            url = Some(u.to_string());
        }
        if line.starts_with("API token") {
            token = line.rsplit(": ").next().map(str::to_string);
        }
    }
    match (url, token) {
        (Some(url), Some(token)) => Ok(Server { daemon, url, token }),
        _ => Err(anyhow!(
            "lifeboat server: no `API on` or `API token` line in its banner:\n{}",
            banner.join("\n")
        )),
    }
}

pub struct Agent {
    pub daemon: Daemon,
    /// `127.0.0.1:PORT`, for `hosts enroll`.
    pub address: String,
    pub fingerprint: String,
    pub code: String,
}

/// `lifeboat --home HOME --accel tcg agent --hypervisor qemu --listen 127.0.0.1:0
/// --hostname NAME`, fresh,
/// so its banner carries a one-time enrollment code.
pub fn start_agent(lb: &Lifeboat, home: &Path, hostname: &str, log: &Path) -> Result<Agent> {
    let mut cmd = lb.on_home(home);
    cmd.args(["agent", "--hypervisor", "qemu", "--listen", "127.0.0.1:0"])
        .args(["--hostname", hostname]);
    let (daemon, banner) = spawn_with_banner(cmd, log, "lifeboat agent", |l| {
        // A fresh agent ends with "Enroll this host…"; the others mean it was not fresh.
        l.starts_with("Enroll this host")
            || l.starts_with("Enrolled by")
            || l.starts_with("Not enrolled")
    })?;
    let (mut address, mut fingerprint, mut code) = (None, None, None);
    for line in &banner {
        if let Some(a) = line.strip_prefix("Listening on https://") {
            address = Some(a.to_string());
        }
        if let Some(f) = line.strip_prefix("Certificate fingerprint (SHA-256): ") {
            fingerprint = Some(f.to_string());
        }
        if let Some(c) = line.strip_prefix("Enrollment code (shown once): ") {
            code = Some(c.to_string());
        }
    }
    match (address, fingerprint, code) {
        (Some(address), Some(fingerprint), Some(code)) => Ok(Agent {
            daemon,
            address,
            fingerprint,
            code,
        }),
        _ => Err(anyhow!(
            "lifeboat agent: its banner lacks the address, fingerprint or enrollment code:\n{}",
            banner.join("\n")
        )),
    }
}
