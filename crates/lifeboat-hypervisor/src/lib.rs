//! Runs VMs and reads what their guests wrote.
//!
//! The `Hypervisor` trait is what the agent needs from a host's hypervisor: define, start,
//! stop and list VMs, and changed-block tracking — a persistent dirty bitmap per disk and
//! consistent cuts that expose either every allocated block (full) or only the blocks
//! written since the previous cut (incremental). The QEMU driver implements it over QMP
//! and reads cuts over NBD. This crate knows nothing of vaults; a cut is handed to the
//! caller as (offset, bytes) extents and committed or aborted when the caller is done.
//! Everything the driver keeps on the host is its owner's only (`private`), and a disk is
//! always opened as its spec's format says, never as its content looks.
//! The demo guest (`demo_guest`: its builder, found at run time) and a guest's shell on
//! its serial port (`serial_console`) are here too: `lifeboat demo` and `up` boot it.

pub mod demo_guest;
pub mod driver;
pub mod error;
pub mod libvirt;
pub mod private;
pub mod qemu;
pub mod serial_console;
pub mod spec;

pub use error::{HypervisorError, Result};
pub use spec::{DiskFormat, DiskName, DiskSpec, NicSpec, VmName, VmSpec};
pub mod hypervisor;
pub mod tracking;

pub use driver::{Driver, DriverChoice, DriverCut, RecoveryPlace, LIBVIRT_SOCKET};
pub use hypervisor::{
    Cut, CutDisk, CutKind, DiskHydration, Extent, Hypervisor, ShutdownOutcome, VmInfo, VmState,
};
pub use qemu::{Accel, QemuConfig, QemuDriver};
pub use tracking::TrackingStatus;
pub mod apply;
