//! Instant recovery on the recovery host. A recovered VM's disks are qcow2 overlays whose
//! backing is the recovery point, served over NBD (by the agent, straight from the vault):
//! the VM boots at once, reads of blocks not yet local fall through to the vault, and its
//! writes stay in the overlay. `block-stream` then copies ("hydrates") every block of the
//! backing into the overlay in the background; when it completes QEMU drops the backing,
//! from the running VM and from the image header, and the VM no longer needs the vault.
//!
//! The backing is written into the overlay's header as a `json:` NBD target with a
//! reconnect delay, so a restart of the serving agent pauses reads instead of failing them.

use std::path::Path;

use crate::error::{HypervisorError, Result};
use crate::qemu::commands::{BlockStream, QueryBlockJobs, QueryNamedBlockNodes};
use crate::qemu::cut::qmp_error;
use crate::qemu::QemuDriver;
use crate::spec::{DiskName, VmName, VmSpec};

/// How long QEMU waits for a restarted NBD server before failing reads of the backing.
const NBD_RECONNECT_SECS: u32 = 60;

/// The backing of an instant-recovery overlay: export `export` on the Unix socket `socket`.
pub fn nbd_backing(socket: &Path, export: &str) -> String {
    // The whole stack, format over protocol: with only the NBD layer, QEMU 7.2 puts the
    // header's backing format (raw) on top without a `file` and refuses to open it.
    let target = serde_json::json!({
        "driver": "raw",
        "file": {
            "driver": "nbd",
            "server": { "type": "unix", "path": socket.to_string_lossy() },
            "export": export,
            "reconnect-delay": NBD_RECONNECT_SECS,
            "open-timeout": NBD_RECONNECT_SECS,
        }
    });
    format!("json:{target}")
}

/// Creates the qcow2 overlay `path` of `size` bytes over the NBD export. The server need
/// not be up yet (`-u`): QEMU opens the backing only when the VM starts.
pub async fn create_instant_overlay(
    path: &Path,
    size: u64,
    socket: &Path,
    export: &str,
) -> Result<()> {
    let backing = nbd_backing(socket, export);
    crate::qemu::offline::create_qcow2(path, size, &["-u", "-F", "raw", "-b", &backing]).await
}

pub use crate::hypervisor::DiskHydration;

fn job_id(disk: &DiskName) -> String {
    format!("hydrate-{disk}")
}

impl QemuDriver {
    /// Reports each disk's hydration, starting `block-stream` for any disk that still has
    /// a backing and no job (the first call, or a job that failed and was dismissed — a
    /// retry). Safe to call again and again.
    /// `speed` caps the copy in bytes per second (none: as fast as the backing serves).
    pub(crate) async fn hydrate_disks(
        &self,
        vm: &VmName,
        speed: Option<u64>,
    ) -> Result<Vec<DiskHydration>> {
        let (dir, qmp) = self.running_qmp(vm, "hydrating its disks").await?;
        let spec = VmSpec::load(&dir.spec())?;
        let nodes = qmp
            .run(QueryNamedBlockNodes { flat: true })
            .await
            .map_err(qmp_error(vm, "query-named-block-nodes"))?;
        let jobs = qmp
            .run(QueryBlockJobs {})
            .await
            .map_err(qmp_error(vm, "query-block-jobs"))?;
        let mut out = Vec::new();
        for disk in &spec.disks {
            let node = nodes
                .iter()
                .find(|n| n.node_name.as_deref() == Some(disk.name.as_str()))
                .ok_or_else(|| HypervisorError::Tool {
                    tool: "query-named-block-nodes".into(),
                    reason: format!("{vm} has no block node {}", disk.name),
                })?;
            let total = node.image.virtual_size;
            let id = job_id(&disk.name);
            if let Some(job) = jobs.iter().find(|j| j.device == id) {
                out.push(DiskHydration {
                    disk: disk.name.clone(),
                    done: job.offset.min(job.len),
                    total: job.len.max(total),
                    hydrated: false,
                });
                continue;
            }
            if node.backing_file.is_none() {
                out.push(DiskHydration {
                    disk: disk.name.clone(),
                    done: total,
                    total,
                    hydrated: true,
                });
                continue;
            }
            qmp.run(BlockStream {
                job_id: id,
                device: disk.name.to_string(),
                speed,
            })
            .await
            .map_err(qmp_error(vm, "block-stream"))?;
            tracing::info!(%vm, disk = %disk.name, "hydration started");
            out.push(DiskHydration {
                disk: disk.name.clone(),
                done: 0,
                total,
                hydrated: false,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_socket_export_and_reconnect() {
        let b = nbd_backing(Path::new("/run/x/vda.nbd"), "vda");
        let json: serde_json::Value =
            serde_json::from_str(b.strip_prefix("json:").unwrap()).unwrap();
        assert_eq!(json["driver"], "raw");
        let nbd = &json["file"];
        assert_eq!(nbd["server"]["path"], "/run/x/vda.nbd");
        assert_eq!(nbd["export"], "vda");
        assert_eq!(nbd["reconnect-delay"], NBD_RECONNECT_SECS);
    }
}
