//! Changed-block tracking of a libvirt domain: libvirt checkpoints named
//! `lifeboat-<generation>` (the same names as the QEMU driver's bitmaps), and a record of
//! the generation this host last committed, kept in the driver's state folder.
//!
//! ```text
//!   tracking:   lifeboat-7                 changes since cut 7
//!   mid-cut:    lifeboat-7 + lifeboat-8    the backup job reads since 7; 8 is the new one
//!   committed:  lifeboat-8                 7 deleted, record says 8
//!   aborted:    lifeboat-7                 8 deleted, its bitmap merged back into 7
//! ```
//!
//! Anything else — the recorded checkpoint gone (the domain was redefined without its
//! checkpoints, someone deleted it), checkpoints this host never recorded, a backup
//! from the checkpoint that libvirt refused — means the changes since the last cut are
//! unknown: a full resync, never a silent gap. A domain whose disks cannot carry a
//! checkpoint at all (raw only) is resynced at every sync, and says so.

use std::path::{Path, PathBuf};

use crate::error::{HypervisorError, Result};
use crate::tracking::{bitmap_name, parse_generation, TrackingStatus};

/// The driver's record of one domain's tracking: `DIR/generation` holds the generation
/// last committed; `DIR/broken` why tracking cannot be trusted any more.
pub struct Record {
    dir: PathBuf,
}

impl Record {
    pub fn new(dir: PathBuf) -> Record {
        Record { dir }
    }

    pub fn generation(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("generation"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    pub fn set_generation(&self, generation: u64) -> Result<()> {
        crate::private::private_dir(&self.dir)
            .map_err(|e| HypervisorError::io("creating", &self.dir, e))?;
        let path = self.dir.join("generation");
        crate::qemu::layout::write_atomically(&path, generation.to_string().as_bytes())
    }

    pub fn broken(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("broken")).ok()
    }

    pub fn set_broken(&self, why: &str) -> Result<()> {
        crate::private::private_dir(&self.dir)
            .map_err(|e| HypervisorError::io("creating", &self.dir, e))?;
        crate::qemu::layout::write_atomically(&self.dir.join("broken"), why.as_bytes())
    }

    /// Forgets everything (tracking reset): the next cut is full.
    pub fn clear(&self) -> Result<()> {
        for f in ["generation", "broken"] {
            remove(&self.dir.join(f))?;
        }
        Ok(())
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(HypervisorError::io("removing", path, e))
        }
        _ => Ok(()),
    }
}

/// Our checkpoints' generations among a domain's checkpoint names, in order.
pub fn generations(names: &[String]) -> Vec<u64> {
    let mut g: Vec<u64> = names.iter().filter_map(|n| parse_generation(n)).collect();
    g.sort_unstable();
    g
}

/// What the domain's checkpoints and the record say together. `checkpointable`: some
/// disk can carry a checkpoint. `dirty_bytes`: what the newest one has seen, if known.
pub fn status(
    recorded: Option<u64>,
    broken: Option<String>,
    gens: &[u64],
    checkpointable: bool,
    dirty_bytes: u64,
) -> TrackingStatus {
    if let Some(reason) = broken {
        return TrackingStatus::NeedsFullResync { reason };
    }
    let Some(g) = recorded else {
        return match gens {
            [] => TrackingStatus::NotTracking,
            _ => TrackingStatus::NeedsFullResync {
                reason: format!(
                    "checkpoint {} exists but this host never recorded taking it (a domain \
                     moved from another host, or a lost record), so what it covers is unknown",
                    bitmap_name(gens[gens.len() - 1])
                ),
            },
        };
    };
    if !checkpointable {
        return TrackingStatus::NeedsFullResync {
            reason: "no disk of this domain can carry a libvirt checkpoint (libvirt keeps \
                     them on qcow2 disks only), so every sync reads its disks whole"
                .into(),
        };
    }
    match gens {
        [one] if *one == g => TrackingStatus::Tracking {
            generation: g,
            dirty_bytes,
        },
        // The commit deleted the older checkpoint and stopped before the record: the
        // point of that cut is stored (a cut is committed only after its point).
        [one] if *one == g + 1 => TrackingStatus::Tracking {
            generation: g + 1,
            dirty_bytes,
        },
        // A cut begun and neither committed nor aborted (its agent died).
        [a, b] if *a == g && *b == g + 1 => TrackingStatus::CutOpen { generation: g },
        [] => TrackingStatus::NeedsFullResync {
            reason: format!(
                "checkpoint {} is gone (the domain was redefined without its checkpoints, \
                 or someone deleted them), so the changes since the last cut are unknown",
                bitmap_name(g)
            ),
        },
        other => TrackingStatus::NeedsFullResync {
            reason: format!(
                "the domain's checkpoints are {}, the last committed cut was {}",
                other
                    .iter()
                    .map(|g| bitmap_name(*g))
                    .collect::<Vec<_>>()
                    .join(", "),
                bitmap_name(g)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resync(s: TrackingStatus, want: &str) {
        match s {
            TrackingStatus::NeedsFullResync { reason } => {
                assert!(reason.contains(want), "{reason}")
            }
            other => panic!("{other:?}, wanted a resync about {want}"),
        }
    }

    #[test]
    fn checkpoints_and_record_agree_or_it_is_a_resync() {
        assert_eq!(
            status(None, None, &[], true, 0),
            TrackingStatus::NotTracking
        );
        assert_eq!(
            status(Some(3), None, &[3], true, 9),
            TrackingStatus::Tracking {
                generation: 3,
                dirty_bytes: 9
            }
        );
        assert_eq!(
            status(Some(3), None, &[4], true, 0),
            TrackingStatus::Tracking {
                generation: 4,
                dirty_bytes: 0
            },
            "a record one behind a committed cut"
        );
        assert_eq!(
            status(Some(3), None, &[3, 4], true, 0),
            TrackingStatus::CutOpen { generation: 3 }
        );
        resync(status(Some(3), None, &[], true, 0), "lifeboat-3 is gone");
        resync(status(Some(3), None, &[7], true, 0), "lifeboat-7");
        resync(status(Some(3), None, &[2, 3], true, 0), "lifeboat-2");
        resync(status(None, None, &[5], true, 0), "never recorded");
        resync(
            status(Some(3), Some("libvirt refused".into()), &[3], true, 0),
            "libvirt refused",
        );
        resync(status(Some(1), None, &[], false, 0), "qcow2 disks only");
        assert_eq!(
            status(None, None, &[], false, 0),
            TrackingStatus::NotTracking,
            "the first cut of a raw-only domain is a plain full one"
        );
    }

    #[test]
    fn only_our_checkpoints_count() {
        let names = ["lifeboat-9", "nightly", "lifeboat-10", "lifeboat-x"].map(String::from);
        assert_eq!(generations(&names), vec![9, 10]);
    }

    #[test]
    fn the_record_survives_and_clears() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Record::new(tmp.path().join("web"));
        assert_eq!((r.generation(), r.broken()), (None, None));
        r.set_generation(4).unwrap();
        r.set_broken("x").unwrap();
        let again = Record::new(tmp.path().join("web"));
        assert_eq!(
            (again.generation(), again.broken()),
            (Some(4), Some("x".into()))
        );
        again.clear().unwrap();
        assert_eq!((r.generation(), r.broken()), (None, None));
    }
}
