//! `QemuDriver`: the `Hypervisor` for plain QEMU. It keeps no state in memory; every call
//! reads the VM's directory and asks QEMU, so any process (a restarted agent, the CLI)
//! can drive VMs another process started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{HypervisorError, Result};
use crate::hypervisor::{DiskHydration, DiskInfo, Hypervisor, ShutdownOutcome, VmInfo, VmState};
use crate::qemu::bridge;
use crate::qemu::commands::{QueryStatus, StatusReply};
use crate::qemu::cut::{self, QemuCut};
use crate::qemu::layout::{write_atomically, VmDir};
use crate::qemu::process::{self, Accel};
use crate::qemu::qmp::Qmp;
use crate::spec::{DiskFormat, VmName, VmSpec};
use crate::tracking::TrackingStatus;

#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Where VM directories live (see `layout`).
    pub home: PathBuf,
    pub accel: Accel,
    /// Bound on every QMP connect and command.
    pub qmp_timeout: Duration,
    /// Bound on every NBD request while reading a cut.
    pub nbd_timeout: Duration,
}

impl QemuConfig {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        QemuConfig {
            home: home.into(),
            accel: Accel::Auto,
            qmp_timeout: Duration::from_secs(15),
            nbd_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QemuDriver {
    pub(crate) config: QemuConfig,
}

impl QemuDriver {
    /// Opens the driver's home, making it (and `vms`) private: created 0700, or tightened
    /// to 0700 when an older Lifeboat or the operator left it open.
    pub fn new(config: QemuConfig) -> Result<Self> {
        let home = &config.home;
        if let Ok(meta) = std::fs::metadata(home) {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            // Tightening a shared directory would lock everyone else out of it; and in one
            // others may write to (a group's, or another user's), someone could put a link
            // where Lifeboat makes its folders, and have it tighten (as root) what the
            // link names.
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if meta.permissions().mode() & 0o1022 != 0
                || meta.uid() != me
                || home.parent().is_none()
            {
                return Err(HypervisorError::SharedHome(home.clone()));
            }
        }
        let vms = home.join("vms");
        for dir in [home, &vms] {
            crate::private::private_dir(dir)
                .map_err(|e| HypervisorError::io("making private", dir, e))?;
        }
        Ok(QemuDriver { config })
    }

    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    pub fn vm_dir(&self, vm: &VmName) -> Result<VmDir> {
        VmDir::new(&self.config.home, vm)
    }

    /// The paths of a VM's serial console socket and console log, for tools and tests.
    pub fn serial_socket(&self, vm: &VmName) -> Result<PathBuf> {
        Ok(self.vm_dir(vm)?.serial_socket())
    }

    pub(crate) async fn qmp(&self, dir: &VmDir) -> Result<Qmp> {
        Qmp::connect(&dir.qmp_socket(), self.config.qmp_timeout)
            .await
            .map_err(|source| HypervisorError::Qmp {
                vm: dir.name.clone(),
                command: "connect".into(),
                source,
            })
    }

    /// A monitor connection to a VM that must be running.
    pub(crate) async fn running_qmp(&self, vm: &VmName, what: &str) -> Result<(VmDir, Qmp)> {
        let dir = self.defined(vm)?;
        if process::read_live_pid(&dir).is_none() {
            return Err(HypervisorError::WrongState {
                vm: vm.clone(),
                state: "stopped".into(),
                what: format!("start it before {what}"),
            });
        }
        let qmp = self.qmp(&dir).await?;
        Ok((dir, qmp))
    }

    /// Pauses the guest's CPUs. QEMU drains and flushes every disk first, so the image
    /// files are consistent on disk while it stays paused.
    pub async fn pause(&self, vm: &VmName) -> Result<()> {
        let (_, qmp) = self.running_qmp(vm, "pausing it").await?;
        qmp.run(qapi::qmp::stop {})
            .await
            .map_err(crate::qemu::cut::qmp_error(vm, "stop"))?;
        Ok(())
    }

    pub async fn resume(&self, vm: &VmName) -> Result<()> {
        let (_, qmp) = self.running_qmp(vm, "resuming it").await?;
        qmp.run(qapi::qmp::cont {})
            .await
            .map_err(crate::qemu::cut::qmp_error(vm, "cont"))?;
        Ok(())
    }

    /// Starts QEMU; with `paused`, its CPUs never run (`-S`): the disks are open for a
    /// cut of a stopped VM, and the guest does not run. A fenced VM does not start.
    pub async fn start_with(&self, vm: &VmName, paused: bool) -> Result<()> {
        let dir = self.defined(vm)?;
        if let Ok(why) = std::fs::read_to_string(dir.fence_marker()) {
            return Err(HypervisorError::WrongState {
                vm: vm.clone(),
                state: "fenced".into(),
                what: format!("it must not start on this host: {}", why.trim()),
            });
        }
        if process::read_live_pid(&dir).is_some() {
            return Err(HypervisorError::WrongState {
                vm: vm.clone(),
                state: "running".into(),
                what: "it is already started".into(),
            });
        }
        let spec = VmSpec::load(&dir.spec())?;
        let accel = process::resolve_accel(
            self.config.accel,
            &self.config.home.join("accel"),
            Duration::from_secs(10),
        )
        .await;
        bridge::check_host(&spec, Path::new("/sys/class/net"))?;
        // Bridged NICs are plugged while the CPUs are held; the guest runs after.
        let bridged = !bridge::bridged(&spec).is_empty();
        process::spawn(&spec, &dir, accel, paused || bridged).await?;
        if bridged {
            if let Err(e) = bridge::plug(&spec).await {
                let _ = self.kill(vm).await;
                return Err(e);
            }
            if !paused {
                self.resume(vm).await?;
                // Switches learn at once where the VM's MACs are now: a VM moved onto a
                // stretched subnet keeps its MAC and address (docs/networking.md). RARP
                // from each NIC, as QEMU sends after a live migration; best effort.
                if let Err(e) = self.announce(vm).await {
                    tracing::warn!(vm = %vm, error = %e, "announcing the VM's NICs failed");
                }
            }
        }
        Ok(())
    }

    /// QEMU's `announce-self`: a few RARP frames from every NIC of the VM.
    pub async fn announce(&self, vm: &VmName) -> Result<()> {
        let (_, qmp) = self.running_qmp(vm, "announcing its NICs").await?;
        qmp.run(qapi::qmp::announce_self(qapi::qmp::AnnounceParameters {
            id: None,
            interfaces: None,
            initial: 50,
            max: 550,
            rounds: 5,
            step: 100,
        }))
        .await
        .map_err(crate::qemu::cut::qmp_error(vm, "announce-self"))?;
        Ok(())
    }

    fn defined(&self, vm: &VmName) -> Result<VmDir> {
        let dir = self.vm_dir(vm)?;
        if !dir.spec().exists() {
            return Err(HypervisorError::UnknownVm(vm.clone()));
        }
        Ok(dir)
    }

    async fn disk_info(&self, spec: &VmSpec) -> Vec<DiskInfo> {
        let mut out = Vec::new();
        for d in &spec.disks {
            let (virtual_size, allocated_size) =
                image_sizes(&d.path, d.format).await.unwrap_or((0, 0));
            out.push(DiskInfo {
                name: d.name.clone(),
                path: d.path.clone(),
                format: d.format,
                virtual_size,
                allocated_size,
            });
        }
        out
    }
}

/// Virtual and allocated size of an image, readable while QEMU has it open (`-U`).
/// Read as `format`, the spec's, never guessed from the content: the guest writes a raw
/// disk's first bytes, and a qcow2 header there would set the size (and a backing file).
pub async fn image_sizes(path: &std::path::Path, format: DiskFormat) -> Result<(u64, u64)> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "-f", format.as_str()])
        .arg(path)
        .output()
        .await
        .map_err(|e| HypervisorError::Tool {
            tool: "qemu-img info".into(),
            reason: format!("{e} (install qemu-utils)"),
        })?;
    if !out.status.success() {
        return Err(HypervisorError::Tool {
            tool: "qemu-img info".into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "virtual-size")]
        virtual_size: u64,
        #[serde(rename = "actual-size", default)]
        actual_size: u64,
    }
    let info: Info = serde_json::from_slice(&out.stdout).map_err(|e| HypervisorError::Tool {
        tool: "qemu-img info".into(),
        reason: e.to_string(),
    })?;
    Ok((info.virtual_size, info.actual_size))
}

fn map_status(s: &StatusReply) -> VmState {
    match s.status.as_str() {
        "running" => VmState::Running,
        "internal-error" | "io-error" | "guest-panicked" => VmState::Crashed(s.status.clone()),
        other => VmState::Paused(other.to_string()),
    }
}

impl Hypervisor for QemuDriver {
    type Cut = QemuCut;

    async fn define(&self, mut spec: VmSpec) -> Result<VmSpec> {
        let dir = self.vm_dir(&spec.name)?;
        if dir.spec().exists() {
            return Err(HypervisorError::AlreadyDefined(spec.name));
        }
        spec.uuid.get_or_insert_with(uuid::Uuid::new_v4);
        crate::private::private_dir(&dir.dir)
            .map_err(|e| HypervisorError::io("creating", &dir.dir, e))?;
        write_atomically(&dir.spec(), spec.to_toml().as_bytes())?;
        Ok(spec)
    }

    async fn undefine(&self, vm: &VmName) -> Result<()> {
        let dir = self.defined(vm)?;
        if process::read_live_pid(&dir).is_some() {
            return Err(HypervisorError::WrongState {
                vm: vm.clone(),
                state: "running".into(),
                what: "stop it before undefining it".into(),
            });
        }
        // Only Lifeboat's own files go; the VM's disks belong to the operator.
        std::fs::remove_dir_all(&dir.dir).map_err(|e| HypervisorError::io("removing", &dir.dir, e))
    }

    async fn spec(&self, vm: &VmName) -> Result<VmSpec> {
        VmSpec::load(&self.defined(vm)?.spec())
    }

    async fn start(&self, vm: &VmName) -> Result<()> {
        self.start_with(vm, false).await
    }

    async fn start_held(&self, vm: &VmName) -> Result<()> {
        self.start_with(vm, true).await
    }

    /// Fences the VM: kills QEMU if it runs and records `why`, after which it does not
    /// start here (it was failed over; its writes from now on would diverge).
    async fn fence(&self, vm: &VmName, why: &str) -> Result<bool> {
        let dir = self.defined(vm)?;
        write_atomically(&dir.fence_marker(), why.as_bytes())?;
        let running = process::read_live_pid(&dir).is_some();
        if running {
            self.kill(vm).await?;
        }
        Ok(running)
    }

    /// Lifts a fence (the VM failed back home).
    async fn unfence(&self, vm: &VmName) -> Result<()> {
        let dir = self.defined(vm)?;
        match std::fs::remove_file(dir.fence_marker()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(HypervisorError::io("removing", dir.fence_marker(), e))
            }
            _ => Ok(()),
        }
    }

    async fn set_seed(&self, vm: &VmName, seed: Option<std::path::PathBuf>) -> Result<()> {
        let dir = self.defined(vm)?;
        let mut spec = VmSpec::load(&dir.spec())?;
        if spec.seed != seed {
            spec.seed = seed;
            write_atomically(&dir.spec(), spec.to_toml().as_bytes())?;
        }
        Ok(())
    }

    async fn shutdown(&self, vm: &VmName, timeout: Duration) -> Result<ShutdownOutcome> {
        let dir = self.defined(vm)?;
        let Some(pid) = process::read_live_pid(&dir) else {
            return Ok(ShutdownOutcome::AlreadyStopped);
        };
        let qmp_err = |command: &str| {
            let vm = vm.clone();
            let command = command.to_string();
            move |source| HypervisorError::Qmp {
                vm,
                command,
                source,
            }
        };
        let qmp = self.qmp(&dir).await?;
        let status = qmp
            .run(QueryStatus {})
            .await
            .map_err(qmp_err("query-status"))?;
        // Held for a final cut (`prelaunch`: its CPUs never ran) or its guest already off
        // (`shutdown`): nothing can answer the power button.
        let cannot_answer = matches!(status.status.as_str(), "prelaunch" | "shutdown");
        if !cannot_answer {
            qmp.run(qapi::qmp::system_powerdown {})
                .await
                .map_err(qmp_err("system_powerdown"))?;
            drop(qmp);
            if process::wait_exit(&dir, timeout).await {
                return Ok(ShutdownOutcome::GuestPoweredOff);
            }
            tracing::warn!(%vm, "guest did not power off in {timeout:?}; telling QEMU to quit");
        } else {
            // Told to quit at once, QEMU still closes disks and bitmaps cleanly.
            tracing::debug!(%vm, status = %status.status, "QEMU's guest cannot answer the power button; telling it to quit");
            drop(qmp);
        }
        if let Ok(qmp) = self.qmp(&dir).await {
            let _ = qmp.run(qapi::qmp::quit {}).await;
        }
        if process::wait_exit(&dir, Duration::from_secs(15)).await {
            return Ok(ShutdownOutcome::Forced);
        }
        process::send_kill(pid);
        if process::wait_exit(&dir, Duration::from_secs(15)).await {
            Ok(ShutdownOutcome::Killed)
        } else {
            Err(HypervisorError::Timeout {
                vm: vm.clone(),
                what: format!("killing QEMU (pid {pid})"),
                secs: 15,
            })
        }
    }

    async fn kill(&self, vm: &VmName) -> Result<()> {
        let dir = self.defined(vm)?;
        if let Some(pid) = process::read_live_pid(&dir) {
            process::send_kill(pid);
            if !process::wait_exit(&dir, Duration::from_secs(15)).await {
                return Err(HypervisorError::Timeout {
                    vm: vm.clone(),
                    what: format!("killing QEMU (pid {pid})"),
                    secs: 15,
                });
            }
        }
        Ok(())
    }

    async fn state(&self, vm: &VmName) -> Result<VmState> {
        let dir = self.defined(vm)?;
        if process::read_live_pid(&dir).is_none() {
            return Ok(VmState::Stopped);
        }
        let qmp = self.qmp(&dir).await?;
        let status = qmp
            .run(QueryStatus {})
            .await
            .map_err(|source| HypervisorError::Qmp {
                vm: vm.clone(),
                command: "query-status".into(),
                source,
            })?;
        Ok(map_status(&status))
    }

    async fn list(&self) -> Result<Vec<VmInfo>> {
        let vms = self.config.home.join("vms");
        let entries =
            std::fs::read_dir(&vms).map_err(|e| HypervisorError::io("listing", &vms, e))?;
        let mut names: Vec<VmName> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| VmName::new(e.file_name().to_string_lossy().to_string()).ok())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let Ok(spec) = self.spec(&name).await else {
                continue;
            };
            let state = match self.state(&name).await {
                Ok(s) => s,
                Err(e) => VmState::Paused(format!("unknown: {e}")),
            };
            let fenced = self
                .vm_dir(&name)
                .ok()
                .and_then(|d| std::fs::read_to_string(d.fence_marker()).ok());
            out.push(VmInfo {
                disks: self.disk_info(&spec).await,
                name,
                uuid: spec.uuid,
                state,
                memory_mib: spec.memory_mib,
                vcpus: spec.vcpus,
                nics: spec.nics,
                fenced,
            });
        }
        Ok(out)
    }

    async fn tracking_status(&self, vm: &VmName) -> Result<TrackingStatus> {
        cut::tracking_status(self, vm).await
    }

    async fn begin_full_cut(&self, vm: &VmName) -> Result<QemuCut> {
        cut::begin(self, vm, crate::hypervisor::CutKind::Full).await
    }

    async fn begin_incremental_cut(&self, vm: &VmName) -> Result<QemuCut> {
        cut::begin(self, vm, crate::hypervisor::CutKind::Incremental).await
    }

    async fn reset_tracking(&self, vm: &VmName) -> Result<()> {
        cut::reset(self, vm).await
    }

    async fn track_afresh(&self, vm: &VmName) -> Result<()> {
        self.track_afresh_offline(vm).await
    }

    async fn hydrate(&self, vm: &VmName, speed: Option<u64>) -> Result<Vec<DiskHydration>> {
        self.hydrate_disks(vm, speed).await
    }

    async fn freeze_guest(&self, vm: &VmName, limit: Duration) -> Result<Option<u64>> {
        crate::qemu::guest_agent::freeze(&self.vm_dir(vm)?, limit).await
    }

    async fn thaw_guest(&self, vm: &VmName, limit: Duration) -> Result<()> {
        crate::qemu::guest_agent::thaw_if_frozen(&self.vm_dir(vm)?, limit).await
    }
}

#[cfg(test)]
mod home_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_home_others_may_write_to_is_refused_and_left_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o1777, 0o777, 0o775, 0o2770] {
            let home = tmp.path().join(format!("home-{mode:o}"));
            std::fs::create_dir(&home).unwrap();
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = QemuDriver::new(QemuConfig::new(&home)).unwrap_err();
            assert!(
                matches!(err, HypervisorError::SharedHome(_)),
                "{mode:o}: {err}"
            );
            let now = std::fs::metadata(&home).unwrap().permissions().mode() & 0o7777;
            assert_eq!(now, mode, "a refused home keeps its mode");
        }
        // The owner's own, left readable by an older Lifeboat: taken in and tightened.
        let home = tmp.path().join("home-755");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        QemuDriver::new(QemuConfig::new(&home)).unwrap();
        let now = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
        assert_eq!(now, 0o700);
    }
}
