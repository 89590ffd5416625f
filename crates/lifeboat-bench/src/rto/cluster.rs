//! The bench's cluster, every part a process of the release `lifeboat` binary as in
//! crates/lifeboat/tests/common/cluster.rs: a server, agents alpha (the VM's home) and
//! beta (its recovery host) enrolled, a folder vault, and VM `web` on alpha with the test
//! guest on vda, the big disk on vdb and its HTTP port forwarded to the host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lifeboat_hypervisor::{QemuConfig, QemuDriver};

use crate::rpo::guest::kill;
use crate::rpo::procs::{self, run_ok, Agent, Lifeboat, Server};

pub const VM: &str = "web";
/// What a test failover names the copy.
pub const COPY: &str = "web-test";

/// Dropped field by field in this order: the server, then the agents (SIGKILL each).
/// Kill the VMs before, with `VmGuard`s made after the cluster.
pub struct Cluster {
    pub lb: Lifeboat,
    pub server: Server,
    pub alpha: Agent,
    pub beta: Agent,
    pub alpha_home: PathBuf,
    pub beta_home: PathBuf,
    pub vault: String,
}

impl Cluster {
    /// Vault, server and both agents in `dir`, the agents enrolled.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Cluster> {
        let mut lb = Lifeboat {
            bin: bin.to_path_buf(),
            client_home: dir.join("client"),
            server: None,
        };
        std::fs::create_dir_all(&lb.client_home)?;
        let vault = format!("file://{}", dir.join("vault").display());
        let mut c = lb.on_home(&lb.client_home);
        c.args(["vault", "--vault", &vault, "init"]);
        run_ok(c).context("lifeboat vault init")?;
        let server = procs::start_server(&lb, &dir.join("server"), &dir.join("server.log"))?;
        lb.server = Some((server.url.clone(), server.token.clone()));
        let (alpha_home, beta_home) = (dir.join("alpha"), dir.join("beta"));
        let alpha = procs::start_agent(&lb, &alpha_home, "alpha", &dir.join("alpha.log"))?;
        let beta = procs::start_agent(&lb, &beta_home, "beta", &dir.join("beta.log"))?;
        for a in [&alpha, &beta] {
            lb.enroll(&a.address, &a.code, &a.fingerprint)
                .await
                .with_context(|| format!("enroll the agent at {}", a.address))?;
        }
        Ok(Cluster {
            lb,
            server,
            alpha,
            beta,
            alpha_home,
            beta_home,
            vault,
        })
    }

    /// Fails, with the end of its log, when the server or an agent has exited: the
    /// numbers of such a run would mean nothing.
    pub fn check_alive(&mut self) -> Result<()> {
        self.server.daemon.check_alive("lifeboat server")?;
        self.alpha.daemon.check_alive("lifeboat agent alpha")?;
        self.beta.daemon.check_alive("lifeboat agent beta")
    }

    /// Defines and starts `web` on alpha: the test guest on vda, `vdb` as vdb, 256 MiB,
    /// 1 vCPU, its port 80 on 127.0.0.1:`http_port`. Returns the guard that kills it.
    pub fn start_web(&self, vdb: &Path, http_port: u16) -> Result<VmGuard> {
        let home = &self.alpha_home;
        std::fs::create_dir_all(home)?;
        let vda = lifeboat_testkit::guest_disk_copy(home, &format!("{VM}.qcow2"))?;
        let mut spec = format!("name = \"{VM}\"\nmemory_mib = 256\nvcpus = 1\n");
        for (disk, path) in [("vda", &vda), ("vdb", &vdb.to_path_buf())] {
            spec += &format!(
                "[[disks]]\nname = \"{disk}\"\npath = \"{}\"\nformat = \"qcow2\"\n",
                path.display()
            );
        }
        spec += &format!(
            "[[nics]]\nmac = \"52:54:00:12:34:56\"\nnetwork = \"user\"\n\
             host_forwards = [{{ host_port = {http_port}, guest_port = 80 }}]\n"
        );
        let path = home.join(format!("{VM}.toml"));
        std::fs::write(&path, spec)?;
        let mut c = self.lb.on_home(home);
        c.args(["vm", "define"]).arg(&path);
        run_ok(c)?;
        // The guard first: a `vm start` that fails half-way leaves no QEMU either.
        let guard = VmGuard::new(&self.lb, home, VM)?;
        let mut c = self.lb.on_home(home);
        c.args(["vm", "start", VM]);
        run_ok(c)?;
        Ok(guard)
    }

    /// `lifeboat protect web --recovery-host beta --policy frequent --wait`; its seconds.
    pub async fn protect_web(&self, timeout: Duration) -> Result<f64> {
        let started = Instant::now();
        let timeout = format!("{}s", timeout.as_secs());
        self.lb
            .client_ok(&[
                "protect",
                VM,
                "--vault",
                &self.vault,
                "--recovery-host",
                "beta",
                "--policy",
                "frequent",
                "--wait",
                "--timeout",
                &timeout,
            ])
            .await
            .context("protect web (the initial sync)")?;
        Ok(started.elapsed().as_secs_f64())
    }
}

/// Kills VM `name` of the host whose home is `home` when dropped, if it is still defined
/// there (a test copy that `failover cleanup` removed is not).
pub struct VmGuard {
    lb: Lifeboat,
    home: PathBuf,
    name: String,
    driver: QemuDriver,
}

impl VmGuard {
    pub fn new(lb: &Lifeboat, home: &Path, name: &str) -> Result<VmGuard> {
        Ok(VmGuard {
            lb: lb.clone(),
            home: home.to_path_buf(),
            name: name.to_string(),
            driver: QemuDriver::new(QemuConfig::new(home))?,
        })
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if self.home.join("vms").join(&self.name).exists() {
            kill(&self.lb, &self.home, &self.name, &self.driver);
        }
    }
}
