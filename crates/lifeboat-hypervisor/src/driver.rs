//! The driver an agent runs its host with, chosen at start (`lifeboat agent --hypervisor`):
//! one type for the agent to hold, dispatching every `Hypervisor` call to the driver
//! behind it: the QEMU driver (the VMs Lifeboat defines from its TOML spec) or the
//! libvirt driver (the domains an administrator already has).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{HypervisorError, Result};
use crate::hypervisor::{
    Cut, CutDisk, CutKind, DiskHydration, Extent, Hypervisor, ShutdownOutcome, VmInfo, VmState,
};
use crate::libvirt::{DomainCut, LibvirtConfig, LibvirtDriver};
use crate::qemu::cut::QemuCut;
use crate::qemu::QemuDriver;
use crate::spec::{DiskName, VmName, VmSpec};
use crate::tracking::TrackingStatus;

/// Which driver `lifeboat agent --hypervisor` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverChoice {
    /// libvirt when its socket answers, else the QEMU driver.
    Auto,
    Libvirt,
    Qemu,
}

/// Where libvirt's system daemon listens on Debian and most distributions.
pub const LIBVIRT_SOCKET: &str = "/var/run/libvirt/libvirt-sock";

/// Where a host keeps its recovered VMs (`Driver::recovery_place`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlace {
    /// One folder per recovered VM below it, private to the agent (and to `owner`).
    pub root: std::path::PathBuf,
    /// The user and group the hypervisor runs QEMU as, when not the agent's own: the
    /// recovery's folder and sockets are handed to it (libvirt's `libvirt-qemu`).
    pub owner: Option<(u32, u32)>,
}

/// The driver of one host.
#[derive(Clone)]
pub enum Driver {
    Qemu(QemuDriver),
    Libvirt(LibvirtDriver),
}

impl Driver {
    /// The driver `choice` calls for on this host: `qemu` is the QEMU driver, `libvirt`
    /// how the libvirt driver would run; `libvirt.uri`'s daemon must answer for it.
    pub fn choose(
        choice: DriverChoice,
        qemu: QemuDriver,
        libvirt: LibvirtConfig,
        libvirt_socket: &Path,
    ) -> Result<Driver> {
        let libvirt_answers = std::os::unix::net::UnixStream::connect(libvirt_socket).is_ok();
        match choice {
            DriverChoice::Qemu => Ok(Driver::Qemu(qemu)),
            DriverChoice::Libvirt if !libvirt_answers => {
                Err(HypervisorError::Unsupported(format!(
                    "libvirt does not answer at {}: start libvirtd (`systemctl start libvirtd`), \
                     or run the agent with --hypervisor qemu",
                    libvirt_socket.display()
                )))
            }
            DriverChoice::Libvirt => Ok(Driver::Libvirt(LibvirtDriver::new(libvirt)?)),
            DriverChoice::Auto if libvirt_answers => {
                Ok(Driver::Libvirt(LibvirtDriver::new(libvirt)?))
            }
            DriverChoice::Auto => Ok(Driver::Qemu(qemu)),
        }
    }

    /// Where recovered VMs' disks and the sockets serving their points go on this host,
    /// and who must be able to open those sockets.
    pub fn recovery_place(&self, home: &Path) -> RecoveryPlace {
        match self {
            Driver::Qemu(_) => RecoveryPlace {
                root: home.join("recovered"),
                owner: None,
            },
            Driver::Libvirt(d) => d.recovery_place(),
        }
    }

    /// The driver's name, for the agent's hello and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Driver::Qemu(_) => "qemu",
            Driver::Libvirt(_) => "libvirt",
        }
    }
}

/// A cut of whichever driver made it.
pub enum DriverCut {
    Qemu(QemuCut),
    Libvirt(DomainCut),
}

impl Cut for DriverCut {
    fn kind(&self) -> CutKind {
        match self {
            DriverCut::Qemu(c) => c.kind(),
            DriverCut::Libvirt(c) => c.kind(),
        }
    }
    fn generation(&self) -> u64 {
        match self {
            DriverCut::Qemu(c) => c.generation(),
            DriverCut::Libvirt(c) => c.generation(),
        }
    }
    fn disks(&self) -> &[CutDisk] {
        match self {
            DriverCut::Qemu(c) => c.disks(),
            DriverCut::Libvirt(c) => c.disks(),
        }
    }
    async fn changed_extents(&self, disk: &DiskName) -> Result<Vec<Extent>> {
        match self {
            DriverCut::Qemu(c) => c.changed_extents(disk).await,
            DriverCut::Libvirt(c) => c.changed_extents(disk).await,
        }
    }
    async fn read(&self, disk: &DiskName, offset: u64, length: u32) -> Result<Bytes> {
        match self {
            DriverCut::Qemu(c) => c.read(disk, offset, length).await,
            DriverCut::Libvirt(c) => c.read(disk, offset, length).await,
        }
    }
    async fn commit(self) -> Result<()> {
        match self {
            DriverCut::Qemu(c) => c.commit().await,
            DriverCut::Libvirt(c) => c.commit().await,
        }
    }
    async fn abort(self) -> Result<()> {
        match self {
            DriverCut::Qemu(c) => c.abort().await,
            DriverCut::Libvirt(c) => c.abort().await,
        }
    }
}

/// Calls `$call` on the driver behind `$self`.
macro_rules! each {
    ($self:ident, $d:ident => $call:expr) => {
        match $self {
            Driver::Qemu($d) => $call,
            Driver::Libvirt($d) => $call,
        }
    };
}

impl Hypervisor for Driver {
    type Cut = DriverCut;

    async fn define(&self, spec: VmSpec) -> Result<VmSpec> {
        each!(self, d => d.define(spec).await)
    }
    async fn undefine(&self, vm: &VmName) -> Result<()> {
        each!(self, d => d.undefine(vm).await)
    }
    async fn spec(&self, vm: &VmName) -> Result<VmSpec> {
        each!(self, d => d.spec(vm).await)
    }
    async fn start(&self, vm: &VmName) -> Result<()> {
        each!(self, d => d.start(vm).await)
    }
    async fn start_held(&self, vm: &VmName) -> Result<()> {
        each!(self, d => d.start_held(vm).await)
    }
    async fn fence(&self, vm: &VmName, why: &str) -> Result<bool> {
        each!(self, d => d.fence(vm, why).await)
    }
    async fn unfence(&self, vm: &VmName) -> Result<()> {
        each!(self, d => d.unfence(vm).await)
    }
    async fn set_seed(&self, vm: &VmName, seed: Option<std::path::PathBuf>) -> Result<()> {
        each!(self, d => d.set_seed(vm, seed).await)
    }
    async fn shutdown(&self, vm: &VmName, timeout: Duration) -> Result<ShutdownOutcome> {
        each!(self, d => d.shutdown(vm, timeout).await)
    }
    async fn kill(&self, vm: &VmName) -> Result<()> {
        each!(self, d => d.kill(vm).await)
    }
    async fn state(&self, vm: &VmName) -> Result<VmState> {
        each!(self, d => d.state(vm).await)
    }
    async fn list(&self) -> Result<Vec<VmInfo>> {
        each!(self, d => d.list().await)
    }
    async fn tracking_status(&self, vm: &VmName) -> Result<TrackingStatus> {
        each!(self, d => d.tracking_status(vm).await)
    }
    async fn begin_full_cut(&self, vm: &VmName) -> Result<DriverCut> {
        match self {
            Driver::Qemu(d) => d.begin_full_cut(vm).await.map(DriverCut::Qemu),
            Driver::Libvirt(d) => d.begin_full_cut(vm).await.map(DriverCut::Libvirt),
        }
    }
    async fn begin_incremental_cut(&self, vm: &VmName) -> Result<DriverCut> {
        match self {
            Driver::Qemu(d) => d.begin_incremental_cut(vm).await.map(DriverCut::Qemu),
            Driver::Libvirt(d) => d.begin_incremental_cut(vm).await.map(DriverCut::Libvirt),
        }
    }
    async fn reset_tracking(&self, vm: &VmName) -> Result<()> {
        each!(self, d => d.reset_tracking(vm).await)
    }
    async fn track_afresh(&self, vm: &VmName) -> Result<()> {
        each!(self, d => d.track_afresh(vm).await)
    }
    async fn hydrate(&self, vm: &VmName, speed: Option<u64>) -> Result<Vec<DiskHydration>> {
        each!(self, d => d.hydrate(vm, speed).await)
    }
    async fn freeze_guest(&self, vm: &VmName, limit: Duration) -> Result<Option<u64>> {
        each!(self, d => d.freeze_guest(vm, limit).await)
    }
    async fn thaw_guest(&self, vm: &VmName, limit: Duration) -> Result<()> {
        each!(self, d => d.thaw_guest(vm, limit).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::QemuConfig;

    fn qemu(home: &Path) -> QemuDriver {
        QemuDriver::new(QemuConfig::new(home)).unwrap()
    }

    #[test]
    fn auto_takes_libvirt_when_it_answers_and_qemu_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("libvirt-sock");
        let libvirt = || LibvirtConfig::new(tmp.path());
        for answers in [false, true] {
            // A listening socket stands for a libvirtd that answers.
            let _listener =
                answers.then(|| std::os::unix::net::UnixListener::bind(&socket).unwrap());
            let auto = Driver::choose(DriverChoice::Auto, qemu(tmp.path()), libvirt(), &socket);
            let want = if answers { "libvirt" } else { "qemu" };
            assert_eq!(auto.unwrap().kind(), want, "libvirt answers: {answers}");
            let q = Driver::choose(DriverChoice::Qemu, qemu(tmp.path()), libvirt(), &socket);
            assert_eq!(q.unwrap().kind(), "qemu");
            let l = Driver::choose(DriverChoice::Libvirt, qemu(tmp.path()), libvirt(), &socket);
            if answers {
                assert_eq!(l.unwrap().kind(), "libvirt");
            } else {
                let text = l.err().expect("no libvirt to drive").to_string();
                assert!(
                    text.contains("does not answer") && text.contains("--hypervisor qemu"),
                    "{text}"
                );
            }
            let _ = std::fs::remove_file(&socket);
        }
    }
}
