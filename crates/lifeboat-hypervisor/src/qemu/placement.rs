//! Where a VM's QEMU process lives: never in the agent's cgroup or process group.
//!
//! systemd stops a service by killing every process of its cgroup (`KillMode=
//! control-group`, the default). A QEMU the agent started inherits the agent's cgroup,
//! so stopping, restarting or upgrading `lifeboat-agent.service` would kill every VM the
//! agent had started — recovered copies, VMs failed back home. So:
//!
//! - **systemd** (it runs as PID 1): QEMU starts in a scope of its own,
//!   `systemd-run --scope --slice=lifeboat-vms.slice`, which systemd keeps while QEMU
//!   runs and which no stop of the agent's unit touches;
//! - **otherwise** (another init, a container, or systemd-run refused): QEMU is moved,
//!   right after it started, into a cgroup of its own under the cgroup v2 hierarchy
//!   (`lifeboat-vms/` at its root), when that hierarchy is mounted and writable; a
//!   supervisor that kills the agent's cgroup v2 group then spares it (on a hybrid host
//!   the v1 hierarchies are not changed). Without one, only the process group protects
//!   it.
//!
//! In every case QEMU daemonizes (`-daemonize`: it calls `setsid`), so it is in neither
//! the agent's session nor its process group: a signal to the agent's group (Ctrl-C in a
//! terminal, `kill -- -PGID`) never reaches a VM.

use std::path::{Path, PathBuf};

/// How VMs are placed on this host, found once per start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// `systemd-run --scope` in `lifeboat-vms.slice`.
    SystemdScope,
    /// A cgroup under this cgroup v2 hierarchy's root.
    Cgroup(PathBuf),
    /// Neither: only QEMU's own session protects it.
    ProcessGroupOnly,
}

/// The slice every VM's scope goes in (`systemctl status lifeboat-vms.slice` lists them).
pub const SLICE: &str = "lifeboat-vms.slice";
/// The folder under the cgroup v2 root that holds the VMs' cgroups without systemd.
pub const CGROUP_DIR: &str = "lifeboat-vms";

impl Placement {
    /// This host's placement: systemd's when it runs as PID 1 (`/run/systemd/system`, as
    /// `sd_booted` checks) and `systemd-run` is installed, else a cgroup under the
    /// writable cgroup v2 hierarchy (unified at `/sys/fs/cgroup`, or hybrid at
    /// `/sys/fs/cgroup/unified`), else the process group alone.
    /// `LIFEBOAT_VM_PLACEMENT=systemd|cgroup|none` overrides the detection (a host whose
    /// systemd the agent should not use, or a test).
    pub fn detect() -> Placement {
        let path = std::env::var_os("PATH");
        match std::env::var("LIFEBOAT_VM_PLACEMENT").as_deref() {
            Ok("systemd") => Placement::SystemdScope,
            Ok("cgroup") => Self::without_systemd(Path::new("/")),
            Ok("none") => Placement::ProcessGroupOnly,
            _ => Self::detect_in(Path::new("/"), path.as_deref()),
        }
    }

    /// The placement when systemd cannot be used: a cgroup of its own, else the group.
    pub fn without_systemd(root: &Path) -> Placement {
        for hierarchy in ["sys/fs/cgroup", "sys/fs/cgroup/unified"] {
            let at = root.join(hierarchy);
            // cgroup.controllers exists only at a cgroup v2 root or below.
            if at.join("cgroup.controllers").is_file() && writable(&at.join("cgroup.procs")) {
                return Placement::Cgroup(at);
            }
        }
        Placement::ProcessGroupOnly
    }

    /// Whether `systemd-run`'s output in `log` says it could not make the scope (no
    /// system bus, no systemd to talk to): QEMU never ran, and starting it without
    /// systemd is the way left.
    pub fn systemd_refused(log: &str) -> bool {
        log.lines().any(|l| {
            l.starts_with("Failed to")
                && (l.contains("bus") || l.contains("transient scope") || l.contains("systemd"))
        })
    }

    fn detect_in(root: &Path, path: Option<&std::ffi::OsStr>) -> Placement {
        let systemd = root.join("run/systemd/system").is_dir()
            && path.is_some_and(|paths| {
                std::env::split_paths(paths).any(|d| d.join("systemd-run").is_file())
            });
        if systemd {
            return Placement::SystemdScope;
        }
        Self::without_systemd(root)
    }

    /// The program and arguments that start QEMU with `args` for VM `vm`.
    pub fn command(&self, qemu: &str, vm: &str, args: &[String]) -> (String, Vec<String>) {
        match self {
            Placement::SystemdScope => {
                // Unique per start: a scope of a VM that stopped may linger until collected.
                let unit = format!(
                    "lifeboat-vm-{}-{}",
                    unit_safe(vm),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                );
                let mut all = vec![
                    "--scope".to_string(),
                    "--quiet".into(),
                    "--collect".into(),
                    format!("--slice={SLICE}"),
                    format!("--unit={unit}"),
                    format!("--description=Lifeboat VM {vm}"),
                    "--".into(),
                    qemu.into(),
                ];
                all.extend(args.iter().cloned());
                ("systemd-run".into(), all)
            }
            _ => (qemu.into(), args.to_vec()),
        }
    }

    /// Moves the started QEMU `pid` of VM `vm` into a cgroup of its own (the cgroup
    /// placement; the others need nothing). Best effort: a failure is returned for the
    /// log, and the VM runs on where it is.
    pub fn adopt(&self, vm: &str, pid: u32) -> std::io::Result<()> {
        let Placement::Cgroup(root) = self else {
            return Ok(());
        };
        let parent = root.join(CGROUP_DIR);
        sweep_empty(&parent);
        let own = parent.join(format!("{}-{pid}", unit_safe(vm)));
        std::fs::create_dir_all(&own)?;
        std::fs::write(own.join("cgroup.procs"), pid.to_string())
    }
}

/// Whether `file` can be opened for writing (a read-only cgroup mount refuses).
fn writable(file: &Path) -> bool {
    std::fs::OpenOptions::new().write(true).open(file).is_ok()
}

/// Removes the cgroups of VMs that stopped: those whose QEMU (the `-PID` their name
/// ends in) is gone. One of a QEMU being adopted right now is still empty but its QEMU
/// lives, so it stays. (A cgroup with processes refuses `rmdir` anyway.)
fn sweep_empty(parent: &Path) {
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let alive = name
            .rsplit_once('-')
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if entry.path().is_dir() && !alive {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// `vm` as a unit or cgroup name can carry it: VM names are ASCII letters, digits and
/// `-_.`; anything else becomes `_`.
fn unit_safe(vm: &str) -> String {
    vm.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The cgroup `pid` is in, in the cgroup v2 hierarchy (`0::/path` of /proc/PID/cgroup).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_hosts_start_qemu_in_a_scope_of_its_own() {
        let args = vec!["-name".to_string(), "web".into(), "-daemonize".into()];
        let (program, all) = Placement::SystemdScope.command("qemu-system-x86_64", "web.1", &args);
        assert_eq!(program, "systemd-run");
        let dashdash = all.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            &all[dashdash + 1..],
            ["qemu-system-x86_64", "-name", "web", "-daemonize"]
        );
        let opts = &all[..dashdash];
        assert!(opts.contains(&"--scope".to_string()), "{opts:?}");
        assert!(opts.contains(&format!("--slice={SLICE}")), "{opts:?}");
        assert!(
            opts.iter()
                .any(|o| o.starts_with("--unit=lifeboat-vm-web_1-")),
            "{opts:?}"
        );
        // Elsewhere QEMU runs as it is, and is adopted once started.
        let (program, all) =
            Placement::ProcessGroupOnly.command("qemu-system-x86_64", "web", &args);
        assert_eq!((program.as_str(), all), ("qemu-system-x86_64", args));
    }

    #[test]
    fn systemd_runs_refusals_are_told_from_qemus_errors() {
        for refused in [
            "Failed to create bus connection: No such file or directory",
            "Failed to start transient scope unit: Access denied",
            "Failed to connect to bus: Host is down",
        ] {
            assert!(Placement::systemd_refused(refused), "{refused}");
        }
        assert!(!Placement::systemd_refused(
            "qemu-system-x86_64: -drive file=x: Failed to get \"write\" lock"
        ));
        assert!(!Placement::systemd_refused(""));
    }

    #[test]
    fn detection_prefers_systemd_then_a_writable_cgroup2_root() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let path = Some(bin.as_os_str());
        assert_eq!(
            Placement::detect_in(root.path(), path),
            Placement::ProcessGroupOnly
        );
        // Hybrid: cgroup v2 at /sys/fs/cgroup/unified, v1 controllers beside it.
        let unified = root.path().join("sys/fs/cgroup/unified");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::write(unified.join("cgroup.controllers"), "").unwrap();
        std::fs::write(unified.join("cgroup.procs"), "").unwrap();
        let in_cgroup = Placement::Cgroup(unified.clone());
        assert_eq!(Placement::detect_in(root.path(), path), in_cgroup);
        // systemd as PID 1, but no systemd-run: the cgroup still.
        std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        assert_eq!(Placement::detect_in(root.path(), path), in_cgroup);
        std::fs::write(bin.join("systemd-run"), "").unwrap();
        assert_eq!(
            Placement::detect_in(root.path(), path),
            Placement::SystemdScope
        );
    }
}
