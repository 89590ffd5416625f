//! libvirt's system daemon for tests: started the way FACTS.md found works on a machine
//! without systemd (`virtlogd -d; libvirtd -d`) when its socket does not answer, and
//! domains defined with `virsh` as an administrator would, removed again on drop.
//!
//! A lab site can run a libvirtd of its own ([`SiteDaemon`]): one machine then holds two
//! hypervisor hosts whose domain lists are apart, so a domain can fail over to a host
//! that defines it under the same name. [`Daemon`] says which one a command talks to.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const LIBVIRT_URI: &str = "qemu:///system";
const SOCKET: &str = "/var/run/libvirt/libvirt-sock";

fn answers() -> bool {
    std::os::unix::net::UnixStream::connect(SOCKET).is_ok()
}

/// Makes sure libvirtd answers on its system socket, starting it if needed.
pub fn ensure_libvirtd() -> Result<()> {
    if answers() {
        return Ok(());
    }
    // Tests in other processes may be starting them at the same moment: a daemon that
    // refuses to start because another holds its pidfile is not an error; only a socket
    // that never answers is.
    let mut refusals = Vec::new();
    for daemon in ["virtlogd", "libvirtd"] {
        let out = Command::new(daemon)
            .arg("-d")
            .output()
            .with_context(|| format!("starting {daemon} (install libvirt-daemon-system)"))?;
        if !out.status.success() {
            refusals.push(format!(
                "{daemon} -d: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers() {
        if Instant::now() > deadline {
            bail!(
                "libvirtd's {SOCKET} does not answer after 30 s; {}",
                refusals.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `virsh -c qemu:///system ARGS` on the machine's libvirtd; its stdout, or an error
/// with its stderr.
pub fn virsh(args: &[&str]) -> Result<String> {
    Daemon::MACHINE.virsh(args)
}

/// Which libvirtd a command talks to: the machine's own, or a [`SiteDaemon`] (reached by
/// entering its mount and network namespaces, where `qemu:///system` is its socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    /// A process holding the site daemon's namespaces; `None` for the machine's.
    holder: Option<u32>,
}

impl Daemon {
    pub const MACHINE: Daemon = Daemon { holder: None };

    /// A command that runs `program` where this daemon's clients run (for a site's
    /// daemon: `nsenter` into its mount and network namespaces; its agent goes there).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self.holder {
            None => Command::new(program),
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.args(["--target", &pid.to_string(), "--mount", "--net", "--"])
                    .arg(program);
                c
            }
        }
    }

    /// `virsh -c qemu:///system ARGS` on this daemon.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command("virsh")
            .args(["-c", LIBVIRT_URI])
            .args(args)
            .output()
            .context("running virsh (install libvirt-clients)")?;
        if !out.status.success() {
            bail!(
                "virsh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Where the test process finds `path` as this daemon sees it (a site's daemon has its
    /// own `/var/lib/libvirt`, `/run/libvirt`…: reached through `/proc/PID/root`, which
    /// also serves to connect to a socket there).
    pub fn host_path(&self, path: &Path) -> std::path::PathBuf {
        match self.holder {
            None => path.to_path_buf(),
            Some(pid) => Path::new(&format!("/proc/{pid}/root")).join(
                path.strip_prefix("/")
                    .expect("host_path takes an absolute path"),
            ),
        }
    }
}

/// The folders a libvirtd keeps its state in; a [`SiteDaemon`] gets its own of each.
const DAEMON_DIRS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
    ("run", "/run/libvirt"),
];

/// A libvirtd (with its virtlogd) of one network namespace's own: it runs in that
/// namespace and in a mount namespace of its own in which its state folders
/// (`/etc/libvirt`, `/var/lib/libvirt`, `/var/cache/libvirt`, `/var/log/libvirt`,
/// `/run/libvirt`) are folders of this daemon's, so its domains, checkpoints, logs and
/// socket are apart from the machine's libvirtd and any other site's. It starts with the
/// machine's configuration (less its domains and networks) and `cgroup_controllers = []`
/// (the namespace's `/sys` has no cgroup tree; two daemons would share one anyway).
/// Disks under `/var/tmp` ([`domain_dir`]) are seen alike by every daemon.
///
/// Dropping it destroys its domains and ends its processes; a site's namespace deleted
/// by the lab ends them too.
pub struct SiteDaemon {
    holder: std::process::Child,
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl SiteDaemon {
    /// Starts libvirtd inside `netns` and waits until its socket answers.
    pub fn start(netns: &crate::lab::Netns) -> Result<SiteDaemon> {
        ensure_libvirtd()?; // the packages are there, and the machine's config with them
        let dir = tempfile::Builder::new()
            .prefix("lb-site-libvirt")
            .tempdir_in("/var/tmp")
            .context("making a folder under /var/tmp")?;
        let root = dir.path();
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        for (own, _) in DAEMON_DIRS {
            std::fs::create_dir(root.join(own))?;
        }
        copy_tree(Path::new("/etc/libvirt"), &root.join("etc"), &|rel| {
            // The machine's domains and what it starts itself are not this host's.
            let parent = rel.parent().unwrap_or(Path::new(""));
            !(parent == Path::new("qemu") && rel.extension() == Some("xml".as_ref())
                || parent == Path::new("qemu/autostart")
                || parent == Path::new("qemu/networks/autostart"))
        })?;
        // QEMU's capabilities, probed once by the machine's daemon: a start in a second.
        copy_tree(
            Path::new("/var/cache/libvirt"),
            &root.join("cache"),
            &|_| true,
        )?;
        // The folders libvirt's packages made, empty (no image of the machine's), with
        // their owners and modes.
        copy_tree(Path::new("/var/lib/libvirt"), &root.join("lib"), &|rel| {
            rel.components().count() <= 2
                && !rel.starts_with("lifeboat")
                && !rel.starts_with("qemu/domain-")
                && Path::new("/var/lib/libvirt").join(rel).is_dir()
        })?;
        let qemu_conf = root.join("etc/qemu.conf");
        let mut conf = std::fs::read_to_string(&qemu_conf).unwrap_or_default();
        conf.push_str("\ncgroup_controllers = [ ]\n");
        std::fs::write(&qemu_conf, conf)?;

        let mut mounts = String::from("set -e; ");
        for (own, at) in DAEMON_DIRS {
            mounts.push_str(&format!(
                "mkdir -p {at}; mount --bind {} {at}; ",
                root.join(own).display()
            ));
        }
        mounts.push_str("echo mounted; exec sleep infinity");
        let mut holder = netns
            .command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &mounts])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting a mount namespace for a site's libvirtd (unshare, util-linux)")?;
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("piped");
        let read = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        if read.is_err() || line.trim() != "mounted" {
            let _ = holder.kill();
            let status = holder.wait()?;
            bail!("the site's libvirt folders were not mounted ({status})");
        }
        let site = SiteDaemon {
            daemon: Daemon {
                holder: Some(holder.id()),
            },
            holder,
            _dir: dir,
        };
        for (daemon, pidfile) in [
            ("virtlogd", "/run/libvirt/virtlogd.pid"),
            ("libvirtd", "/run/libvirt/libvirtd.pid"),
        ] {
            let out = site
                .daemon
                .command(daemon)
                .args(["-d", "-p", pidfile])
                .output()
                .with_context(|| format!("starting {daemon}"))?;
            if !out.status.success() {
                bail!(
                    "{daemon} -d in the site: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let socket = site
            .daemon
            .host_path(Path::new("/run/libvirt/libvirt-sock"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the site's libvirtd did not answer on {} in 30 s",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(site)
    }

    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// `virsh ARGS` on this daemon.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        self.daemon.virsh(args)
    }

    fn pid_of(&self, pidfile: &str) -> Option<i32> {
        std::fs::read_to_string(self.daemon.host_path(Path::new(pidfile)))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for SiteDaemon {
    fn drop(&mut self) {
        if let Ok(names) = self.virsh(&["list", "--name"]) {
            for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
                let _ = self.virsh(&["destroy", name]);
            }
        }
        for pidfile in ["/run/libvirt/libvirtd.pid", "/run/libvirt/virtlogd.pid"] {
            if let Some(pid) = self.pid_of(pidfile) {
                // SAFETY: kill only sends a signal to a pid this daemon wrote.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Copies the folders (with owner and mode) and files under `from` into `to`, those whose
/// path relative to `from` `keep` accepts (a folder refused is skipped whole).
fn copy_tree(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let src = from.join(&rel);
        let dst = to.join(&rel);
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.is_dir() {
            if !rel.as_os_str().is_empty() {
                std::fs::create_dir_all(&dst)?;
            }
            for entry in std::fs::read_dir(&src)? {
                let child = rel.join(entry?.file_name());
                if keep(&child) {
                    stack.push(child);
                }
            }
        } else if meta.is_file() {
            std::fs::copy(&src, &dst)?;
        } else {
            continue; // sockets and links of the machine's daemon are not ours
        }
        std::os::unix::fs::chown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode()))?;
    }
    Ok(())
}

/// A folder for test domains' disks that libvirt's QEMU, which runs as its own user, can
/// reach: under /var/tmp (not a private /tmp), mode 0755.
pub fn domain_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("lb-libvirt")
        .tempdir_in("/var/tmp")
        .context("making a folder under /var/tmp")?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok(dir)
}

/// Creates an empty qcow2 image of `size` bytes at `path`.
pub fn qcow2(path: &Path, size: u64) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string())
        .output()
        .context("running qemu-img")?;
    if !out.status.success() {
        bail!(
            "qemu-img create {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A domain defined with `virsh define` from an XML file; destroyed (if it runs) and
/// undefined on drop.
pub struct DefinedDomain {
    pub name: String,
    daemon: Daemon,
}

impl DefinedDomain {
    /// A small domain `name` with one qcow2 disk `disk` (vda) and nothing to boot: what
    /// the driver tests and the benchmark cut, defined as an administrator would (its XML
    /// written next to the disk).
    pub fn tiny(name: &str, disk: &Path) -> Result<DefinedDomain> {
        let xml = disk.with_file_name(format!("{name}.xml"));
        std::fs::write(&xml, tiny_domain_xml(name, disk))
            .with_context(|| format!("writing {}", xml.display()))?;
        DefinedDomain::define(&xml, name)
    }

    /// On the machine's libvirtd.
    pub fn define(xml_file: &Path, name: &str) -> Result<DefinedDomain> {
        ensure_libvirtd()?;
        DefinedDomain::define_on(&Daemon::MACHINE, xml_file, name)
    }

    pub fn define_on(daemon: &Daemon, xml_file: &Path, name: &str) -> Result<DefinedDomain> {
        daemon.virsh(&["define", &xml_file.to_string_lossy()])?;
        Ok(DefinedDomain {
            name: name.to_string(),
            daemon: daemon.clone(),
        })
    }
}

impl Drop for DefinedDomain {
    fn drop(&mut self) {
        let virsh = |args: &[&str]| self.daemon.virsh(args);
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name, "--nvram", "--checkpoints-metadata"])
            .or_else(|_| virsh(&["undefine", &self.name]));
    }
}

/// Writes `pattern` over `len` bytes at `offset` of the running domain's vda through its
/// QEMU (HMP `qemu-io`): what a guest's write does to the disk and its bitmaps.
pub fn write_vda(domain: &str, pattern: u8, offset: u64, len: u64) -> Result<()> {
    let cmd = format!(
        "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P {pattern} {offset} {len}\""
    );
    let out = virsh(&["qemu-monitor-command", "--hmp", domain, &cmd])?;
    if !(out.trim().is_empty() || out.contains("wrote")) {
        bail!("qemu-io on {domain}: {out}");
    }
    Ok(())
}

/// The XML of a small domain with one qcow2 disk `disk` (vda) and nothing to boot.
fn tiny_domain_xml(name: &str, disk: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <graphics type='vnc' autoport='yes' listen='127.0.0.1'/></devices></domain>",
        disk.display()
    )
}
