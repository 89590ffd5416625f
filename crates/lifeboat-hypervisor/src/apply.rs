//! Applying a cut to a plain image file: the simplest consumer of a cut, used by the
//! `lifeboat cbt` commands, the demo, the tests and the benchmark. (The agent will stream
//! the same (offset, bytes) pieces into the vault instead.)

use std::os::unix::fs::FileExt;
use std::path::Path;

use futures::{StreamExt, TryStreamExt};

use crate::error::{HypervisorError, Result};
use crate::hypervisor::{Cut, CutKind, Extent};
use crate::spec::DiskName;

/// Reads are cut into pieces of this size, and this many are in flight at once: enough
/// to keep QEMU's NBD server busy, little enough to bound memory (32 MiB). Measured with
/// `lifeboat-bench cut --probe`: 1 MiB × 32 reads about twice as fast as 4 MiB × 8, whose
/// fresh large buffers cost a page fault per 4 KiB on every piece.
pub const PIECE: u64 = 1 << 20;
pub const IN_FLIGHT: usize = 32;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyStats {
    pub extents: usize,
    pub bytes: u64,
}

/// Splits extents into pieces of at most `piece` bytes.
pub fn pieces(extents: &[Extent], piece: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    for e in extents {
        let mut at = e.offset;
        let end = e.offset + e.length;
        while at < end {
            let len = (end - at).min(piece);
            out.push(Extent {
                offset: at,
                length: len,
            });
            at += len;
        }
    }
    out
}

/// Writes one disk of `cut` into the raw image `target`. A full cut creates (or replaces)
/// `target` as a sparse file of the disk's size; an incremental cut needs the image that
/// the previous cuts built, and writes only what changed.
pub async fn apply_to_raw<C: Cut>(cut: &C, disk: &DiskName, target: &Path) -> Result<ApplyStats> {
    let size = cut
        .disks()
        .iter()
        .find(|d| &d.name == disk)
        .map(|d| d.size)
        .ok_or_else(|| HypervisorError::Tool {
            tool: "apply".into(),
            reason: format!("the cut has no disk {disk}"),
        })?;
    // A full cut builds a new image beside the old one and replaces it only when whole:
    // a cut that fails half way must not cost the replica we had.
    let partial = target.with_extension("partial");
    let written = match cut.kind() {
        CutKind::Full => partial.as_path(),
        CutKind::Incremental => target,
    };
    let file = match cut.kind() {
        CutKind::Full => {
            // A replica holds the disk's data: its owner's only.
            let f = crate::private::open_private(written, true)
                .map_err(|e| HypervisorError::io("creating", written, e))?;
            f.set_len(size)
                .map_err(|e| HypervisorError::io("sizing", written, e))?;
            f
        }
        CutKind::Incremental => {
            let f = std::fs::File::options()
                .write(true)
                .open(target)
                .map_err(|e| {
                    HypervisorError::io("opening (apply the full cut first)", target, e)
                })?;
            let len = f
                .metadata()
                .map_err(|e| HypervisorError::io("reading", target, e))?
                .len();
            if len != size {
                return Err(HypervisorError::Tool {
                    tool: "apply".into(),
                    reason: format!(
                        "{} is {len} bytes but disk {disk} is {size}; it is not this disk's image",
                        target.display()
                    ),
                });
            }
            f
        }
    };
    let extents = cut.changed_extents(disk).await?;
    let stats = ApplyStats {
        extents: extents.len(),
        bytes: extents.iter().map(|e| e.length).sum(),
    };
    futures::stream::iter(pieces(&extents, PIECE))
        .map(|p| async move {
            cut.read(disk, p.offset, p.length as u32)
                .await
                .map(|b| (p.offset, b))
        })
        .buffered(IN_FLIGHT)
        .try_for_each(|(offset, bytes)| {
            let r = file
                .write_all_at(&bytes, offset)
                .map_err(|e| HypervisorError::io("writing", written, e));
            futures::future::ready(r)
        })
        .await?;
    file.sync_all()
        .map_err(|e| HypervisorError::io("syncing", written, e))?;
    if written != target {
        std::fs::rename(written, target)
            .map_err(|e| HypervisorError::io("replacing", target, e))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::CutDisk;
    use bytes::Bytes;

    /// A full cut of 8 MiB of 0xAB whose reads fail past 3 MiB, as when QEMU dies mid-cut.
    struct FailingCut(Vec<CutDisk>);

    impl Cut for FailingCut {
        fn kind(&self) -> CutKind {
            CutKind::Full
        }
        fn generation(&self) -> u64 {
            1
        }
        fn disks(&self) -> &[CutDisk] {
            &self.0
        }
        async fn changed_extents(&self, _: &DiskName) -> Result<Vec<Extent>> {
            Ok(vec![Extent {
                offset: 0,
                length: 8 << 20,
            }])
        }
        async fn read(&self, _: &DiskName, offset: u64, length: u32) -> Result<Bytes> {
            if offset >= 3 << 20 {
                return Err(HypervisorError::Tool {
                    tool: "test".into(),
                    reason: "QEMU went away".into(),
                });
            }
            Ok(Bytes::from(vec![0xAB; length as usize]))
        }
        async fn commit(self) -> Result<()> {
            Ok(())
        }
        async fn abort(self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_full_cut_that_fails_keeps_the_old_replica() {
        let tmp = tempfile::tempdir().unwrap();
        let replica = tmp.path().join("replica.raw");
        std::fs::write(&replica, b"the replica we had").unwrap();
        let disk = DiskName::new("vda").unwrap();
        let cut = FailingCut(vec![CutDisk {
            name: disk.clone(),
            size: 8 << 20,
        }]);
        assert!(apply_to_raw(&cut, &disk, &replica).await.is_err());
        assert_eq!(std::fs::read(&replica).unwrap(), b"the replica we had");
    }

    #[test]
    fn pieces_cover_extents_exactly() {
        let ex = [
            Extent {
                offset: 0,
                length: 10,
            },
            Extent {
                offset: 100,
                length: 25,
            },
        ];
        let p = pieces(&ex, 10);
        assert_eq!(p.iter().map(|e| e.length).sum::<u64>(), 35);
        assert_eq!(
            p.last().unwrap(),
            &Extent {
                offset: 120,
                length: 5
            }
        );
        assert!(p.iter().all(|e| e.length <= 10));
    }
}
