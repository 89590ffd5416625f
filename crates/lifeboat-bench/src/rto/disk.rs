//! The recovered VM's big disk: a qcow2 that is all data, every byte pseudo-random, so
//! that neither qcow2 (no holes, no zero clusters), nor the vault's zstd, nor its
//! deduplication can make it smaller than its size. Made as a raw file (a generator
//! thread feeding a writer) then `qemu-img convert`ed; at 1.8 GB/s of disk writes that
//! is about 15 s per 16 GiB each.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::datagen::Rng;
use crate::rpo::procs::run_ok;

/// Bytes handed from the generator to the writer at a time.
const PIECE: usize = 8 << 20;

/// Free bytes for an unprivileged user on the file system holding `dir` (statvfs).
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| anyhow!("{}: a NUL in the path", dir.display()))?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statvfs that the call fills.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Fails, saying how much is missing, when `dir` has less than `need` bytes free.
pub fn check_space(dir: &Path, need: u64, why: &str) -> Result<()> {
    let free = free_bytes(dir)?;
    if free < need {
        bail!(
            "{}: {:.1} GiB free, {why} needs about {:.1} GiB; free some space, pass a \
             --work-dir on a bigger file system, or measure smaller --sizes",
            dir.display(),
            gib(free),
            gib(need)
        );
    }
    Ok(())
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// Writes `size` pseudo-random bytes (a whole number of MiB) to the raw file `path`.
/// One thread makes the bytes, this one writes them, so the two overlap.
pub fn write_random_raw(path: &Path, size: u64, seed: u64) -> Result<()> {
    ensure!(
        size > 0 && size.is_multiple_of(1 << 20),
        "disk size {size}: a positive whole number of MiB"
    );
    let mut file =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(4);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..6 {
        empty_tx
            .send(vec![0u8; PIECE])
            .expect("the receiver is here");
    }
    std::thread::scope(|s| -> Result<()> {
        // Moved in, so that a failed write drops it and the generator's `recv` ends.
        let empty_tx = empty_tx;
        s.spawn(move || {
            let mut rng = Rng::new(seed);
            let mut left = size;
            while left > 0 {
                let Ok(mut buf) = empty_rx.recv() else { return };
                let n = left.min(PIECE as u64) as usize;
                buf.truncate(n);
                rng.fill(&mut buf);
                left -= n as u64;
                if full_tx.send(buf).is_err() {
                    return; // the writer failed
                }
            }
        });
        // The generator ends when all is made; `full_rx` then reports disconnection.
        for mut buf in full_rx {
            file.write_all(&buf)
                .with_context(|| format!("write {}", path.display()))?;
            buf.resize(PIECE, 0);
            let _ = empty_tx.send(buf);
        }
        Ok(())
    })?;
    file.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    let written = std::fs::metadata(path)?.len();
    ensure!(
        written == size,
        "{}: wrote {written} bytes of {size}",
        path.display()
    );
    Ok(())
}

/// Makes `qcow2`, `size` bytes all allocated with pseudo-random data, through the raw
/// `scratch` (removed afterwards, also when the conversion fails).
pub fn make_full_qcow2(qcow2: &Path, scratch: &Path, size: u64, seed: u64) -> Result<()> {
    let made = write_random_raw(scratch, size, seed).and_then(|()| {
        let mut c = Command::new("qemu-img");
        // -W: out-of-order writes, which qcow2 allocation does not mind.
        c.args(["convert", "-W", "-f", "raw", "-O", "qcow2"])
            .arg(scratch)
            .arg(qcow2);
        run_ok(c).context("qemu-img convert (install qemu-utils)")
    });
    let _ = std::fs::remove_file(scratch);
    made?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_raw_has_no_zero_page_and_no_repeat() {
        let dir = std::env::temp_dir().join(format!("lb-rto-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.raw");
        // Not a multiple of the piece size: the last piece is short.
        write_random_raw(&path, 9 << 20, 5).unwrap();
        let data = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(data.len(), 9 << 20);
        assert!(data.chunks(4096).all(|p| p.iter().any(|&b| b != 0)));
        assert_ne!(data[..PIECE / 2], data[PIECE / 2..PIECE]);
        assert_ne!(data[..1 << 20], data[8 << 20..]);
        assert!(free_bytes(&std::env::temp_dir()).unwrap() > 0);
    }
}
