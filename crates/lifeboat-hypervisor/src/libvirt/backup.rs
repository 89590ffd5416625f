//! A consistent cut of a libvirt domain's disks through libvirt's own backup job, in pull
//! mode: `virDomainBackupBegin` with a new checkpoint, created atomically with the job,
//! exports every disk as it was at that instant over NBD on a Unix socket (scratch images
//! keep the old data while the guest writes on), and for an incremental cut also exposes
//! the blocks written since the previous checkpoint as `qemu:dirty-bitmap:backup-DISK`.
//! The existing `lifeboat-nbd` client reads both.
//!
//! Finishing: `commit` ends the job and keeps the new checkpoint (the next cut counts from
//! it) and deletes the one before, which nothing needs any more; `abort` ends the job and
//! deletes the new checkpoint, whose bitmap libvirt merges into its parent's: the next
//! incremental cut from the parent still sees every change, so an aborted cut loses none.
//!
//! A disk without a checkpoint (a raw disk: libvirt keeps checkpoints on qcow2 only) is
//! exported whole in every cut (`whole`) and read whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use lifeboat_nbd::{ConnectOptions, NbdClient};

use crate::error::{HypervisorError, Result};
use crate::hypervisor::{CutDisk, CutKind, Extent};
use crate::libvirt::call::{backup_begin, delete_checkpoint, end_backup, failed, with_domain};
use crate::libvirt::define::esc;
use crate::spec::{DiskName, VmName};

const ALLOCATION: &str = "base:allocation";

/// How a cut is asked for.
pub struct BackupRequest<'a> {
    pub uri: &'a str,
    pub domain: &'a VmName,
    /// The disks (targets: vda, vdb) to cut, with their sizes.
    pub disks: Vec<CutDisk>,
    /// The checkpoint this cut creates; `None` when no disk can carry one (raw only).
    pub checkpoint: Option<String>,
    /// For an incremental cut: the checkpoint it counts changes from.
    pub since: Option<String>,
    /// Disks with no checkpoint (raw): exported and read whole in every cut.
    pub whole: Vec<DiskName>,
    /// Where the NBD socket and the scratch images go: a folder libvirt's QEMU may write
    /// (it runs as its own user).
    pub work_dir: PathBuf,
    pub io_timeout: Duration,
}

pub struct LibvirtCut {
    uri: String,
    domain: VmName,
    kind: CutKind,
    checkpoint: Option<String>,
    since: Option<String>,
    whole: Vec<DiskName>,
    disks: Vec<CutDisk>,
    clients: BTreeMap<DiskName, NbdClient>,
}

fn backup_xml(req: &BackupRequest, socket: &Path) -> String {
    let mut xml = String::from("<domainbackup mode='pull'>");
    if let Some(since) = &req.since {
        xml += &format!("<incremental>{}</incremental>", esc(since));
    }
    xml += &format!(
        "<server transport='unix' socket='{}'/><disks>",
        esc(&socket.to_string_lossy())
    );
    for d in &req.disks {
        let scratch = req.work_dir.join(format!("scratch-{}.qcow2", d.name));
        // In an incremental backup, a disk without the checkpoint is backed up whole.
        let mode = if req.since.is_some() && req.whole.contains(&d.name) {
            " backupmode='full'"
        } else {
            ""
        };
        xml += &format!(
            "<disk name='{}' backup='yes'{mode} type='file'><scratch file='{}'/></disk>",
            esc(d.name.as_str()),
            esc(&scratch.to_string_lossy())
        );
    }
    xml + "</disks></domainbackup>"
}

/// A checkpoint's XML: `disks` with whether each carries a bitmap. `created`: a checkpoint
/// redefined over bitmaps already in the images, with its creation time (Unix seconds).
pub(crate) fn checkpoint_xml<'a>(
    name: &str,
    disks: impl IntoIterator<Item = (&'a DiskName, bool)>,
    created: Option<u64>,
) -> String {
    let mut xml = format!("<domaincheckpoint><name>{}</name>", esc(name));
    if let Some(t) = created {
        xml += &format!("<creationTime>{t}</creationTime>");
    }
    xml += "<disks>";
    for (disk, bitmap) in disks {
        xml += &match (bitmap, created) {
            (false, _) => format!("<disk name='{}' checkpoint='no'/>", esc(disk.as_str())),
            (true, None) => format!("<disk name='{}' checkpoint='bitmap'/>", esc(disk.as_str())),
            (true, Some(_)) => format!(
                "<disk name='{}' checkpoint='bitmap' bitmap='{}'/>",
                esc(disk.as_str()),
                esc(name)
            ),
        };
    }
    xml + "</disks></domaincheckpoint>"
}

impl LibvirtCut {
    /// Starts the backup job with its new checkpoint and opens the disks' exports.
    pub async fn begin(req: BackupRequest<'_>) -> Result<LibvirtCut> {
        let socket = req.work_dir.join("nbd.sock");
        for d in &req.disks {
            let _ = std::fs::remove_file(req.work_dir.join(format!("scratch-{}.qcow2", d.name)));
        }
        let _ = std::fs::remove_file(&socket);
        let backup = backup_xml(&req, &socket);
        let checkpoint = req.checkpoint.as_deref().map(|c| {
            let disks = req
                .disks
                .iter()
                .map(|d| (&d.name, !req.whole.contains(&d.name)));
            checkpoint_xml(c, disks, None)
        });
        let domain = req.domain.to_string();
        with_domain(req.uri, req.domain.as_str(), move |dom| {
            backup_begin(dom, &backup, checkpoint.as_deref())
                .map_err(|e| failed(&domain, "backup-begin", e))
        })
        .await?;
        let kind = if req.since.is_some() {
            CutKind::Incremental
        } else {
            CutKind::Full
        };
        let mut cut = LibvirtCut {
            uri: req.uri.to_string(),
            domain: req.domain.clone(),
            kind,
            checkpoint: req.checkpoint.clone(),
            since: req.since.clone(),
            whole: req.whole.clone(),
            disks: req.disks.clone(),
            clients: BTreeMap::new(),
        };
        for d in &req.disks {
            let mut contexts = vec![ALLOCATION.to_string()];
            if kind == CutKind::Incremental && !req.whole.contains(&d.name) {
                contexts.push(format!("qemu:dirty-bitmap:backup-{}", d.name));
            }
            let opened = NbdClient::connect_unix(
                &socket,
                ConnectOptions {
                    export_name: d.name.to_string(),
                    meta_contexts: contexts,
                    io_timeout: req.io_timeout,
                },
            )
            .await;
            match opened {
                Ok(c) => {
                    cut.clients.insert(d.name.clone(), c);
                }
                Err(source) => {
                    let vm = cut.domain.clone();
                    // Undo: no half-open job or checkpoint is left behind.
                    let _ = cut.finish(false).await;
                    return Err(HypervisorError::Nbd { vm, source });
                }
            }
        }
        Ok(cut)
    }

    pub fn kind(&self) -> CutKind {
        self.kind
    }

    pub fn disks(&self) -> &[CutDisk] {
        &self.disks
    }

    fn client(&self, disk: &DiskName) -> Result<&NbdClient> {
        self.clients.get(disk).ok_or_else(|| {
            failed(
                self.domain.as_str(),
                "reading the cut",
                format!("it has no disk {disk}"),
            )
        })
    }

    fn nbd(&self, source: lifeboat_nbd::NbdError) -> HypervisorError {
        HypervisorError::Nbd {
            vm: self.domain.clone(),
            source,
        }
    }

    /// Changed extents (incremental) or allocated ones (full), merged.
    pub async fn changed_extents(&self, disk: &DiskName) -> Result<Vec<Extent>> {
        let client = self.client(disk)?;
        let size = client.export_size();
        if self.kind == CutKind::Incremental && self.whole.contains(disk) {
            // No checkpoint says what changed: all of it may have, holes included (a
            // trimmed block must overwrite the parent's data), so every byte is "changed".
            return Ok(vec![Extent {
                offset: 0,
                length: size,
            }]);
        }
        let (context, wanted): (String, fn(u32) -> bool) = match self.kind {
            CutKind::Full => (ALLOCATION.into(), |flags| flags & 0b11 == 0),
            CutKind::Incremental => (format!("qemu:dirty-bitmap:backup-{disk}"), |flags| {
                flags & 1 == 1
            }),
        };
        let raw = client
            .extents(&context, 0, size)
            .await
            .map_err(|e| self.nbd(e))?;
        Ok(crate::hypervisor::wanted_extents(raw, wanted))
    }

    pub async fn read(&self, disk: &DiskName, offset: u64, length: u32) -> Result<Bytes> {
        self.client(disk)?
            .read(offset, length)
            .await
            .map_err(|e| self.nbd(e))
    }

    /// The caller stored what it read: the new checkpoint stays, the previous one goes.
    pub async fn commit(self) -> Result<()> {
        self.finish(true).await
    }

    /// The caller did not store it: the new checkpoint goes (its changes merge back into
    /// the previous one), so the next cut from the previous checkpoint carries them again.
    pub async fn abort(self) -> Result<()> {
        self.finish(false).await
    }

    async fn finish(mut self, keep: bool) -> Result<()> {
        self.clients.clear();
        let (checkpoint, since) = (self.checkpoint.clone(), self.since.clone());
        let domain = self.domain.to_string();
        with_domain(&self.uri, self.domain.as_str(), move |dom| {
            end_backup(dom).map_err(|e| failed(&domain, "ending the backup", e))?;
            if keep {
                // The new checkpoint is what the next cut needs; the old one only costs
                // space. Someone may have deleted it already: that is no failed commit.
                if let Some(old) = since {
                    if let Err(e) = delete_checkpoint(dom, &old, false) {
                        tracing::warn!(domain = %domain, "dropping the previous checkpoint: {e}");
                    }
                }
            } else if let Some(new) = checkpoint {
                delete_checkpoint(dom, &new, false)
                    .map_err(|e| failed(&domain, "checkpoints", e))?;
            }
            Ok(())
        })
        .await
    }
}
