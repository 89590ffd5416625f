//! Checks that the chunks of one structured reply fit the request they answer:
//! data and holes inside the requested range, never overlapping, and together
//! covering all of it by the time the DONE flag arrives.

use std::collections::BTreeMap;

use crate::proto::ProtoError;

/// The byte ranges of a READ reply received so far, relative to the request's
/// offset. Touching ranges are merged, so a well-behaved server that sends its
/// chunks in order keeps this at one entry.
#[derive(Debug, Default)]
pub(crate) struct Coverage {
    ranges: BTreeMap<u64, u64>,
    covered: u64,
}

impl Coverage {
    /// Records `[start, end)`; an overlap with earlier chunks is a protocol error.
    pub(crate) fn insert(&mut self, start: u64, end: u64) -> Result<(), ProtoError> {
        debug_assert!(start < end);
        let overlap = || {
            ProtoError::invalid(
                "read reply",
                format!("chunk [{start}, {end}) overlaps data already received"),
            )
        };
        let mut new_start = start;
        let mut new_end = end;
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e > start {
                return Err(overlap());
            }
            if e == start {
                new_start = s;
            }
        }
        if let Some((&s, &e)) = self.ranges.range(start..).next() {
            if s < end {
                return Err(overlap());
            }
            if s == end {
                self.ranges.remove(&s);
                new_end = e;
            }
        }
        self.ranges.insert(new_start, new_end);
        self.covered += end - start;
        Ok(())
    }

    pub(crate) fn covered(&self) -> u64 {
        self.covered
    }
}

/// Converts an absolute chunk range into one relative to the request, or
/// explains why it does not fit inside `[req_offset, req_offset + req_len)`.
pub(crate) fn relative_range(
    what: &'static str,
    req_offset: u64,
    req_len: u32,
    chunk_offset: u64,
    chunk_len: u64,
) -> Result<(u64, u64), ProtoError> {
    let req_end = req_offset + u64::from(req_len);
    let fits = chunk_len > 0
        && chunk_offset >= req_offset
        && chunk_offset
            .checked_add(chunk_len)
            .is_some_and(|end| end <= req_end);
    if !fits {
        return Err(ProtoError::invalid(
            what,
            format!(
                "chunk offset {chunk_offset} length {chunk_len} is outside the requested \
                 range offset {req_offset} length {req_len}"
            ),
        ));
    }
    let start = chunk_offset - req_offset;
    Ok((start, start + chunk_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_chunks_merge() {
        let mut c = Coverage::default();
        c.insert(0, 10).unwrap();
        c.insert(10, 20).unwrap();
        c.insert(30, 40).unwrap();
        c.insert(20, 30).unwrap();
        assert_eq!(c.covered(), 40);
        assert_eq!(c.ranges.len(), 1);
    }

    #[test]
    fn overlaps_are_rejected() {
        let mut c = Coverage::default();
        c.insert(10, 20).unwrap();
        assert!(c.insert(5, 11).is_err());
        assert!(c.insert(19, 25).is_err());
        assert!(c.insert(12, 13).is_err());
        assert!(c.insert(0, 100).is_err());
        c.insert(0, 10).unwrap();
        c.insert(20, 21).unwrap();
        assert_eq!(c.covered(), 21);
    }

    #[test]
    fn ranges_outside_request_are_rejected() {
        assert_eq!(relative_range("t", 100, 50, 100, 50).unwrap(), (0, 50));
        assert_eq!(relative_range("t", 100, 50, 120, 10).unwrap(), (20, 30));
        assert!(relative_range("t", 100, 50, 99, 10).is_err());
        assert!(relative_range("t", 100, 50, 140, 11).is_err());
        assert!(relative_range("t", 100, 50, 120, 0).is_err());
        assert!(relative_range("t", 100, 50, u64::MAX, 2).is_err());
    }
}
