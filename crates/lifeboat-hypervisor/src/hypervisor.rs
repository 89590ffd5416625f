//! What the agent needs from a host's hypervisor, whatever runs the VMs.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::error::Result;
use crate::spec::{DiskFormat, DiskName, NicSpec, VmName, VmSpec};
use crate::tracking::TrackingStatus;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum VmState {
    Stopped,
    Running,
    /// Paused, or in a state where the guest does not run (QEMU's word in the detail).
    Paused(String),
    /// The guest panicked or QEMU hit an I/O or internal error.
    Crashed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownOutcome {
    AlreadyStopped,
    /// The guest answered the ACPI power button and powered off.
    GuestPoweredOff,
    /// The guest did not power off in time; QEMU was told to quit (disks and bitmaps
    /// are still closed cleanly).
    Forced,
    /// QEMU itself did not quit and was killed.
    Killed,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    pub name: DiskName,
    pub path: PathBuf,
    pub format: DiskFormat,
    pub virtual_size: u64,
    pub allocated_size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    pub name: VmName,
    pub uuid: Option<uuid::Uuid>,
    pub state: VmState,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub disks: Vec<DiskInfo>,
    pub nics: Vec<NicSpec>,
    /// Why the VM is fenced (failed over to another host), when it is: it does not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CutKind {
    /// Every allocated block: the base that tracking starts from.
    Full,
    /// Only the blocks written since the previous committed cut.
    Incremental,
}

#[derive(Debug, Clone, Serialize)]
pub struct CutDisk {
    pub name: DiskName,
    pub size: u64,
}

/// A byte range of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

/// A consistent point-in-time view of all of a VM's disks. The guest keeps running and
/// writing; reads see the disks as they were when the cut began. Finish every cut with
/// `commit` (the caller stored what it read) or `abort` (it did not: the next cut carries
/// those changes again). A cut dropped without either is aborted by the next one.
#[allow(async_fn_in_trait)]
pub trait Cut {
    fn kind(&self) -> CutKind;
    /// The tracking generation this cut closes.
    fn generation(&self) -> u64;
    fn disks(&self) -> &[CutDisk];
    /// The extents to copy: changed ones (incremental) or allocated ones (full).
    async fn changed_extents(&self, disk: &DiskName) -> Result<Vec<Extent>>;
    async fn read(&self, disk: &DiskName, offset: u64, length: u32) -> Result<Bytes>;
    async fn commit(self) -> Result<()>;
    async fn abort(self) -> Result<()>;
}

#[allow(async_fn_in_trait)]
pub trait Hypervisor {
    type Cut: Cut;

    /// Records a VM; a missing uuid is generated. Returns the spec as stored.
    async fn define(&self, spec: VmSpec) -> Result<VmSpec>;
    async fn undefine(&self, vm: &VmName) -> Result<()>;
    async fn spec(&self, vm: &VmName) -> Result<VmSpec>;
    async fn start(&self, vm: &VmName) -> Result<()>;
    /// ACPI power button; after `timeout` the VM is stopped by force.
    async fn shutdown(&self, vm: &VmName, timeout: Duration) -> Result<ShutdownOutcome>;
    /// Pulls the plug at once (for fencing and tests).
    async fn kill(&self, vm: &VmName) -> Result<()>;
    async fn state(&self, vm: &VmName) -> Result<VmState>;
    async fn list(&self) -> Result<Vec<VmInfo>>;

    async fn tracking_status(&self, vm: &VmName) -> Result<TrackingStatus>;
    /// Starts tracking: adds the bitmaps and opens a full cut in one atomic step, so no
    /// write falls between the copy and the tracking.
    async fn begin_full_cut(&self, vm: &VmName) -> Result<Self::Cut>;
    async fn begin_incremental_cut(&self, vm: &VmName) -> Result<Self::Cut>;
    /// Drops all tracking state (after `NeedsFullResync`); the next cut must be full.
    async fn reset_tracking(&self, vm: &VmName) -> Result<()>;

    /// Asks the guest's agent to freeze its filesystems (flushed, no writes) for an
    /// app-consistent cut. `None`: no agent answered within `limit`; the cut will be
    /// crash-consistent. Always follow a `Some` with `thaw_guest`.
    async fn freeze_guest(&self, vm: &VmName, limit: Duration) -> Result<Option<u64>>;
    /// Thaws what `freeze_guest` froze, also after a crash in between; a no-op otherwise.
    async fn thaw_guest(&self, vm: &VmName, limit: Duration) -> Result<()>;
}
