//! Chunk-slot arithmetic and the layout checks a point's disks must pass: pure functions
//! shared by the writer and its callers.

use crate::format::{self, ENTRIES_PER_PAGE};
use crate::store::error::{Result, VaultError};
use crate::store::writer::DiskLayout;

/// The format's limits on disks (docs/vault-format.md, "Manifests"), checked before any
/// data is uploaded rather than when the manifest is sealed.
pub(crate) fn check_layout(disks: &[DiskLayout]) -> Result<()> {
    use format::manifest::{MAX_DISKS, MAX_DISK_SIZE};
    if disks.is_empty() || disks.len() > MAX_DISKS {
        return Err(VaultError::Usage(format!(
            "a point has 1 to {MAX_DISKS} disks, not {}",
            disks.len()
        )));
    }
    for (i, d) in disks.iter().enumerate() {
        if d.size == 0 || d.size > MAX_DISK_SIZE {
            return Err(VaultError::Usage(format!(
                "disk {} is {} bytes; a disk has 1 byte to {MAX_DISK_SIZE}",
                d.name, d.size
            )));
        }
        if disks[..i].iter().any(|o| o.name == d.name) {
            return Err(VaultError::Usage(format!(
                "disk name {} is used twice",
                d.name
            )));
        }
    }
    Ok(())
}

pub(crate) fn page_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size).div_ceil(ENTRIES_PER_PAGE as u64)
}

pub(crate) fn page_slots(size: u64, chunk_size: u64, page: u64) -> usize {
    let slots = size.div_ceil(chunk_size);
    slots
        .saturating_sub(page * ENTRIES_PER_PAGE as u64)
        .min(ENTRIES_PER_PAGE as u64) as usize
}

/// Widens byte ranges to whole chunks, clipped to the disk, sorted and merged: what a
/// caller must read from its source before `PointWriter::write`.
pub fn align_to_chunks(ranges: &[(u64, u64)], chunk_size: u64, disk_size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|(off, len)| {
            let start = (off / chunk_size) * chunk_size;
            let end = off
                .saturating_add(*len)
                .div_ceil(chunk_size)
                .saturating_mul(chunk_size)
                .min(disk_size);
            (start.min(disk_size), end)
        })
        .filter(|(s, e)| s < e)
        .collect();
    out.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in out {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged.into_iter().map(|(s, e)| (s, e - s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_widen_to_chunks_and_merge() {
        let cs = 100;
        assert_eq!(
            align_to_chunks(&[(150, 10), (120, 5), (390, 50)], cs, 420),
            vec![(100, 100), (300, 120)]
        );
        assert_eq!(align_to_chunks(&[(0, 0), (500, 10)], cs, 420), vec![]);
        assert_eq!(
            align_to_chunks(&[(0, 100), (100, 1)], cs, 1000),
            vec![(0, 200)]
        );
    }

    #[test]
    fn pages_count_slots() {
        let cs = 128 << 10;
        assert_eq!(page_count(1, cs), 1);
        assert_eq!(page_slots(1, cs, 0), 1);
        let size = cs * 1024 + 5;
        assert_eq!(page_count(size, cs), 2);
        assert_eq!(page_slots(size, cs, 0), 1024);
        assert_eq!(page_slots(size, cs, 1), 1);
        assert_eq!(page_slots(size, cs, 2), 0);
    }
}
