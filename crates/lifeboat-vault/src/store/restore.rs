//! Streaming a disk of a point into a raw file (`PointReader::restore_raw`).
//!
//! Chunks written one after another by a backup sit back to back in their pack, so the
//! restore reads them in *runs*: one ranged read for up to 4 MiB of neighbouring chunks
//! instead of one per chunk (on S3 or Azure, a request per 128 KiB chunk would dominate
//! both time and cost). Runs are opened and written on the blocking pool, several at once,
//! into the target with O_DIRECT where the file system allows (`direct_io`). Chunks of
//! zeros are never written, so holes stay holes.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use crate::direct_io::{AlignedBuf, DirectWriter, WRITE_PIECE};
use crate::format::{self, pack_key, IndexEntry, PackId};
use crate::store::error::{Result, VaultError};
use crate::store::pages::ParentPages;
use crate::store::vault::{PointRef, Vault};

/// Bytes of neighbouring chunks fetched with one ranged read.
const RUN_MAX: u64 = 4 << 20;
/// Runs fetched, opened and written at once.
const RUNS_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreStats {
    pub size: u64,
    pub data_bytes: u64,
    pub hole_bytes: u64,
}

/// Chunks stored back to back in one pack: `chunks` are (slot, entry) in pack order.
struct Run {
    pack: PackId,
    start: u64,
    end: u64,
    chunks: Vec<(u64, IndexEntry)>,
}

impl Run {
    fn new(slot: u64, e: IndexEntry) -> Run {
        let start = u64::from(e.offset);
        Run {
            pack: e.pack,
            start,
            end: start + u64::from(e.len),
            chunks: vec![(slot, e)],
        }
    }

    /// Adds `e` if it follows the run directly in the same pack; false if it does not.
    fn extend(&mut self, slot: u64, e: IndexEntry) -> bool {
        let follows = e.pack == self.pack && u64::from(e.offset) == self.end;
        if !follows || self.end - self.start + u64::from(e.len) > RUN_MAX {
            return false;
        }
        self.end += u64::from(e.len);
        self.chunks.push((slot, e));
        true
    }
}

pub(crate) async fn restore_raw(
    vault: &Vault,
    point: &PointRef,
    disk: &ParentPages,
    target: &Path,
    progress: impl Fn(u64),
) -> Result<RestoreStats> {
    let size = disk.disk().size;
    let cs = u64::from(disk.disk().chunk_size);
    // A new file holding a disk is its owner's only; an existing target (a block device,
    // the operator's file) keeps its mode.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(target)
    }
    .map_err(|e| VaultError::io(format!("creating {}", target.display()), e))?;
    file.set_len(size)
        .map_err(|e| VaultError::io(format!("sizing {}", target.display()), e))?;
    let out = Arc::new(DirectWriter::new(file, target));
    let mut stats = RestoreStats {
        size,
        ..Default::default()
    };

    // Runs are found in slot order by one task and restored, a few at once, by another.
    let (tx, rx) = tokio::sync::mpsc::channel::<Run>(RUNS_IN_FLIGHT);
    // `async move`: the sender must drop when all runs are found, or the other side
    // waits for more forever.
    let find_runs = async move {
        let mut run: Option<Run> = None;
        let mut holes = 0u64;
        for slot in 0..size.div_ceil(cs) {
            let e = disk.entry(slot).await?;
            if e.is_zero() {
                holes += cs.min(size - slot * cs);
                continue;
            }
            if let Some(r) = run.as_mut() {
                if r.extend(slot, e) {
                    continue;
                }
            }
            if let Some(full) = run.replace(Run::new(slot, e)) {
                if tx.send(full).await.is_err() {
                    return Ok(holes); // the restore side failed; its error is reported
                }
            }
        }
        if let Some(last) = run {
            let _ = tx.send(last).await;
        }
        Ok::<_, VaultError>(holes)
    };
    let restore_runs = async {
        // Owned here: a restore side that fails drops the receiver, so the finder's next
        // send fails and it ends. Left outside, a failure with more runs to find than fit
        // in the channel waited forever, every thread parked (once, in the vault bench).
        let mut rx = rx;
        let runs = futures::stream::poll_fn(|cx| rx.poll_recv(cx));
        let mut done = runs
            .map(|run| restore_run(vault, point, disk, run, out.clone()))
            .buffer_unordered(RUNS_IN_FLIGHT);
        while let Some(r) = done.next().await {
            stats.data_bytes += r?;
            progress(stats.data_bytes);
        }
        Ok::<_, VaultError>(())
    };
    let (holes, restored) = futures::join!(find_runs, restore_runs);
    restored?;
    stats.hole_bytes = holes?;
    progress(stats.data_bytes + stats.hole_bytes);
    let out =
        Arc::try_unwrap(out).map_err(|_| VaultError::Usage("restore still writing".into()))?;
    out.sync_all()
        .map_err(|e| VaultError::io(format!("syncing {}", target.display()), e))?;
    Ok(stats)
}

/// Fetches one run, opens each chunk (tag, length and id checked) and writes it to its
/// slot; returns the bytes written.
async fn restore_run(
    vault: &Vault,
    point: &PointRef,
    disk: &ParentPages,
    run: Run,
    out: Arc<DirectWriter>,
) -> Result<u64> {
    let d = disk.disk();
    let cs = u64::from(d.chunk_size);
    let size = d.size;
    let damaged = |slot: u64, reason: String| VaultError::Damaged {
        name: point.name.clone(),
        point: point.point,
        reason: format!(
            "disk {} chunk {slot} (bytes {}..{}): {reason}",
            d.name,
            slot * cs,
            (slot * cs + cs).min(size)
        ),
    };
    let sealed: Bytes = vault
        .backend
        .get_range(&pack_key(&run.pack), run.start..run.end)
        .await
        .map_err(|e| damaged(run.chunks[0].0, e.to_string()))?;
    let keys = disk.keys().clone();
    let name = d.name.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        // Chunks of consecutive slots are opened side by side into one aligned buffer and
        // written with one direct write: far fewer writes, and no copy after decryption.
        let mut written = 0u64;
        let mut i = 0;
        while i < run.chunks.len() {
            let first = run.chunks[i].0;
            let mut buf = AlignedBuf::new(WRITE_PIECE.max(cs as usize))
                .map_err(|err| (first, format!("a buffer for it: {err}")))?;
            let mut at = 0usize;
            while let Some((slot, e)) = run.chunks.get(i) {
                let len = cs.min(size - slot * cs) as usize;
                if *slot != first + (at as u64 / cs) || at + len > buf.capacity() {
                    break;
                }
                let from = (u64::from(e.offset) - run.start) as usize;
                let blob = &sealed[from..from + e.len as usize];
                let n = format::open_chunk_into(
                    &keys,
                    &e.chunk,
                    blob,
                    &mut buf.as_mut_slice()[at..at + len],
                )
                .map_err(|err| (*slot, err.to_string()))?;
                if n != len {
                    return Err((*slot, format!("holds {n} bytes, its slot needs {len}")));
                }
                at += len;
                i += 1;
            }
            buf.set_filled(at);
            out.write_buf_at(&buf, first * cs)
                .map_err(|err| (first, format!("writing it to the target: {err}")))?;
            written += at as u64;
        }
        Ok(written)
    })
    .await
    .map_err(|e| VaultError::Usage(format!("restoring disk {name} failed: {e}")))?;
    outcome.map_err(|(slot, reason)| damaged(slot, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ChunkId;

    fn entry(pack: u8, offset: u32, len: u32) -> IndexEntry {
        IndexEntry {
            chunk: ChunkId([pack; 32]),
            pack: PackId([pack; 16]),
            offset,
            len,
        }
    }

    #[test]
    fn runs_take_only_neighbours_in_one_pack_up_to_the_limit() {
        let mut r = Run::new(0, entry(1, 4, 100));
        assert!(r.extend(1, entry(1, 104, 100)));
        assert!(!r.extend(2, entry(1, 300, 100)), "a gap");
        assert!(!r.extend(2, entry(2, 204, 100)), "another pack");
        assert!(!r.extend(2, entry(1, 204, RUN_MAX as u32)), "too long");
        assert_eq!((r.start, r.end, r.chunks.len()), (4, 204, 2));
    }
}
