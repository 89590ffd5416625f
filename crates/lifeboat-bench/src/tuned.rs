//! A copy of `lifeboat_hypervisor::apply::apply_to_raw` with its knobs exposed, to find
//! where a full cut's time goes: piece size, reads in flight, and where the writes run
//! (inline on the task that polls the reads, as `apply_to_raw` does; on a writer thread;
//! or nowhere, to time the NBD reads alone).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use lifeboat_hypervisor::apply::{pieces, ApplyStats};
use lifeboat_hypervisor::{Cut, CutKind, DiskName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Writes {
    /// `write_all_at` on the task that drives the reads (what `apply_to_raw` does).
    Inline,
    /// A thread does the writes; reads go on while it writes.
    Thread,
    /// Read and throw away: the NBD read rate alone.
    Discard,
    /// `apply_to_raw` itself (piece and in-flight are its constants, not the knobs).
    Lifeboat,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Knobs {
    pub piece: u64,
    pub in_flight: usize,
    pub writes: Writes,
}

/// Where an apply's time went, as far as it can tell (inline writes only).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Breakdown {
    /// Time spent in `write_all_at` (page cache copies, allocation, throttling).
    pub write_secs: f64,
    /// The final `fsync`.
    pub sync_secs: f64,
}

/// Like `apply_to_raw` (same target file rules), with `knobs`.
pub async fn apply<C: Cut>(
    cut: &C,
    disk: &DiskName,
    target: &Path,
    knobs: Knobs,
) -> Result<(ApplyStats, Breakdown)> {
    if knobs.writes == Writes::Lifeboat {
        let stats = lifeboat_hypervisor::apply::apply_to_raw(cut, disk, target).await?;
        return Ok((stats, Breakdown::default()));
    }
    let mut breakdown = Breakdown::default();
    let Some(size) = cut.disks().iter().find(|d| &d.name == disk).map(|d| d.size) else {
        bail!("the cut has no disk {disk}");
    };
    let file = match cut.kind() {
        CutKind::Full => {
            let f = std::fs::File::create(target)
                .with_context(|| format!("create {}", target.display()))?;
            f.set_len(size)?;
            f
        }
        CutKind::Incremental => std::fs::File::options()
            .write(true)
            .open(target)
            .with_context(|| format!("open {}", target.display()))?,
    };
    let extents = cut.changed_extents(disk).await?;
    let stats = ApplyStats {
        extents: extents.len(),
        bytes: extents.iter().map(|e| e.length).sum(),
    };
    let reads = futures::stream::iter(pieces(&extents, knobs.piece))
        .map(|p| async move {
            cut.read(disk, p.offset, p.length as u32)
                .await
                .map(|b| (p.offset, b))
        })
        .buffered(knobs.in_flight);
    match knobs.writes {
        Writes::Inline => {
            reads
                .map_err(anyhow::Error::from)
                .try_for_each(|(offset, bytes)| {
                    let started = std::time::Instant::now();
                    let r = file.write_all_at(&bytes, offset).map_err(Into::into);
                    breakdown.write_secs += started.elapsed().as_secs_f64();
                    futures::future::ready(r)
                })
                .await?
        }
        Writes::Lifeboat => unreachable!("handled above"),
        Writes::Discard => {
            reads
                .map_err(anyhow::Error::from)
                .try_for_each(|_| futures::future::ok(()))
                .await?
        }
        Writes::Thread => {
            // Bounded: at most `in_flight` pieces wait for the writer, so memory stays
            // bounded at twice that.
            let (tx, rx) = mpsc::sync_channel::<(u64, Bytes)>(knobs.in_flight);
            let writer_file = file.try_clone()?;
            let writer = std::thread::spawn(move || -> std::io::Result<()> {
                for (offset, bytes) in rx {
                    writer_file.write_all_at(&bytes, offset)?;
                }
                Ok(())
            });
            let sent = reads
                .map_err(anyhow::Error::from)
                .try_for_each(|piece| {
                    let tx = tx.clone();
                    async move {
                        // A blocking send would stall the runtime thread; the writer
                        // drains fast, so hand it over on a blocking-pool thread.
                        tokio::task::spawn_blocking(move || tx.send(piece))
                            .await?
                            .map_err(|_| anyhow::anyhow!("the writer thread stopped"))
                    }
                })
                .await;
            drop(tx);
            let written = writer
                .join()
                .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
            sent?;
            written.with_context(|| format!("write {}", target.display()))?;
        }
    }
    let started = std::time::Instant::now();
    file.sync_all()?;
    breakdown.sync_secs = started.elapsed().as_secs_f64();
    Ok((stats, breakdown))
}
