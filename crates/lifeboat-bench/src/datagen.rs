//! The data disk: S bytes that are all data (no holes, no zero clusters) and compress
//! roughly like real disks do. Each 1 MiB block is half pseudo-random bytes (as
//! incompressible as media or encrypted files) and half log-like text lines (which
//! compress well); every block differs, so nothing deduplicates across blocks either.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

pub const BLOCK: usize = 1 << 20;
const HALF: usize = BLOCK / 2;

/// xorshift64*: fast enough to make a fresh random half for every block (about 0.1 s
/// per GiB), and the data only needs to resist compression, not attackers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
    }
}

/// Half a block of text lines; the first field of each line is the block number, so
/// blocks differ while the text stays repetitive.
struct TextHalf {
    buf: Vec<u8>,
    /// Where each line's 10-digit block field starts.
    stamps: Vec<usize>,
}

impl TextHalf {
    fn new() -> Self {
        let mut buf = Vec::with_capacity(HALF);
        let mut stamps = Vec::new();
        let mut line = 0u32;
        while buf.len() < HALF {
            stamps.push(buf.len());
            let text = format!(
                "0000000000 {line:05} INFO replica vm=web1 disk=vdb extent copied status=ok \
                 user=app{} path=/srv/data/file{}.dat\n",
                line % 7,
                line % 113
            );
            buf.extend_from_slice(text.as_bytes());
            line += 1;
        }
        buf.truncate(HALF);
        stamps.retain(|&s| s + 10 <= HALF);
        TextHalf { buf, stamps }
    }

    fn stamp(&mut self, block: u64) {
        let digits = format!("{block:010}");
        for &s in &self.stamps {
            self.buf[s..s + 10].copy_from_slice(digits.as_bytes());
        }
    }
}

/// Writes `size` bytes of data to the raw file `path`.
pub fn write_raw(path: &Path, size: u64, seed: u64) -> Result<()> {
    ensure!(
        size.is_multiple_of(BLOCK as u64),
        "disk size {size} is not a whole number of MiB"
    );
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(8 * BLOCK, file);
    let mut rng = Rng::new(seed);
    let mut random = vec![0u8; HALF];
    let mut text = TextHalf::new();
    for block in 0..size / BLOCK as u64 {
        rng.fill(&mut random);
        text.stamp(block);
        out.write_all(&random)?;
        out.write_all(&text.buf)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

/// Makes the qcow2 data disk `qcow2` of `size` bytes, fully allocated, through a raw
/// file `scratch` that is removed afterwards.
pub fn make_qcow2(qcow2: &Path, scratch: &Path, size: u64, seed: u64) -> Result<()> {
    write_raw(scratch, size, seed)?;
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(scratch)
        .arg(qcow2)
        .output()
        .context("run qemu-img (install qemu-utils)")?;
    std::fs::remove_file(scratch).with_context(|| format!("remove {}", scratch.display()))?;
    ensure!(
        out.status.success(),
        "qemu-img convert to {}: {}",
        qcow2.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_differ_and_have_no_zero_pages() {
        let dir = std::env::temp_dir().join(format!("lb-datagen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.raw");
        write_raw(&path, 2 * BLOCK as u64, 7).unwrap();
        let data = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(data.len(), 2 * BLOCK);
        assert_ne!(data[..BLOCK], data[BLOCK..]);
        assert!(data.chunks(4096).all(|p| p.iter().any(|&b| b != 0)));
        assert!(data[HALF..HALF + 10].iter().all(u8::is_ascii_digit));
    }
}
