//! A real BIND 9 (`named` from Debian's `bind9` package) serving test zones, for the DNS
//! update tests: each [`Bind9`] runs its own `named` in the foreground in a temporary
//! directory, on 127.0.0.1 at a free port (tests run in parallel), with a TSIG key made
//! by `tsig-keygen` — the same file an operator would hand Lifeboat. It is killed on drop,
//! and also when the test process dies (`PR_SET_PDEATHSIG`), so a timed-out test leaves
//! no `named` behind.
//!
//! Install with `apt-get install bind9 bind9-dnsutils` (`need_test_tools` in
//! scripts/lib.sh does).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::{sleep, Instant};

use crate::free_tcp_port;

/// How long `named` may take to load its zones and listen (it takes ~0.1 s idle; a busy
/// 2-core machine running guests can be much slower).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports tried when another process takes the free port first.
const PORT_TRIES: u32 = 3;

/// One zone the server is primary for.
#[derive(Clone, Debug)]
pub struct Bind9Zone {
    /// Without the trailing dot, e.g. `lab.test`.
    pub name: String,
    /// Zone-file lines after the SOA and NS, e.g. `web 30 IN A 10.1.0.5`.
    pub records: Vec<String>,
    /// Whether the zone takes updates signed with the server's key (`allow-update`).
    pub updatable: bool,
}

impl Bind9Zone {
    /// An updatable zone holding only its SOA, NS and the name server's A record.
    pub fn new(name: &str) -> Bind9Zone {
        Bind9Zone {
            name: name.trim_end_matches('.').to_string(),
            records: Vec::new(),
            updatable: true,
        }
    }

    /// `lab.test` with `web` at 10.1.0.5, TTL 30: the VM the failover tests move.
    pub fn lab_test() -> Bind9Zone {
        Bind9Zone::new("lab.test").record("web 30 IN A 10.1.0.5")
    }

    pub fn record(mut self, line: &str) -> Bind9Zone {
        self.records.push(line.to_string());
        self
    }

    /// A zone that refuses every update (no `allow-update`).
    pub fn read_only(mut self) -> Bind9Zone {
        self.updatable = false;
        self
    }

    fn zone_file(&self) -> String {
        let z = &self.name;
        let mut text = format!(
            "$TTL 300\n\
             @ IN SOA ns.{z}. hostmaster.{z}. ( 1 3600 600 86400 300 )\n\
             @ IN NS ns.{z}.\n\
             ns IN A 127.0.0.1\n"
        );
        for line in &self.records {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// A running `named`.
pub struct Bind9 {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Where it runs and listens: the machine's loopback, or a lab site's address.
    netns: crate::lab::Netns,
    listen: Ipv4Addr,
    port: u16,
    key_text: String,
}

impl Bind9 {
    /// The name of the key `tsig-keygen` makes for each server.
    pub const KEY_NAME: &'static str = "lifeboat-update";

    /// Starts `named` serving `zones` on 127.0.0.1 at a free port, and returns once it
    /// answers.
    pub async fn start(zones: &[Bind9Zone]) -> anyhow::Result<Bind9> {
        let mut server = Self::prepare(zones, crate::lab::Netns::host(), Ipv4Addr::LOCALHOST)?;
        for _ in 0..PORT_TRIES {
            server.port = free_tcp_port();
            match server.configure_and_start(zones).await {
                Ok(()) => return Ok(server),
                // Another test's server (or anything else) bound it between our look and
                // named's bind: take another.
                Err(Started::PortTaken) => server.kill(),
                Err(Started::Failed(e)) => return Err(e),
            }
        }
        bail!("named found its port taken {PORT_TRIES} times in a row")
    }

    /// Starts `named` serving `zones` inside `netns` (a lab site) on `listen`, port 53,
    /// as a site's DNS server is reached; returns once it answers.
    pub async fn start_in(
        netns: crate::lab::Netns,
        listen: Ipv4Addr,
        zones: &[Bind9Zone],
    ) -> anyhow::Result<Bind9> {
        let mut server = Self::prepare(zones, netns, listen)?;
        server.port = 53;
        match server.configure_and_start(zones).await {
            Ok(()) => Ok(server),
            Err(Started::PortTaken) => bail!("port 53 on {listen} is taken in that namespace"),
            Err(Started::Failed(e)) => Err(e),
        }
    }

    async fn configure_and_start(&mut self, zones: &[Bind9Zone]) -> Result<(), Started> {
        let conf = named_conf(self.dir.path(), self.listen, self.port, zones);
        std::fs::write(self.dir.path().join("named.conf"), conf)
            .map_err(|e| Started::Failed(e.into()))?;
        self.spawn_and_wait().await
    }

    /// The key, the zone files and a server not started yet.
    fn prepare(
        zones: &[Bind9Zone],
        netns: crate::lab::Netns,
        listen: Ipv4Addr,
    ) -> anyhow::Result<Bind9> {
        for tool in ["named", "tsig-keygen", "dig"] {
            if which(tool).is_none() {
                bail!("{tool} is not installed: apt-get install bind9 bind9-dnsutils");
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-bind-")
            .tempdir()?;
        let key = Command::new(which("tsig-keygen").expect("checked above"))
            .args(["-a", "hmac-sha256", Self::KEY_NAME])
            .output()
            .context("running tsig-keygen")?;
        if !key.status.success() {
            bail!(
                "tsig-keygen failed: {}",
                String::from_utf8_lossy(&key.stderr)
            );
        }
        let key_text = String::from_utf8(key.stdout).context("tsig-keygen output")?;
        std::fs::write(dir.path().join("update.key"), &key_text)?;
        for zone in zones {
            std::fs::write(
                dir.path().join(format!("{}.db", zone.name)),
                zone.zone_file(),
            )?;
        }

        Ok(Bind9 {
            child: None,
            dir,
            netns,
            listen,
            port: 0,
            key_text,
        })
    }

    /// Where it listens (TCP and UDP).
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((self.listen, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The key file as `tsig-keygen` wrote it: `key "lifeboat-update" { algorithm
    /// hmac-sha256; secret "..."; };`.
    pub fn key_file_text(&self) -> &str {
        &self.key_text
    }

    /// What `named` printed so far (its log goes to stderr with `-g`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// Asks with `dig +short` — a client independent of Lifeboat's — for `name`'s records of
    /// `rtype` (`A`, `AAAA`), one per line as dig prints them.
    pub fn dig(&self, name: &str, rtype: &str) -> anyhow::Result<Vec<String>> {
        let out = self
            .netns
            .command("dig")
            .arg(format!("@{}", self.listen))
            .args(["-p", &self.port.to_string()])
            .args(["+short", "+norecurse", "+tries=1", "+time=5", name, rtype])
            .output()
            .context("running dig")?;
        if !out.status.success() {
            bail!(
                "dig {name} {rtype} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    async fn spawn_and_wait(&mut self) -> Result<(), Started> {
        let log_path = self.dir.path().join("named.log");
        let log = std::fs::File::create(&log_path).map_err(|e| Started::Failed(e.into()))?;
        let mut cmd = self
            .netns
            .command(which("named").expect("checked in start"));
        // -g: foreground, log to stderr; -4: the tests listen on IPv4 only;
        // -n 1: one worker thread, the tests send a handful of messages.
        cmd.args(["-g", "-4", "-n", "1", "-c"])
            .arg(self.dir.path().join("named.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| Started::Failed(e.into()))?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Started::Failed(anyhow::Error::new(e).context("starting named")))?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log();
            if log.contains("address in use") {
                return Err(Started::PortTaken);
            }
            // named keeps running without a zone that failed to load; a broken
            // named.conf makes it exit, which the try_wait below catches.
            if log.contains("not loaded due to errors") {
                return Err(Started::Failed(anyhow::anyhow!(
                    "named did not load its configuration or zones:\n{log}"
                )));
            }
            // "running" is named's last startup line, printed after every zone loaded.
            if log.lines().any(|l| l.ends_with(" running")) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(Started::Failed(anyhow::anyhow!(
                    "named exited ({status}) while starting:\n{log}"
                )));
            }
            if Instant::now() > deadline {
                return Err(Started::Failed(anyhow::anyhow!(
                    "named did not start within {} s:\n{log}",
                    START_TIMEOUT.as_secs()
                )));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it (a DNS server down): nothing answers on its port afterwards.
    pub fn stop(&mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bind9 {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Started {
    PortTaken,
    Failed(anyhow::Error),
}

fn named_conf(dir: &Path, listen: Ipv4Addr, port: u16, zones: &[Bind9Zone]) -> String {
    let d = dir.display();
    let mut conf = format!(
        r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ {listen}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
// No rndc: a control channel would want port 953, shared by every test's server.
controls {{ }};
include "{d}/update.key";
"#
    );
    for zone in zones {
        let allow = if zone.updatable {
            format!("allow-update {{ key \"{}\"; }};", Bind9::KEY_NAME)
        } else {
            String::new()
        };
        let _ = writeln!(
            conf,
            "zone \"{n}\" {{ type primary; file \"{d}/{n}.db\"; {allow} }};",
            n = zone.name
        );
    }
    conf
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}
