//! Rewrites made from inside the guest: scattered, non-overlapping `dd` writes of
//! random data to `/dev/vdb`, 64 KiB to 1 MiB each, at random 64 KiB-aligned offsets.
//! Non-overlapping and aligned to the bitmap's granularity (the qcow2 cluster, 64 KiB),
//! so the bytes asked for are exactly the bytes the next incremental cut must carry.

use std::collections::BTreeMap;

use crate::datagen::Rng;

pub const UNIT: u64 = 64 << 10;
const MAX_UNITS: u64 = 16;
/// A canonical-mode tty line holds 4095 characters; stay well below.
const MAX_LINE: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    /// In units of 64 KiB.
    pub seek: u64,
    pub count: u64,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
}

impl Plan {
    /// Writes adding up to at least `target` bytes (rounded up to 64 KiB) on a disk of
    /// `disk_size` bytes. `target` must be well under the disk size.
    pub fn new(disk_size: u64, target: u64, rng: &mut Rng) -> Plan {
        let units = disk_size / UNIT;
        let mut want = target.div_ceil(UNIT);
        assert!(
            want * 4 <= units,
            "rewrite {target} bytes of {disk_size}: too much to scatter"
        );
        // start -> end, in units; no two overlap.
        let mut taken: BTreeMap<u64, u64> = BTreeMap::new();
        let mut writes = Vec::new();
        while want > 0 {
            let count = rng.between(1, MAX_UNITS).min(want);
            let seek = rng.between(0, units - count);
            let end = seek + count;
            let before = taken.range(..end).next_back();
            if before.is_some_and(|(_, &e)| e > seek) {
                continue;
            }
            taken.insert(seek, end);
            writes.push(Write { seek, count });
            want -= count;
        }
        Plan { writes }
    }

    pub fn bytes(&self) -> u64 {
        self.writes.iter().map(|w| w.count * UNIT).sum()
    }

    /// Shell command lines for the guest, each short enough for its tty; the last
    /// one flushes the guest's page cache to the disk.
    pub fn commands(&self, device: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut line = String::new();
        for w in &self.writes {
            let dd = format!(
                "dd if=/dev/urandom of={device} bs={UNIT} seek={} count={} conv=notrunc 2>/dev/null",
                w.seek, w.count
            );
            if !line.is_empty() && line.len() + dd.len() + 4 > MAX_LINE {
                out.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push_str(" && ");
            }
            line.push_str(&dd);
        }
        if !line.is_empty() {
            out.push(line);
        }
        out.push("sync".into());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_disjoint_in_range_and_add_up() {
        let mut rng = Rng::new(3);
        let size = 256 << 20;
        let plan = Plan::new(size, 20 << 20, &mut rng);
        assert_eq!(plan.bytes(), 20 << 20);
        let mut ws = plan.writes.clone();
        ws.sort_by_key(|w| w.seek);
        for pair in ws.windows(2) {
            assert!(pair[0].seek + pair[0].count <= pair[1].seek, "{pair:?}");
        }
        assert!(ws.iter().all(|w| (1..=MAX_UNITS).contains(&w.count)));
        assert!(ws.iter().all(|w| (w.seek + w.count) * UNIT <= size));
        let cmds = plan.commands("/dev/vdb");
        assert!(cmds.iter().all(|c| c.len() <= MAX_LINE));
        assert_eq!(cmds.last().unwrap(), "sync");
        let dds: usize = cmds.iter().map(|c| c.matches("dd if=").count()).sum();
        assert_eq!(dds, plan.writes.len());
    }
}
