//! The QEMU process: its command line, starting it detached, and finding it again.
//!
//! QEMU runs with `-daemonize`, so a VM outlives the Lifeboat process that started it
//! (an agent restart must not stop production VMs). QEMU reports start-up errors before
//! it detaches, so a bad disk path still fails `start` with QEMU's own message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{HypervisorError, Result};
use crate::qemu::layout::VmDir;
use crate::spec::{DiskFormat, NetworkKind, VmSpec};

use super::placement::{cgroup_of, Placement};

pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// How guest instructions run. `Auto` uses KVM only where it was seen to boot a kernel:
/// here `/dev/kvm` exists but hangs real guests, so the device alone proves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "accelerator {other:?} is not one of auto, kvm, tcg"
            )),
        }
    }
}

/// The full QEMU argument list for a VM. `accel` must be resolved (not `Auto`).
pub fn command_line(spec: &VmSpec, dir: &VmDir, accel: Accel) -> Vec<String> {
    let p = |path: PathBuf| path.display().to_string();
    let uuid = spec.uuid.map(|u| u.to_string());
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("{},process=lifeboat-{}", spec.name, spec.name),
        "-accel".into(),
        match accel {
            Accel::Kvm => "kvm".into(),
            _ => "tcg".into(),
        },
        "-m".into(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
    ];
    if let Some(u) = uuid {
        a.extend(["-uuid".into(), u]);
    }
    for (boot_index, disk) in spec.disks_in_boot_order().into_iter().enumerate() {
        let node = disk.name.as_str();
        a.extend([
            "-blockdev".into(),
            format!(
                "driver=file,filename={},node-name={node}-file",
                disk.path.display()
            ),
            "-blockdev".into(),
            format!(
                "driver={},file={node}-file,node-name={node},discard=unmap",
                match disk.format {
                    DiskFormat::Qcow2 => "qcow2",
                    DiskFormat::Raw => "raw",
                }
            ),
            "-device".into(),
            format!("virtio-blk-pci,drive={node},id=dev-{node},bootindex={boot_index}"),
        ]);
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        let mut netdev = match NetworkKind::parse(&nic.network) {
            // QEMU creates the tap (it runs as root); `bridge::plug` puts it on the bridge.
            Some(NetworkKind::Bridge(_)) => format!(
                "tap,id=net{i},ifname={},script=no,downscript=no",
                crate::qemu::bridge::tap_name(&spec.name, i)
            ),
            _ => format!("user,id=net{i}"),
        };
        if nic.network == "isolated" {
            netdev.push_str(",restrict=on");
        }
        for f in &nic.host_forwards {
            netdev.push(',');
            netdev.push_str(&f.hostfwd());
        }
        a.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("virtio-net-pci,netdev=net{i},mac={}", nic.mac),
        ]);
    }
    if let Some(seed) = &spec.seed {
        // Read-only, never booted from, and with a node name no disk can have (disk
        // names hold no '.'), so no bitmap or sync ever touches it. After the NICs, so
        // their PCI slots (and the guest's interface names) are those they had without.
        a.extend([
            "-blockdev".into(),
            format!(
                "driver=file,filename={},node-name=seed.file,read-only=on",
                seed.display()
            ),
            "-blockdev".into(),
            "driver=raw,file=seed.file,node-name=seed.raw,read-only=on".into(),
            "-device".into(),
            "virtio-blk-pci,drive=seed.raw,id=cidata.seed".into(),
        ]);
    }
    a.extend([
        "-chardev".into(),
        format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            p(dir.serial_socket()),
            p(dir.console_log())
        ),
        "-serial".into(),
        "chardev:serial0".into(),
        // The guest agent's port: app-consistent points when the guest runs qemu-ga.
        "-device".into(),
        "virtio-serial-pci,id=vserial0".into(),
        "-chardev".into(),
        format!(
            "socket,id=qga0,path={},server=on,wait=off",
            p(dir.guest_agent_socket())
        ),
        "-device".into(),
        "virtserialport,bus=vserial0.0,chardev=qga0,name=org.qemu.guest_agent.0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p(dir.qmp_socket())),
        "-pidfile".into(),
        p(dir.pid_file()),
        "-daemonize".into(),
    ]);
    a
}

/// Starts QEMU and returns once it has daemonized (its monitor socket then exists).
pub async fn spawn(spec: &VmSpec, dir: &VmDir, accel: Accel, paused: bool) -> Result<u32> {
    for stale in [dir.qmp_socket(), dir.serial_socket(), dir.pid_file()] {
        let _ = std::fs::remove_file(stale);
    }
    // A VM directory an older Lifeboat made is tightened before QEMU puts sockets in it.
    crate::private::private_dir(&dir.dir)
        .map_err(|e| HypervisorError::io("making private", &dir.dir, e))?;
    // QEMU opens the console log to append: made here, it keeps our mode.
    crate::private::open_private(&dir.console_log(), false)
        .map_err(|e| HypervisorError::io("creating", dir.console_log(), e))?;
    let log = crate::private::open_private(&dir.qemu_log(), true)
        .map_err(|e| HypervisorError::io("creating", dir.qemu_log(), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| HypervisorError::io("opening", dir.qemu_log(), e))?;
    let mut args = command_line(spec, dir, accel);
    if paused {
        args.push("-S".into());
    }
    // Outside the agent's cgroup, so that stopping the agent never stops a VM.
    let mut placement = Placement::detect();
    let mut status = run_qemu(spec, &placement, &args, log, log_err).await?;
    if !status.success()
        && placement == Placement::SystemdScope
        && Placement::systemd_refused(&std::fs::read_to_string(dir.qemu_log()).unwrap_or_default())
    {
        // systemd-run could not make the scope (no system bus, say): QEMU never ran.
        // Started without systemd, it is moved into a cgroup of its own below.
        placement = Placement::without_systemd(Path::new("/"));
        tracing::warn!(vm = %spec.name, ?placement, "systemd-run refused to make the VM's scope (see qemu.log); starting QEMU without it");
        let log = crate::private::open_private(&dir.qemu_log(), false)
            .map_err(|e| HypervisorError::io("opening", dir.qemu_log(), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| HypervisorError::io("opening", dir.qemu_log(), e))?;
        status = run_qemu(spec, &placement, &args, log, log_err).await?;
    }
    if !status.success() {
        let msg = std::fs::read_to_string(dir.qemu_log()).unwrap_or_default();
        return Err(HypervisorError::StartFailed {
            vm: spec.name.clone(),
            reason: format!("{status}: {}", msg.trim()),
        });
    }
    let pid = read_live_pid(dir).ok_or_else(|| HypervisorError::StartFailed {
        vm: spec.name.clone(),
        reason: "QEMU exited right after starting; see qemu.log".into(),
    })?;
    if let Err(e) = placement.adopt(spec.name.as_str(), pid) {
        tracing::warn!(vm = %spec.name, ?placement, "QEMU stays in the agent's cgroup: {e}");
    }
    if placement == Placement::SystemdScope
        && !cgroup_of(pid).is_some_and(|c| c.contains(super::placement::SLICE))
    {
        tracing::warn!(vm = %spec.name, cgroup = ?cgroup_of(pid), "QEMU is not in {}: stopping the agent may stop it", super::placement::SLICE);
    }
    // QEMU binds its sockets under its own umask (027 once daemonized): group-readable.
    // They were made inside the 0700 directory, so nobody else reached them meanwhile. A
    // failure here is not a failed start: QEMU runs, and the directory still shuts them.
    for socket in [
        dir.qmp_socket(),
        dir.serial_socket(),
        dir.guest_agent_socket(),
    ] {
        if let Err(e) = crate::private::make_private(&socket) {
            tracing::warn!(vm = %spec.name, socket = %socket.display(), "making a socket private: {e}");
        }
    }
    Ok(pid)
}

/// Runs QEMU (through `placement`'s wrapper) until it daemonizes; its exit status.
async fn run_qemu(
    spec: &VmSpec,
    placement: &Placement,
    args: &[String],
    log: std::fs::File,
    log_err: std::fs::File,
) -> Result<std::process::ExitStatus> {
    let (program, args) = placement.command(QEMU_BINARY, spec.name.as_str(), args);
    tracing::debug!(vm = %spec.name, %program, ?args, "starting QEMU");
    tokio::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .await
        .map_err(|e| HypervisorError::StartFailed {
            vm: spec.name.clone(),
            reason: if program == QEMU_BINARY {
                format!("cannot run {program}: {e} (install qemu-system-x86)")
            } else {
                format!("cannot run {program}: {e} (set LIFEBOAT_VM_PLACEMENT=cgroup to start VMs without it)")
            },
        })
}

/// The pid of the VM's QEMU if it is alive and really ours: the pid file can outlive the
/// process, and its number can be reused, so the command line must name our monitor.
pub fn read_live_pid(dir: &VmDir) -> Option<u32> {
    let text = std::fs::read_to_string(dir.pid_file()).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    is_our_qemu(pid, &dir.qmp_socket()).then_some(pid)
}

fn is_our_qemu(pid: u32, qmp: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie has exited; nobody may reap it when its parent is a container's init.
    if let Some(after_comm) = stat.rsplit_once(')') {
        if after_comm.1.trim_start().starts_with('Z') {
            return false;
        }
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = qmp.display().to_string();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| String::from_utf8_lossy(arg).contains(&needle))
}

pub fn send_kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Waits until the VM's QEMU is gone; true if it went within `timeout`.
pub async fn wait_exit(dir: &VmDir, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if read_live_pid(dir).is_none() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Decides `Auto`: boots the host's own kernel under KVM with no root file system. A
/// working KVM reaches the "no root" panic in well under a second and, with `panic=-1`
/// and `-no-reboot`, QEMU exits; a broken one hangs and is killed. The answer is cached
/// in `cache` because the probe costs up to `timeout`.
pub async fn resolve_accel(requested: Accel, cache: &Path, timeout: Duration) -> Accel {
    if requested != Accel::Auto {
        return requested;
    }
    if let Ok(text) = std::fs::read_to_string(cache) {
        if let Ok(a @ (Accel::Kvm | Accel::Tcg)) = text.trim().parse() {
            return a;
        }
    }
    let found = probe_kvm(&cache.with_extension("probe"), timeout).await;
    let answer = if found { Accel::Kvm } else { Accel::Tcg };
    tracing::info!(?answer, "probed hardware acceleration");
    let _ = crate::private::write_private(cache, if found { b"kvm\n" } else { b"tcg\n" });
    answer
}

/// Boots the host's kernel under KVM with its console in `dir`, a private directory
/// beside the cache (not a guessable name in /tmp).
async fn probe_kvm(dir: &Path, timeout: Duration) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let Some(kernel) = host_kernel() else {
        tracing::warn!("no kernel under /boot to probe KVM with; using TCG");
        return false;
    };
    if crate::private::private_dir(dir).is_err() {
        return false;
    }
    let log = dir.join("probe.log");
    let child = tokio::process::Command::new(QEMU_BINARY)
        .args([
            "-accel",
            "kvm",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let exited = tokio::time::timeout(timeout, child.wait()).await.is_ok();
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    exited && printed.contains("Kernel panic")
}

fn host_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec() -> VmSpec {
        VmSpec::parse(
            r#"
name = "web1"
memory_mib = 256
vcpus = 2
boot_order = ["data"]
[[disks]]
name = "vda"
path = "/vms/a.qcow2"
format = "qcow2"
[[disks]]
name = "data"
path = "/vms/b.raw"
format = "raw"
[[nics]]
mac = "52:54:00:00:00:01"
network = "isolated"
host_forwards = [{ host_port = 8080, guest_port = 80 }]
"#,
            Path::new("t"),
        )
        .unwrap()
    }

    #[test]
    fn command_line_names_every_part() {
        let dir = VmDir::new(Path::new("/h"), &spec().name).unwrap();
        let line = command_line(&spec(), &dir, Accel::Tcg).join(" ");
        for part in [
            "-accel tcg",
            "-m 256",
            "-smp 2",
            "driver=file,filename=/vms/a.qcow2,node-name=vda-file",
            "driver=qcow2,file=vda-file,node-name=vda",
            "driver=raw,file=data-file,node-name=data",
            "virtio-blk-pci,drive=data,id=dev-data,bootindex=0",
            "virtio-blk-pci,drive=vda,id=dev-vda,bootindex=1",
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:8080-:80",
            "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01",
            "unix:/h/vms/web1/qmp.sock,server=on,wait=off",
            "-pidfile /h/vms/web1/qemu.pid",
            "-daemonize",
        ] {
            assert!(line.contains(part), "missing {part:?} in {line}");
        }
        assert!(command_line(&spec(), &dir, Accel::Kvm)
            .join(" ")
            .contains("-accel kvm"));
    }

    #[test]
    fn a_forward_leads_to_the_guests_static_address_when_it_has_one() {
        let mut s = spec();
        s.nics[0].host_forwards[0].guest_addr = Some("10.0.2.60".parse().unwrap());
        s.nics[0].host_forwards[0].public = true;
        let dir = VmDir::new(Path::new("/h"), &s.name).unwrap();
        let line = command_line(&s, &dir, Accel::Tcg).join(" ");
        assert!(line.contains("hostfwd=tcp::8080-10.0.2.60:80"), "{line}");
    }

    #[tokio::test]
    async fn accel_choice_is_cached_and_explicit_choices_win() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("accel");
        assert_eq!(
            resolve_accel(Accel::Tcg, &cache, Duration::ZERO).await,
            Accel::Tcg
        );
        assert_eq!(
            resolve_accel(Accel::Kvm, &cache, Duration::ZERO).await,
            Accel::Kvm
        );
        std::fs::write(&cache, "kvm\n").unwrap();
        assert_eq!(
            resolve_accel(Accel::Auto, &cache, Duration::ZERO).await,
            Accel::Kvm
        );
        std::fs::write(&cache, "tcg\n").unwrap();
        assert_eq!(
            resolve_accel(Accel::Auto, &cache, Duration::ZERO).await,
            Accel::Tcg
        );
    }

    #[test]
    fn long_homes_are_refused_before_unix_sockets_overflow() {
        let home = Path::new("/").join("x".repeat(100));
        let err = VmDir::new(&home, &spec().name).unwrap_err().to_string();
        assert!(err.contains("shorter --home"), "{err}");
    }
}
