//! Extents returned by block status queries, and the meaning of their flags
//! in the two meta contexts Lifeboat uses.

/// `base:allocation`: the range is not allocated (reads may still be nonzero
/// if a backing file supplies data; combine with [`STATE_ZERO`]).
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation`: the range reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:NAME`: the range changed since the bitmap was created/cleared.
pub const STATE_DIRTY: u32 = 1 << 0;

/// Name of the allocation meta context every server implements.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Name of the meta context QEMU exports for dirty bitmap `bitmap`.
pub fn qemu_dirty_bitmap(bitmap: &str) -> String {
    format!("qemu:dirty-bitmap:{bitmap}")
}

/// A byte range of the export with the flags one meta context reports for it.
/// `offset` is absolute in the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }

    /// For `base:allocation` extents.
    pub fn is_hole(&self) -> bool {
        self.flags & STATE_HOLE != 0
    }

    /// For `base:allocation` extents.
    pub fn is_zero(&self) -> bool {
        self.flags & STATE_ZERO != 0
    }

    /// For `qemu:dirty-bitmap:*` extents.
    pub fn is_dirty(&self) -> bool {
        self.flags & STATE_DIRTY != 0
    }
}

/// Appends `e` to `out`, merging it into the last extent when they touch and
/// carry the same flags.
pub(crate) fn push_merged(out: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = out.last_mut() {
        if last.end() == e.offset && last.flags == e.flags {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}
