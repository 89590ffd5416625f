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
//! The safe `virt` crate has no backup or checkpoint calls yet: they are called through
//! its raw `virt-sys` bindings here, each in one small function.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use lifeboat_nbd::{ConnectOptions, NbdClient};

use crate::error::{HypervisorError, Result};
use crate::hypervisor::{CutDisk, CutKind, Extent};
use crate::spec::{DiskName, VmName};

const ALLOCATION: &str = "base:allocation";

/// How a cut is asked for.
pub struct BackupRequest<'a> {
    pub uri: &'a str,
    pub domain: &'a str,
    /// The disks (targets: vda, vdb) to cut, with their sizes.
    pub disks: Vec<CutDisk>,
    /// The checkpoint this cut creates.
    pub checkpoint: String,
    /// For an incremental cut: the checkpoint it counts changes from.
    pub since: Option<String>,
    /// Where the NBD socket and the scratch images go: a folder libvirt's QEMU may write
    /// (it runs as its own user).
    pub work_dir: PathBuf,
    pub io_timeout: Duration,
}

pub struct LibvirtCut {
    uri: String,
    domain: String,
    kind: CutKind,
    checkpoint: String,
    since: Option<String>,
    disks: Vec<CutDisk>,
    clients: BTreeMap<DiskName, NbdClient>,
}

fn failed(domain: &str, what: &str, reason: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Unsupported(format!("libvirt domain {domain}: {what}: {reason}"))
}

/// XML text content or attribute value, escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
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
        xml += &format!(
            "<disk name='{}' backup='yes' type='file'><scratch file='{}'/></disk>",
            esc(d.name.as_str()),
            esc(&scratch.to_string_lossy())
        );
    }
    xml + "</disks></domainbackup>"
}

fn checkpoint_xml(req: &BackupRequest) -> String {
    let mut xml = format!(
        "<domaincheckpoint><name>{}</name><disks>",
        esc(&req.checkpoint)
    );
    for d in &req.disks {
        xml += &format!(
            "<disk name='{}' checkpoint='bitmap'/>",
            esc(d.name.as_str())
        );
    }
    xml + "</disks></domaincheckpoint>"
}

/// Runs `f` with the domain, on a blocking thread (libvirt's calls block).
async fn with_domain<T: Send + 'static>(
    uri: &str,
    domain: &str,
    f: impl FnOnce(&virt::domain::Domain) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (uri, name) = (uri.to_string(), domain.to_string());
    tokio::task::spawn_blocking(move || {
        let conn = virt::connect::Connect::open(Some(&uri))
            .map_err(|e| failed(&name, &format!("connecting to {uri}"), e))?;
        let dom = conn
            .lookup_domain_by_name(&name)
            .map_err(|e| failed(&name, "looking it up", e))?;
        f(&dom)
    })
    .await
    .map_err(|e| failed(domain, "a libvirt call", e))?
}

fn last_error() -> String {
    virt::error::Error::last_error().to_string()
}

fn backup_begin(
    dom: &virt::domain::Domain,
    backup: &str,
    checkpoint: &str,
) -> std::result::Result<(), String> {
    let (b, c) = (cstring(backup)?, cstring(checkpoint)?);
    // SAFETY: the domain pointer is live for `dom`'s lifetime; the strings outlive the call.
    let rc = unsafe { virt::sys::virDomainBackupBegin(dom.as_ptr(), b.as_ptr(), c.as_ptr(), 0) };
    if rc < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Ends the domain's backup job (a pull backup runs until told to stop).
fn end_job(dom: &virt::domain::Domain) -> std::result::Result<(), String> {
    // SAFETY: as above.
    let rc = unsafe { virt::sys::virDomainAbortJob(dom.as_ptr()) };
    if rc < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Deletes checkpoint `name`; libvirt merges its bitmap into its parent's.
fn delete_checkpoint(dom: &virt::domain::Domain, name: &str) -> std::result::Result<(), String> {
    let n = cstring(name)?;
    // SAFETY: as above; the checkpoint pointer is freed once, below.
    unsafe {
        let cp = virt::sys::virDomainCheckpointLookupByName(dom.as_ptr(), n.as_ptr(), 0);
        if cp.is_null() {
            return Err(format!("looking up checkpoint {name}: {}", last_error()));
        }
        let rc = virt::sys::virDomainCheckpointDelete(cp, 0);
        virt::sys::virDomainCheckpointFree(cp);
        if rc < 0 {
            return Err(format!("deleting checkpoint {name}: {}", last_error()));
        }
    }
    Ok(())
}

fn cstring(s: &str) -> std::result::Result<CString, String> {
    CString::new(s).map_err(|_| "an argument holds a NUL byte".to_string())
}

impl LibvirtCut {
    /// Starts the backup job with its new checkpoint and opens the disks' exports.
    pub async fn begin(req: BackupRequest<'_>) -> Result<LibvirtCut> {
        let socket = req.work_dir.join("nbd.sock");
        for d in &req.disks {
            let _ = std::fs::remove_file(req.work_dir.join(format!("scratch-{}.qcow2", d.name)));
        }
        let _ = std::fs::remove_file(&socket);
        let (backup, checkpoint) = (backup_xml(&req, &socket), checkpoint_xml(&req));
        let domain = req.domain.to_string();
        with_domain(req.uri, req.domain, move |dom| {
            backup_begin(dom, &backup, &checkpoint).map_err(|e| failed(&domain, "backup-begin", e))
        })
        .await?;
        let kind = if req.since.is_some() {
            CutKind::Incremental
        } else {
            CutKind::Full
        };
        let mut cut = LibvirtCut {
            uri: req.uri.to_string(),
            domain: req.domain.to_string(),
            kind,
            checkpoint: req.checkpoint.clone(),
            since: req.since.clone(),
            disks: req.disks.clone(),
            clients: BTreeMap::new(),
        };
        for d in &req.disks {
            let mut contexts = vec![ALLOCATION.to_string()];
            if kind == CutKind::Incremental {
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
                    let vm = VmName::new(&cut.domain)
                        .unwrap_or_else(|_| VmName::new("libvirt-domain").expect("a valid name"));
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
                &self.domain,
                "reading the cut",
                format!("it has no disk {disk}"),
            )
        })
    }

    fn nbd(&self, source: lifeboat_nbd::NbdError) -> HypervisorError {
        match VmName::new(&self.domain) {
            Ok(vm) => HypervisorError::Nbd { vm, source },
            Err(_) => failed(&self.domain, "reading the cut", source),
        }
    }

    /// Changed extents (incremental) or allocated ones (full), merged.
    pub async fn changed_extents(&self, disk: &DiskName) -> Result<Vec<Extent>> {
        let client = self.client(disk)?;
        let size = client.export_size();
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
        let domain = self.domain.clone();
        with_domain(&self.uri, &self.domain, move |dom| {
            end_job(dom).map_err(|e| failed(&domain, "ending the backup", e))?;
            let drop_name = if keep { since } else { Some(checkpoint) };
            if let Some(name) = drop_name {
                delete_checkpoint(dom, &name).map_err(|e| failed(&domain, "checkpoints", e))?;
            }
            Ok(())
        })
        .await
    }
}
