//! Changed-block tracking state, read from the dirty bitmaps QEMU reports.
//!
//! Each tracked disk carries persistent bitmaps named `lifeboat-<generation>`:
//!
//! ```text
//!   tracking:     lifeboat-7 (recording)                       one bitmap, recording
//!   mid-cut:      lifeboat-7 (frozen)  + lifeboat-8 (recording) the cut reads lifeboat-7
//!   committed:    lifeboat-8 (recording)                       lifeboat-7 removed
//!   aborted:      lifeboat-8 (recording) ∪= lifeboat-7         nothing written is lost
//! ```
//!
//! The bitmaps themselves are the state, so a driver that died mid-cut can tell what
//! happened after a restart. Anything else — a bitmap QEMU marks inconsistent (QEMU was
//! killed before it could save it), disks of one VM at different generations, a disk
//! without a bitmap while its siblings have one — means the changes since the last cut
//! are unknown, and the VM needs a full resync rather than a silent gap.

use serde::Serialize;

use crate::qemu::commands::BitmapInfo;

pub const BITMAP_PREFIX: &str = "lifeboat-";

pub fn bitmap_name(generation: u64) -> String {
    format!("{BITMAP_PREFIX}{generation}")
}

/// The generation of one of our bitmaps; `None` for bitmaps that are not ours.
pub fn parse_generation(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(BITMAP_PREFIX)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What one disk's bitmaps say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskTracking {
    Untracked,
    Active {
        generation: u64,
        dirty_bytes: u64,
    },
    /// A cut was begun and neither committed nor aborted.
    Interrupted {
        frozen: u64,
        active: u64,
    },
    Broken {
        reason: String,
    },
}

pub fn disk_tracking(disk: &str, bitmaps: &[BitmapInfo]) -> DiskTracking {
    let mut ours: Vec<(u64, &BitmapInfo)> = bitmaps
        .iter()
        .filter_map(|b| parse_generation(&b.name).map(|g| (g, b)))
        .collect();
    ours.sort_by_key(|(g, _)| *g);
    if let Some((_, b)) = ours.iter().find(|(_, b)| b.inconsistent) {
        return DiskTracking::Broken {
            reason: format!(
                "disk {disk}: bitmap {} is inconsistent (QEMU stopped without saving it)",
                b.name
            ),
        };
    }
    match ours.as_slice() {
        [] => DiskTracking::Untracked,
        [(g, b)] if b.recording => DiskTracking::Active {
            generation: *g,
            dirty_bytes: b.count,
        },
        [(g0, b0), (g1, b1)] if *g1 == g0 + 1 && !b0.recording && b1.recording => {
            DiskTracking::Interrupted {
                frozen: *g0,
                active: *g1,
            }
        }
        other => DiskTracking::Broken {
            reason: format!(
                "disk {disk}: unexpected bitmaps {}",
                other
                    .iter()
                    .map(|(_, b)| format!(
                        "{}({})",
                        b.name,
                        if b.recording { "recording" } else { "frozen" }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// What the VM as a whole can do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TrackingStatus {
    /// No bitmaps: start tracking with a full cut.
    NotTracking,
    /// Every disk records writes since cut `generation - 1` was committed.
    Tracking { generation: u64, dirty_bytes: u64 },
    /// A cut is open (in this process or one that died); commit or abort it.
    CutOpen { generation: u64 },
    /// The changes since the last cut are unknown: resync by digest comparison.
    NeedsFullResync { reason: String },
}

/// The generation every disk is tracking at, when they all agree and no cut is open: what
/// the record should say after a cut ends.
pub fn common_generation(disks: &[(String, DiskTracking)]) -> Option<u64> {
    let mut gens = disks.iter().map(|(_, t)| match t {
        DiskTracking::Active { generation, .. } => Some(*generation),
        _ => None,
    });
    let first = gens.next()??;
    gens.all(|g| g == Some(first)).then_some(first)
}

/// Combines the disks' states. `expected` is the generation the driver last committed for
/// this VM, if it remembers one: bitmaps that vanished against that record are a loss,
/// not a VM that was never tracked.
pub fn vm_tracking(disks: &[(String, DiskTracking)], expected: Option<u64>) -> TrackingStatus {
    if let Some((_, DiskTracking::Broken { reason })) = disks
        .iter()
        .find(|(_, t)| matches!(t, DiskTracking::Broken { .. }))
    {
        return TrackingStatus::NeedsFullResync {
            reason: reason.clone(),
        };
    }
    let untracked: Vec<&str> = disks
        .iter()
        .filter(|(_, t)| *t == DiskTracking::Untracked)
        .map(|(d, _)| d.as_str())
        .collect();
    if untracked.len() == disks.len() {
        return match expected {
            None => TrackingStatus::NotTracking,
            Some(g) => TrackingStatus::NeedsFullResync {
                reason: format!(
                    "bitmap {} is missing on every disk (disk replaced, or QEMU ran without it)",
                    bitmap_name(g)
                ),
            },
        };
    }
    if !untracked.is_empty() {
        return TrackingStatus::NeedsFullResync {
            reason: format!("disk(s) {} have no bitmap", untracked.join(", ")),
        };
    }
    let mut generation = None;
    let mut dirty = 0;
    let mut open = false;
    for (disk, t) in disks {
        let g = match t {
            DiskTracking::Active {
                generation,
                dirty_bytes,
            } => {
                dirty += dirty_bytes;
                *generation
            }
            DiskTracking::Interrupted { active, .. } => {
                open = true;
                *active
            }
            _ => unreachable!("handled above"),
        };
        match generation {
            None => generation = Some(g),
            Some(prev) if prev != g => {
                return TrackingStatus::NeedsFullResync {
                    reason: format!("disk {disk} is at generation {g}, others at {prev}"),
                }
            }
            _ => {}
        }
    }
    let generation = generation.expect("at least one disk");
    let Some(e) = expected else {
        return TrackingStatus::NeedsFullResync {
            reason: format!(
                "bitmap {} exists but this host never recorded tracking it (a disk copied from \
                 another VM, or a lost record), so what it covers is unknown",
                bitmap_name(generation)
            ),
        };
    };
    {
        // The record lags by one while a cut is open or after a crash between the
        // bitmap commit and the record write; anything else is someone else's bitmaps.
        if generation != e && generation != e + 1 {
            return TrackingStatus::NeedsFullResync {
                reason: format!(
                    "bitmaps are at generation {generation}, the last committed cut was {e}"
                ),
            };
        }
    }
    if open {
        TrackingStatus::CutOpen { generation }
    } else {
        TrackingStatus::Tracking {
            generation,
            dirty_bytes: dirty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bm(name: &str, recording: bool, inconsistent: bool) -> BitmapInfo {
        BitmapInfo {
            name: name.into(),
            count: 65536,
            granularity: 65536,
            recording,
            busy: false,
            persistent: true,
            inconsistent,
        }
    }

    #[test]
    fn generations_parse_strictly() {
        assert_eq!(parse_generation("lifeboat-7"), Some(7));
        assert_eq!(parse_generation(&bitmap_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "lifeboat-",
            "lifeboat-x",
            "lifeboat--1",
            "other-1",
            "lifeboat-99999999999999999999",
        ] {
            assert_eq!(parse_generation(bad), None, "{bad}");
        }
    }

    #[test]
    fn disk_states() {
        assert_eq!(
            disk_tracking("vda", &[bm("foreign", true, false)]),
            DiskTracking::Untracked
        );
        assert_eq!(
            disk_tracking("vda", &[bm("lifeboat-3", true, false)]),
            DiskTracking::Active {
                generation: 3,
                dirty_bytes: 65536
            }
        );
        assert_eq!(
            disk_tracking(
                "vda",
                &[
                    bm("lifeboat-4", true, false),
                    bm("lifeboat-3", false, false)
                ]
            ),
            DiskTracking::Interrupted {
                frozen: 3,
                active: 4
            }
        );
        for broken in [
            vec![bm("lifeboat-3", true, true)],
            vec![bm("lifeboat-3", false, false)],
            vec![bm("lifeboat-3", true, false), bm("lifeboat-5", true, false)],
            vec![
                bm("lifeboat-3", false, false),
                bm("lifeboat-4", false, false),
            ],
        ] {
            assert!(
                matches!(disk_tracking("vda", &broken), DiskTracking::Broken { .. }),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn vm_states() {
        let active = |g| DiskTracking::Active {
            generation: g,
            dirty_bytes: 10,
        };
        let d = |n: &str, t| (n.to_string(), t);
        assert_eq!(
            vm_tracking(&[d("vda", DiskTracking::Untracked)], None),
            TrackingStatus::NotTracking
        );
        assert!(matches!(
            vm_tracking(&[d("vda", DiskTracking::Untracked)], Some(3)),
            TrackingStatus::NeedsFullResync { .. }
        ));
        assert_eq!(
            vm_tracking(&[d("vda", active(3)), d("vdb", active(3))], Some(3)),
            TrackingStatus::Tracking {
                generation: 3,
                dirty_bytes: 20
            }
        );
        assert!(matches!(
            vm_tracking(&[d("vda", active(3)), d("vdb", active(4))], None),
            TrackingStatus::NeedsFullResync { .. }
        ));
        assert!(matches!(
            vm_tracking(
                &[d("vda", active(3)), d("vdb", DiskTracking::Untracked)],
                None
            ),
            TrackingStatus::NeedsFullResync { .. }
        ));
        assert!(matches!(
            vm_tracking(&[d("vda", active(9))], Some(3)),
            TrackingStatus::NeedsFullResync { .. }
        ));
        // Bitmaps this host never recorded (a copied disk) are not trusted.
        assert!(matches!(
            vm_tracking(&[d("vda", active(3))], None),
            TrackingStatus::NeedsFullResync { .. }
        ));
        assert_eq!(
            common_generation(&[d("vda", active(3)), d("vdb", active(3))]),
            Some(3)
        );
        assert_eq!(
            common_generation(&[d("vda", active(3)), d("vdb", active(4))]),
            None
        );
        assert_eq!(
            common_generation(&[d("vda", DiskTracking::Untracked)]),
            None
        );
        assert_eq!(
            vm_tracking(
                &[d(
                    "vda",
                    DiskTracking::Interrupted {
                        frozen: 3,
                        active: 4
                    }
                )],
                Some(3)
            ),
            TrackingStatus::CutOpen { generation: 4 }
        );
    }
}
