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
    let file = match cut.kind() {
        CutKind::Full => {
            let f = std::fs::File::create(target)
                .map_err(|e| HypervisorError::io("creating", target, e))?;
            f.set_len(size)
                .map_err(|e| HypervisorError::io("sizing", target, e))?;
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
                .map_err(|e| HypervisorError::io("writing", target, e));
            futures::future::ready(r)
        })
        .await?;
    file.sync_all()
        .map_err(|e| HypervisorError::io("syncing", target, e))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

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
