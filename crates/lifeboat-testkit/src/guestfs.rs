//! Reading files from the test guest's data partition in a disk image, without booting it
//! or mounting anything: the partition is copied out of the raw image, `e2fsck` replays
//! its journal (a crash-consistent image has committed metadata only in the journal), and
//! `debugfs` dumps a directory.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// The byte offset and length of MBR partition `n` (1-based) of a raw image.
pub fn mbr_partition(raw: &Path, n: usize) -> anyhow::Result<(u64, u64)> {
    let mut mbr = [0u8; 512];
    std::fs::File::open(raw)
        .with_context(|| format!("open {}", raw.display()))?
        .read_exact(&mut mbr)?;
    if mbr[510..512] != [0x55, 0xaa] || !(1..=4).contains(&n) {
        bail!("{}: no MBR partition {n}", raw.display());
    }
    let e = &mbr[446 + 16 * (n - 1)..446 + 16 * n];
    let start = u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64 * 512;
    let len = u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64 * 512;
    Ok((start, len))
}

/// The files of directory `dir` (e.g. `/seq`) on the guest's data partition (partition 2)
/// of raw image `raw`, by name. `scratch` is a directory for temporary copies.
pub fn guest_data_files(
    raw: &Path,
    dir: &str,
    scratch: &Path,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let (start, len) = mbr_partition(raw, 2)?;
    let part = scratch.join("data-partition.img");
    {
        let mut src = std::fs::File::open(raw)?;
        src.seek(SeekFrom::Start(start))?;
        let mut dst = std::fs::File::create(&part)?;
        std::io::copy(&mut src.take(len), &mut dst)?;
        dst.flush()?;
    }
    // 0: clean; 1: errors fixed (a journal replayed counts); 2: fixed, reboot advised.
    let fsck = Command::new("e2fsck")
        .args(["-f", "-y"])
        .arg(&part)
        .output()
        .context("running e2fsck (Debian e2fsprogs)")?;
    if !matches!(fsck.status.code(), Some(0..=2)) {
        bail!(
            "e2fsck of {}'s data partition: {}\n{}",
            raw.display(),
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
    let out = scratch.join("dump");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let dump = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump {dir} {}", out.display()))
        .arg(&part)
        .output()
        .context("running debugfs")?;
    if !dump.status.success() {
        bail!(
            "debugfs rdump {dir}: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
    }
    let name = Path::new(dir).file_name().context("a directory name")?;
    let mut files = BTreeMap::new();
    let root = out.join(name);
    if root.is_dir() {
        for e in std::fs::read_dir(&root)? {
            let e = e?;
            files.insert(
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path())?,
            );
        }
    }
    std::fs::remove_file(&part)?;
    Ok(files)
}
