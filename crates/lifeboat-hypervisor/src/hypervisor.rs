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

impl VmState {
    /// QEMU's word for CPUs that never ran: a VM started held (`Hypervisor::start_held`)
    /// for the final cut of a stopped VM.
    pub const HELD: &'static str = "prelaunch";

    /// Whether the VM runs held (`Hypervisor::start_held`): for a final cut, or left
    /// behind when its caller died.
    pub fn held(&self) -> bool {
        matches!(self, VmState::Paused(s) if s == Self::HELD)
    }
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

/// The extents of an NBD block-status answer whose flags `wanted` accepts, with touching
/// ones merged: what a cut reports as changed (dirty) or allocated (neither hole nor zero).
pub(crate) fn wanted_extents(
    raw: Vec<lifeboat_nbd::Extent>,
    wanted: fn(u32) -> bool,
) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for e in raw.into_iter().filter(|e| wanted(e.flags)) {
        match out.last_mut() {
            Some(last) if last.offset + last.length == e.offset => last.length += e.length,
            _ => out.push(Extent {
                offset: e.offset,
                length: e.length,
            }),
        }
    }
    out
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

/// One disk's hydration: a recovered VM runs on local overlays whose backing is the
/// vault (over NBD); hydration copies the backing into the overlay while the VM runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DiskHydration {
    pub disk: DiskName,
    /// Bytes copied into the overlay so far, of `total`.
    pub done: u64,
    pub total: u64,
    /// The disk no longer has a backing: it needs nothing from the vault.
    pub hydrated: bool,
}

/// Everything the agent asks of a host's hypervisor: the agent drives every host through
/// this trait alone, whichever driver runs its VMs (`crate::Driver`).
#[allow(async_fn_in_trait)]
pub trait Hypervisor {
    type Cut: Cut;

    /// Records a VM; a missing uuid is generated. Returns the spec as stored.
    async fn define(&self, spec: VmSpec) -> Result<VmSpec>;
    async fn undefine(&self, vm: &VmName) -> Result<()>;
    async fn spec(&self, vm: &VmName) -> Result<VmSpec>;
    async fn start(&self, vm: &VmName) -> Result<()>;
    /// Starts the VM with its disks open and its CPUs held (they never run): for a cut of
    /// a stopped VM (the final sync of a planned move). A fenced VM does not start.
    async fn start_held(&self, vm: &VmName) -> Result<()>;
    /// Fences the VM: stops it at once if it runs and records `why`, after which nothing
    /// starts it on this host (it failed over; its writes would diverge). True when it
    /// was running.
    async fn fence(&self, vm: &VmName, why: &str) -> Result<bool>;
    /// Lifts a fence (the VM failed back home).
    async fn unfence(&self, vm: &VmName) -> Result<()>;
    /// Attaches the cloud-init seed at `seed` to the VM's definition (replacing one
    /// attached before), or detaches it (`None`): read at the VM's next start.
    async fn set_seed(&self, vm: &VmName, seed: Option<std::path::PathBuf>) -> Result<()>;
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
    /// Starts a stopped VM's tracking afresh, its disks just made equal to a point (a
    /// recovered VM before its first boot, home after a failback): changes count from here.
    async fn track_afresh(&self, vm: &VmName) -> Result<()>;
    /// Reports each disk's hydration, starting the copy where none runs; safe to call
    /// again and again. `speed` caps it in bytes per second.
    async fn hydrate(&self, vm: &VmName, speed: Option<u64>) -> Result<Vec<DiskHydration>>;

    /// Asks the guest's agent to freeze its filesystems (flushed, no writes) for an
    /// app-consistent cut. `None`: no agent answered within `limit`; the cut will be
    /// crash-consistent. Always follow a `Some` with `thaw_guest`.
    async fn freeze_guest(&self, vm: &VmName, limit: Duration) -> Result<Option<u64>>;
    /// Thaws what `freeze_guest` froze, also after a crash in between; a no-op otherwise.
    async fn thaw_guest(&self, vm: &VmName, limit: Duration) -> Result<()>;
}
