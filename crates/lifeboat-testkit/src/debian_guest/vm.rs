//! QEMU running the Debian guest under TCG.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::{sleep, Instant};

use super::GuestAgent;
use crate::lab::Netns;
use crate::SerialConsole;

/// How to boot a [`DebianVm`].
#[derive(Clone, Debug)]
pub struct DebianVmConfig {
    /// Names the VM's sockets and logs in `dir` (`NAME.shell.sock`, `NAME.console.log`, …).
    pub name: String,
    /// Where the sockets and the console log go (Unix socket paths: keep it short).
    pub dir: PathBuf,
    /// The qcow2 disk to boot (see [`super::debian_disk_copy`]).
    pub disk: PathBuf,
    /// A NoCloud seed disk (see [`super::NoCloudSeed::write_disk`]), attached read-only.
    pub seed: Option<PathBuf>,
    /// The namespace QEMU runs in: its tap must be there ([`Netns::host`] for none).
    pub netns: Netns,
    /// A tap interface in `netns` for the NIC (virtio-net), or `None` for no NIC.
    pub tap: Option<String>,
    /// The NIC's MAC address (match it in the seed's network-config).
    pub mac: String,
    pub memory_mib: u32,
}

impl DebianVmConfig {
    /// A VM of 512 MiB with its NIC on `tap` in `netns`, MAC `mac`.
    pub fn new(name: &str, dir: &Path, disk: &Path, netns: Netns, tap: &str, mac: &str) -> Self {
        Self {
            name: name.to_string(),
            dir: dir.to_owned(),
            disk: disk.to_owned(),
            seed: None,
            netns,
            tap: Some(tap.to_string()),
            mac: mac.to_string(),
            memory_mib: 512,
        }
    }
}

/// A QEMU process running the Debian guest under TCG; killed and reaped on drop.
///
/// Two serial ports: ttyS0 is the kernel's console (and cloud-init's, which prints its
/// progress there), written to a log file; ttyS1 carries only the root shell, so a
/// command's output never has boot messages mixed into it.
pub struct DebianVm {
    child: Child,
    started: Instant,
    shell: PathBuf,
    console_log: PathBuf,
    agent: PathBuf,
    qmp: PathBuf,
}

impl DebianVm {
    /// Starts QEMU (in the config's namespace, with `ip netns exec`). Returns as soon as
    /// QEMU runs; the guest needs tens of seconds more: wait on its service or console.
    pub fn start(config: &DebianVmConfig) -> anyhow::Result<Self> {
        let sock = |what: &str| config.dir.join(format!("{}.{what}", config.name));
        let (shell, shell_log) = (sock("shell.sock"), sock("shell.log"));
        let console_log = sock("console.log");
        let (agent, qmp) = (sock("qga.sock"), sock("qmp.sock"));
        let mut cmd = config.netns.command("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-m", &config.memory_mib.to_string()])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=disk0,format=qcow2",
            config.disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]);
        if let Some(seed) = &config.seed {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},if=none,id=seed0,format=raw,readonly=on",
                    seed.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=seed0"]);
        }
        if let Some(tap) = &config.tap {
            cmd.arg("-netdev")
                .arg(format!("tap,id=net0,ifname={tap},script=no,downscript=no"))
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=net0,mac={}", config.mac));
        }
        cmd.arg("-chardev")
            .arg(format!("file,id=ser0,path={}", console_log.display()))
            .args(["-serial", "chardev:ser0"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ser1,path={},server=on,wait=off,logfile={}",
                shell.display(),
                shell_log.display()
            ))
            .args(["-serial", "chardev:ser1"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=qga0,path={},server=on,wait=off",
                agent.display()
            ))
            .args(["-device", "virtio-serial"])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("start qemu-system-x86_64 for {}", config.name))?;
        Ok(Self {
            child,
            started: Instant::now(),
            shell,
            console_log,
            agent,
            qmp,
        })
    }

    /// When QEMU was started (for boot times).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// QEMU's QMP socket.
    pub fn qmp_path(&self) -> &Path {
        &self.qmp
    }

    /// Starts the VM and waits until its service answers `GET /` on `address` port 80
    /// with `hostname` and the guest has announced `address` with a gratuitous ARP on the
    /// config's tap; prints both times. A failure carries the console's last 60 lines.
    pub async fn start_answering(
        config: &DebianVmConfig,
        address: std::net::Ipv4Addr,
        hostname: &str,
    ) -> anyhow::Result<Self> {
        let tap = config
            .tap
            .as_deref()
            .context("a VM without a NIC answers nobody")?;
        let arp = super::ArpWatch::start(&config.netns, tap)?;
        let vm = Self::start(config)?;
        let http = std::net::SocketAddr::from((address, 80));
        let run = &config.name;
        let body = super::wait_http_in(&config.netns, http, "/", crate::boot_timeout())
            .await
            .with_context(|| format!("{run}: console log:\n{}", vm.console_tail(60)))?;
        let answered = vm.started().elapsed();
        let announced = arp
            .wait_announcement(&config.mac, address, Duration::from_secs(60))
            .await
            .with_context(|| format!("{run}: console log:\n{}", vm.console_tail(60)))?;
        eprintln!(
            "{run}: http://{http}/ answered {:.1} s after QEMU started; gratuitous ARP at {:.1} s",
            answered.as_secs_f64(),
            announced.at.as_secs_f64()
        );
        let body = String::from_utf8_lossy(&body);
        if body != format!("{hostname}\n") {
            bail!("{run}: / answered {body:?}, not {hostname}");
        }
        Ok(vm)
    }

    /// The last `lines` lines of the guest's console, for failure messages.
    pub fn console_tail(&self, lines: usize) -> String {
        let log = self.console_log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Everything the kernel and cloud-init printed on the guest's console (ttyS0) so far.
    pub fn console_log(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// The root shell on the guest's ttyS1, once it answers (within `limit`).
    pub async fn console(&self, limit: Duration) -> anyhow::Result<SerialConsole> {
        let mut console = SerialConsole::connect(&self.shell, Duration::from_secs(30)).await?;
        if let Err(e) = console.wait_ready(limit).await {
            bail!("{e:#}\nconsole log:\n{}", self.console_log());
        }
        Ok(console)
    }

    /// The guest agent, once it answers `guest-sync` (within `limit`).
    pub async fn agent(&self, limit: Duration) -> anyhow::Result<GuestAgent> {
        GuestAgent::connect(&self.agent, limit).await
    }

    /// Waits for QEMU to exit (after the guest powered off).
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU still running after {limit:?}; console log:\n{}",
                    self.console_log()
                );
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for DebianVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
