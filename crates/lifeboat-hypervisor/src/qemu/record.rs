//! The tracking record: one line in the VM's directory saying which generation the last
//! finished cut left active, or that a full cut is open. QEMU's bitmaps are the truth;
//! the record only tells "never tracked" apart from "tracking was lost".

use crate::error::{HypervisorError, Result};
use crate::qemu::layout::{write_atomically, VmDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    None,
    /// A full cut began and has not finished: its bitmaps are not a base yet.
    FullCutOpen(u64),
    /// The active generation after the last committed or aborted cut.
    Active(u64),
}

impl Record {
    pub fn committed(self) -> Option<u64> {
        match self {
            Record::Active(g) => Some(g),
            _ => None,
        }
    }
}

pub fn read(dir: &VmDir) -> Result<Record> {
    let path = dir.tracking_record();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::None),
        Err(e) => return Err(HypervisorError::io("reading", &path, e)),
    };
    parse(text.trim()).ok_or_else(|| HypervisorError::NeedsFullResync {
        vm: dir.name.clone(),
        reason: format!(
            "tracking record {} is damaged ({:?}); run `lifeboat cbt reset {}`",
            path.display(),
            text.chars().take(40).collect::<String>(),
            dir.name
        ),
    })
}

fn parse(text: &str) -> Option<Record> {
    let (kind, number) = text.split_once(' ')?;
    let g: u64 = number.parse().ok()?;
    match kind {
        "active" => Some(Record::Active(g)),
        "full-cut-open" => Some(Record::FullCutOpen(g)),
        _ => None,
    }
}

pub fn write(dir: &VmDir, record: Record) -> Result<()> {
    let path = dir.tracking_record();
    match record {
        Record::None => match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HypervisorError::io("removing", &path, e)),
        },
        Record::Active(g) => write_atomically(&path, format!("active {g}\n").as_bytes()),
        Record::FullCutOpen(g) => {
            write_atomically(&path, format!("full-cut-open {g}\n").as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_what_it_writes() {
        assert_eq!(parse("active 7"), Some(Record::Active(7)));
        assert_eq!(parse("full-cut-open 1"), Some(Record::FullCutOpen(1)));
        for bad in [
            "",
            "active",
            "active -1",
            "active x",
            "other 3",
            "active 1 2",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
