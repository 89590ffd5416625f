//! Consistent cuts of a running VM (pull-mode fleecing, checked on QEMU 7.2).
//!
//! Opening a cut, for every disk at once:
//! 1. `blockdev-add` a qcow2 overlay whose backing is the live disk node;
//! 2. one `transaction`: add bitmap `lifeboat-<g+1>` (recording), disable `lifeboat-<g>`,
//!    and start `blockdev-backup sync=none` from the disk into the overlay — from here
//!    QEMU copies each block into the overlay before the guest overwrites it, so the
//!    overlay reads as the disk at this instant while the guest goes on writing;
//!    a full cut only adds `lifeboat-1` in the same transaction, so no write can fall
//!    between the copy and the tracking;
//! 3. `nbd-server-start` on the VM's `nbd.sock` and `block-export-add` each overlay,
//!    read-only, with the frozen bitmap, which the reader sees as the NBD meta context
//!    `qemu:dirty-bitmap:lifeboat-<g>`.
//!
//! Closing it: delete the exports, stop the server, cancel the backup jobs, delete the
//! overlays; then commit (remove the frozen bitmap) or abort (merge it into the recording
//! one). A process holding a cut keeps an exclusive `flock` on `cut.lock`; whoever takes
//! the lock next and finds leftovers knows their owner died and undoes them first.

use std::collections::BTreeMap;
use std::fs::File;

use bytes::Bytes;
use lifeboat_nbd::{ConnectOptions, NbdClient};
use nix::fcntl::{Flock, FlockArg};

use crate::error::{HypervisorError, Result};
use crate::hypervisor::{Cut, CutDisk, CutKind, Extent};
use crate::qemu::commands::{self as cmd, NamedNode};
use crate::qemu::driver::QemuDriver;
use crate::qemu::layout::VmDir;
use crate::qemu::qmp::{Qmp, QmpError};
use crate::qemu::record::{self, Record};
use crate::qemu::teardown;
use crate::spec::{DiskFormat, DiskName, VmName, VmSpec};
use crate::tracking::{self, bitmap_name, DiskTracking, TrackingStatus};

pub(crate) const FLEECE_PREFIX: &str = "lb-fleece-";
pub(crate) const EXPORT_PREFIX: &str = "lb-export-";
const ALLOCATION: &str = "base:allocation";

pub struct QemuCut {
    driver: QemuDriver,
    dir: VmDir,
    spec: VmSpec,
    kind: CutKind,
    /// The bitmap generation this cut reads (incremental) or creates (full).
    generation: u64,
    disks: Vec<CutDisk>,
    clients: BTreeMap<DiskName, NbdClient>,
    _lock: Flock<File>,
}

pub(crate) fn qmp_error(vm: &VmName, command: &str) -> impl FnOnce(QmpError) -> HypervisorError {
    let vm = vm.clone();
    let command = command.to_string();
    move |source| HypervisorError::Qmp {
        vm,
        command,
        source,
    }
}

pub(crate) fn fleece_node(disk: &DiskName) -> String {
    format!("{FLEECE_PREFIX}{disk}")
}

/// Takes the VM's cut lock without waiting: two cuts of one VM at once would fight over
/// the same bitmaps.
fn lock(dir: &VmDir) -> Result<Flock<File>> {
    let path = dir.cut_lock();
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(crate::private::FILE_MODE)
        .open(&path)
        .map_err(|e| HypervisorError::io("opening", &path, e))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| HypervisorError::WrongState {
        vm: dir.name.clone(),
        state: "busy".into(),
        what: "another process has a cut of it open; wait for it to finish".into(),
    })
}

fn lock_is_free(dir: &VmDir) -> bool {
    lock(dir).is_ok()
}

async fn query_nodes(qmp: &Qmp, vm: &VmName) -> Result<Vec<NamedNode>> {
    qmp.run(cmd::QueryNamedBlockNodes { flat: true })
        .await
        .map_err(qmp_error(vm, "query-named-block-nodes"))
}

fn disk_node<'a>(nodes: &'a [NamedNode], vm: &VmName, disk: &DiskName) -> Result<&'a NamedNode> {
    nodes
        .iter()
        .find(|n| n.node_name.as_deref() == Some(disk.as_str()))
        .ok_or_else(|| HypervisorError::WrongState {
            vm: vm.clone(),
            state: "running".into(),
            what: format!("QEMU has no block node {disk}; was the VM started by Lifeboat?"),
        })
}

fn per_disk_tracking(spec: &VmSpec, nodes: &[NamedNode]) -> Result<Vec<(String, DiskTracking)>> {
    spec.disks
        .iter()
        .map(|d| {
            let node = disk_node(nodes, &spec.name, &d.name)?;
            Ok((
                d.name.to_string(),
                tracking::disk_tracking(d.name.as_str(), &node.dirty_bitmaps),
            ))
        })
        .collect()
}

pub async fn tracking_status(driver: &QemuDriver, vm: &VmName) -> Result<TrackingStatus> {
    let spec = crate::hypervisor::Hypervisor::spec(driver, vm).await?;
    let dir = driver.vm_dir(vm)?;
    let rec = record::read(&dir)?;
    let disks = if crate::qemu::process::read_live_pid(&dir).is_some() {
        let qmp = driver.qmp(&dir).await?;
        per_disk_tracking(&spec, &query_nodes(&qmp, vm).await?)?
    } else {
        crate::qemu::offline::per_disk_tracking(&spec).await?
    };
    if let Record::FullCutOpen(g) = rec {
        return Ok(if lock_is_free(&dir) {
            // Its owner died: the next cut removes its bitmaps. It never became a base.
            TrackingStatus::NotTracking
        } else {
            TrackingStatus::CutOpen { generation: g }
        });
    }
    Ok(tracking::vm_tracking(&disks, rec.committed()))
}

pub async fn reset(driver: &QemuDriver, vm: &VmName) -> Result<()> {
    let (dir, qmp) = driver.running_qmp(vm, "resetting tracking").await?;
    let spec = VmSpec::load(&dir.spec())?;
    let _lock = lock(&dir)?;
    teardown::remove_leftovers(&qmp, &dir).await?;
    let nodes = query_nodes(&qmp, vm).await?;
    let mut actions = Vec::new();
    for d in &spec.disks {
        for b in &disk_node(&nodes, vm, &d.name)?.dirty_bitmaps {
            if tracking::parse_generation(&b.name).is_some() {
                actions.push(cmd::remove_bitmap(d.name.as_str(), &b.name));
            }
        }
    }
    if !actions.is_empty() {
        qmp.run(cmd::transaction(actions))
            .await
            .map_err(qmp_error(vm, "transaction (remove bitmaps)"))?;
    }
    record::write(&dir, Record::None)
}

/// Puts right what a process that died with a cut open left behind.
async fn recover(qmp: &Qmp, dir: &VmDir, spec: &VmSpec) -> Result<()> {
    teardown::remove_leftovers(qmp, dir).await?;
    let vm = &spec.name;
    let nodes = query_nodes(qmp, vm).await?;
    let mut actions = Vec::new();
    let rec = record::read(dir)?;
    for (disk, t) in per_disk_tracking(spec, &nodes)? {
        match (rec, t) {
            (Record::FullCutOpen(g), DiskTracking::Active { generation, .. })
                if generation == g =>
            {
                actions.push(cmd::remove_bitmap(&disk, &bitmap_name(g)));
            }
            (_, DiskTracking::Interrupted { frozen, active }) => {
                actions.push(cmd::merge_bitmap(
                    &disk,
                    &bitmap_name(frozen),
                    &bitmap_name(active),
                ));
                actions.push(cmd::remove_bitmap(&disk, &bitmap_name(frozen)));
            }
            _ => {}
        }
    }
    if !actions.is_empty() {
        tracing::warn!(%vm, "undoing a cut left open by a process that died");
        qmp.run(cmd::transaction(actions))
            .await
            .map_err(qmp_error(vm, "transaction (undo open cut)"))?;
    }
    let after =
        tracking::common_generation(&per_disk_tracking(spec, &query_nodes(qmp, vm).await?)?);
    match (rec, after) {
        (Record::FullCutOpen(_), _) => record::write(dir, Record::None)?,
        (Record::Active(e), Some(g)) if g == e + 1 => record::write(dir, Record::Active(g))?,
        _ => {}
    }
    Ok(())
}

pub async fn begin(driver: &QemuDriver, vm: &VmName, kind: CutKind) -> Result<QemuCut> {
    let (dir, qmp) = driver.running_qmp(vm, "taking a cut").await?;
    let spec = VmSpec::load(&dir.spec())?;
    let lock = lock(&dir)?;
    recover(&qmp, &dir, &spec).await?;

    let nodes = query_nodes(&qmp, vm).await?;
    let status = tracking::vm_tracking(
        &per_disk_tracking(&spec, &nodes)?,
        record::read(&dir)?.committed(),
    );
    let generation = match (kind, status) {
        (_, TrackingStatus::NeedsFullResync { reason }) => {
            return Err(HypervisorError::NeedsFullResync {
                vm: vm.clone(),
                reason,
            })
        }
        (CutKind::Full, TrackingStatus::NotTracking) => 1,
        (CutKind::Full, _) => {
            return Err(HypervisorError::WrongState {
                vm: vm.clone(),
                state: "tracked".into(),
                what: "take an incremental cut, or reset tracking to start over with a full one"
                    .into(),
            })
        }
        (CutKind::Incremental, TrackingStatus::Tracking { generation, .. }) => generation,
        (CutKind::Incremental, _) => return Err(HypervisorError::NotTracking { vm: vm.clone() }),
    };

    let mut disks = Vec::new();
    for d in &spec.disks {
        let node = disk_node(&nodes, vm, &d.name)?;
        disks.push(CutDisk {
            name: d.name.clone(),
            size: node.image.virtual_size,
        });
    }

    let mut cut = QemuCut {
        driver: driver.clone(),
        dir,
        spec,
        kind,
        generation,
        disks,
        clients: BTreeMap::new(),
        _lock: lock,
    };
    match cut.open(&qmp).await {
        Ok(()) => Ok(cut),
        Err(e) => {
            // Leave the VM as it was: no overlay, no export, bitmaps as before.
            if let Err(undo) = cut.close(&qmp, false).await {
                tracing::error!(%vm, "undoing a failed cut also failed: {undo}");
            }
            Err(e)
        }
    }
}

impl QemuCut {
    async fn open(&mut self, qmp: &Qmp) -> Result<()> {
        let vm = self.spec.name.clone();
        for d in &self.disks {
            let overlay = self.dir.fleece_overlay(&d.name);
            crate::qemu::offline::create_overlay(&overlay, d.size).await?;
            qmp.run(cmd::BlockdevAddOverlay::new(
                fleece_node(&d.name),
                overlay.display().to_string(),
                d.name.to_string(),
            ))
            .await
            .map_err(qmp_error(&vm, "blockdev-add (fleecing overlay)"))?;
        }

        let mut actions = Vec::new();
        for d in &self.spec.disks {
            let node = d.name.as_str();
            let persistent = d.format == DiskFormat::Qcow2;
            match self.kind {
                CutKind::Full => actions.push(cmd::add_bitmap(
                    node,
                    &bitmap_name(self.generation),
                    persistent,
                )),
                CutKind::Incremental => {
                    actions.push(cmd::add_bitmap(
                        node,
                        &bitmap_name(self.generation + 1),
                        persistent,
                    ));
                    actions.push(cmd::disable_bitmap(node, &bitmap_name(self.generation)));
                }
            }
            actions.push(cmd::fleece(
                &fleece_node(&d.name),
                node,
                &fleece_node(&d.name),
            ));
        }
        if self.kind == CutKind::Full {
            // Written first: if we die after the transaction, the next owner knows these
            // bitmaps never became a base and removes them.
            record::write(&self.dir, Record::FullCutOpen(self.generation))?;
        }
        qmp.run(cmd::transaction(actions))
            .await
            .map_err(qmp_error(&vm, "transaction (begin cut)"))?;

        let socket = self.dir.nbd_socket();
        let _ = std::fs::remove_file(&socket);
        qmp.run(cmd::NbdServerStartUnix::new(socket.display().to_string()))
            .await
            .map_err(qmp_error(&vm, "nbd-server-start"))?;
        // QEMU binds it under its umask (027); it serves the disks at this cut.
        crate::private::make_private(&socket)
            .map_err(|e| HypervisorError::io("making private", &socket, e))?;
        let frozen = bitmap_name(self.generation);
        for d in &self.disks {
            qmp.run(cmd::BlockExportAddNbd {
                kind: "nbd",
                id: format!("{EXPORT_PREFIX}{}", d.name),
                node_name: fleece_node(&d.name),
                name: d.name.to_string(),
                writable: false,
                bitmaps: match self.kind {
                    CutKind::Incremental => vec![frozen.clone()],
                    CutKind::Full => vec![],
                },
            })
            .await
            .map_err(qmp_error(&vm, "block-export-add"))?;
        }
        for d in &self.disks {
            let mut contexts = vec![ALLOCATION.to_string()];
            if self.kind == CutKind::Incremental {
                contexts.push(format!("qemu:dirty-bitmap:{frozen}"));
            }
            let client = NbdClient::connect_unix(
                &socket,
                ConnectOptions {
                    export_name: d.name.to_string(),
                    meta_contexts: contexts,
                    io_timeout: self.driver.config.nbd_timeout,
                },
            )
            .await
            .map_err(|source| HypervisorError::Nbd {
                vm: vm.clone(),
                source,
            })?;
            self.clients.insert(d.name.clone(), client);
        }
        Ok(())
    }

    /// Tears the cut down and settles the bitmaps: `keep` = commit, else abort.
    async fn close(&mut self, qmp: &Qmp, keep: bool) -> Result<()> {
        for (_, client) in std::mem::take(&mut self.clients) {
            let _ = client.disconnect().await;
        }
        teardown::remove_leftovers(qmp, &self.dir).await?;
        let vm = &self.spec.name;
        let nodes = query_nodes(qmp, vm).await?;
        let g = self.generation;
        let mut actions = Vec::new();
        for d in &self.spec.disks {
            let have: Vec<&str> = disk_node(&nodes, vm, &d.name)?
                .dirty_bitmaps
                .iter()
                .map(|b| b.name.as_str())
                .collect();
            let has = |gen: u64| have.contains(&bitmap_name(gen).as_str());
            let node = d.name.as_str();
            match (self.kind, keep) {
                (CutKind::Full, true) => {}
                (CutKind::Full, false) if has(g) => {
                    actions.push(cmd::remove_bitmap(node, &bitmap_name(g)))
                }
                (CutKind::Incremental, true) if has(g) => {
                    actions.push(cmd::remove_bitmap(node, &bitmap_name(g)))
                }
                (CutKind::Incremental, false) if has(g) && has(g + 1) => {
                    actions.push(cmd::merge_bitmap(
                        node,
                        &bitmap_name(g),
                        &bitmap_name(g + 1),
                    ));
                    actions.push(cmd::remove_bitmap(node, &bitmap_name(g)));
                }
                _ => {}
            }
        }
        if !actions.is_empty() {
            qmp.run(cmd::transaction(actions))
                .await
                .map_err(qmp_error(vm, "transaction (end cut)"))?;
        }
        let after = tracking::common_generation(&per_disk_tracking(
            &self.spec,
            &query_nodes(qmp, vm).await?,
        )?);
        match (after, self.kind, keep) {
            (Some(g), _, _) => record::write(&self.dir, Record::Active(g)),
            // An aborted full cut leaves nothing tracked.
            (None, CutKind::Full, false) => record::write(&self.dir, Record::None),
            // Anything else is broken; keep the record, so status says tracking was lost.
            _ => Ok(()),
        }
    }

    async fn finish(mut self, keep: bool) -> Result<()> {
        let qmp = self.driver.qmp(&self.dir).await?;
        self.close(&qmp, keep).await
    }

    fn client(&self, disk: &DiskName) -> Result<&NbdClient> {
        self.clients
            .get(disk)
            .ok_or_else(|| HypervisorError::WrongState {
                vm: self.spec.name.clone(),
                state: "in a cut".into(),
                what: format!("the cut has no disk {disk}"),
            })
    }
}

impl Cut for QemuCut {
    fn kind(&self) -> CutKind {
        self.kind
    }
    fn generation(&self) -> u64 {
        self.generation
    }
    fn disks(&self) -> &[CutDisk] {
        &self.disks
    }

    async fn changed_extents(&self, disk: &DiskName) -> Result<Vec<Extent>> {
        let client = self.client(disk)?;
        let size = client.export_size();
        let nbd = |source| HypervisorError::Nbd {
            vm: self.spec.name.clone(),
            source,
        };
        let (context, wanted): (String, fn(u32) -> bool) = match self.kind {
            // Neither a hole nor reads-as-zero: real data to copy.
            CutKind::Full => (ALLOCATION.into(), |flags| flags & 0b11 == 0),
            CutKind::Incremental => (
                format!("qemu:dirty-bitmap:{}", bitmap_name(self.generation)),
                |flags| flags & 1 == 1,
            ),
        };
        let raw = client.extents(&context, 0, size).await.map_err(nbd)?;
        Ok(crate::hypervisor::wanted_extents(raw, wanted))
    }

    async fn read(&self, disk: &DiskName, offset: u64, length: u32) -> Result<Bytes> {
        self.client(disk)?
            .read(offset, length)
            .await
            .map_err(|source| HypervisorError::Nbd {
                vm: self.spec.name.clone(),
                source,
            })
    }

    async fn commit(self) -> Result<()> {
        self.finish(true).await
    }

    async fn abort(self) -> Result<()> {
        self.finish(false).await
    }
}
