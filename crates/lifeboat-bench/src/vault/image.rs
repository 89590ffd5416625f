//! The images the `vault` benchmark stores: a sparse raw disk laid out like a used one
//! (regions of a few MiB of holes, log-like text and random bytes, alternating), and a
//! copy of it with about 1% rewritten in scattered regions, plus the list of those
//! regions (`offset length` a line) that `put-image --changed` takes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use crate::datagen::Rng;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Region boundaries fall on 4 KiB, like a guest file system's blocks: holes stay
/// holes in the host file, and nothing is aligned to the vault's chunks.
const ALIGN: u64 = 4 * KIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Hole,
    Text,
    Random,
}

/// Shares of the disk, in percent: holes, text, random.
const SHARES: [(Kind, u64); 3] = [(Kind::Hole, 40), (Kind::Text, 35), (Kind::Random, 25)];

#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub size: u64,
    /// `(offset, length, kind)`, back to back from 0 to `size`.
    pub regions: Vec<(u64, u64, Kind)>,
}

impl Layout {
    /// Regions of 1–8 MiB; the next kind is drawn by the bytes each kind still owes
    /// (never the same kind twice in a row while another one owes), so the shares
    /// come out exact and no kind piles up at one end of the disk.
    pub fn new(size: u64, rng: &mut Rng) -> Layout {
        let mut owed: Vec<(Kind, u64)> = SHARES
            .iter()
            .map(|&(k, pct)| (k, size * pct / 100 / ALIGN * ALIGN))
            .collect();
        let assigned: u64 = owed.iter().map(|o| o.1).sum();
        owed[2].1 += size - assigned;
        let mut regions: Vec<(u64, u64, Kind)> = Vec::new();
        let mut at = 0;
        while at < size {
            let last = regions.last().map(|r| r.2);
            let mut pool: Vec<usize> = (0..3)
                .filter(|&i| owed[i].1 > 0 && Some(owed[i].0) != last)
                .collect();
            if pool.is_empty() {
                pool = (0..3).filter(|&i| owed[i].1 > 0).collect();
            }
            let total: u64 = pool.iter().map(|&i| owed[i].1).sum();
            let mut pick = rng.next_u64() % total;
            let i = *pool
                .iter()
                .find(|&&i| {
                    if pick < owed[i].1 {
                        true
                    } else {
                        pick -= owed[i].1;
                        false
                    }
                })
                .expect("pick < total");
            let len = (rng.between(MIB, 8 * MIB) / ALIGN * ALIGN).min(owed[i].1);
            owed[i].1 -= len;
            match regions.last_mut() {
                Some(r) if r.2 == owed[i].0 => r.1 += len,
                _ => regions.push((at, len, owed[i].0)),
            }
            at += len;
        }
        Layout { size, regions }
    }

    /// Bytes of each kind under `off..off+len`.
    fn kinds_under(&self, off: u64, len: u64) -> [u64; 3] {
        let mut out = [0; 3];
        for &(r_off, r_len, kind) in &self.regions {
            let lo = off.max(r_off);
            let hi = (off + len).min(r_off + r_len);
            if lo < hi {
                out[kind as usize] += hi - lo;
            }
        }
        out
    }
}

fn fill_random(rng: &mut Rng, buf: &mut [u8]) {
    for chunk in buf.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
}

/// Log lines whose fields come from small vocabularies and random numbers: about as
/// compressible as real logs and text files (zstd -1 shrinks it 5–6x), and no two
/// 4 KiB blocks alike, so nothing deduplicates by accident.
fn fill_text(rng: &mut Rng, buf: &mut [u8]) {
    const HOSTS: [&str; 6] = ["web1", "web2", "db1", "cache3", "api-gw", "worker7"];
    const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "DEBUG"];
    const PATHS: [&str; 8] = [
        "/api/v1/items",
        "/api/v1/orders",
        "/login",
        "/static/app.js",
        "/api/v2/search",
        "/healthz",
        "/admin/users",
        "/api/v1/cart",
    ];
    const STATUS: [&str; 5] = ["200", "200", "304", "404", "500"];
    let mut line = Vec::with_capacity(256);
    let mut pos = 0;
    while pos < buf.len() {
        let r = rng.next_u64();
        let r2 = rng.next_u64();
        line.clear();
        push_num(&mut line, 1_764_000_000 + (r >> 40), 10);
        line.push(b'.');
        push_num(&mut line, r & 0xfffff, 6);
        line.extend_from_slice(b" host=");
        line.extend_from_slice(HOSTS[(r2 % 6) as usize].as_bytes());
        line.extend_from_slice(b" level=");
        line.extend_from_slice(LEVELS[((r2 >> 8) % 4) as usize].as_bytes());
        line.extend_from_slice(b" method=GET path=");
        line.extend_from_slice(PATHS[((r2 >> 12) % 8) as usize].as_bytes());
        line.push(b'/');
        push_num(&mut line, (r2 >> 16) % 100_000, 1);
        line.extend_from_slice(b" status=");
        line.extend_from_slice(STATUS[((r2 >> 36) % 5) as usize].as_bytes());
        line.extend_from_slice(b" bytes=");
        push_num(&mut line, (r2 >> 40) % 65_536, 1);
        line.extend_from_slice(b" dur_ms=");
        push_num(&mut line, (r >> 20) % 2_000, 1);
        line.extend_from_slice(b" user_agent=\"Mozilla/5.0 (X11; Linux x86_64)\"\n");
        let n = line.len().min(buf.len() - pos);
        buf[pos..pos + n].copy_from_slice(&line[..n]);
        pos += n;
    }
}

/// `n` in decimal, zero-padded to at least `width` digits.
fn push_num(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 && digits.len() - i >= width {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes the disk of `layout` to `path`: data regions written, holes left unwritten.
pub fn write_image(path: &Path, layout: &Layout, rng: &mut Rng) -> Result<()> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    file.set_len(layout.size)?;
    let mut buf = vec![0u8; 4 * MIB as usize];
    for &(off, len, kind) in &layout.regions {
        if kind == Kind::Hole {
            continue;
        }
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(buf.len() as u64) as usize;
            match kind {
                Kind::Text => fill_text(rng, &mut buf[..n]),
                _ => fill_random(rng, &mut buf[..n]),
            }
            file.write_all_at(&buf[..n], pos)
                .with_context(|| format!("write {}", path.display()))?;
            pos += n as u64;
        }
    }
    file.sync_all()?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// `(offset, length)`, sorted, disjoint.
    pub ranges: Vec<(u64, u64)>,
    pub bytes: u64,
    /// Of `bytes`, how many fell on holes, text and random data.
    pub over_holes: u64,
    pub over_text: u64,
    pub over_random: u64,
}

/// Copies `base` to `changed` (sparse) and overwrites about `target` bytes of it with
/// new random bytes, in disjoint regions of 64 KiB–1 MiB at random 4 KiB-aligned
/// offsets (mostly small ones: the mean is about 256 KiB, so 1% of 4 GiB is ~170
/// regions). Writes the regions to `list`.
pub fn write_changed(
    base: &Path,
    changed: &Path,
    list: &Path,
    layout: &Layout,
    target: u64,
    rng: &mut Rng,
) -> Result<Change> {
    let out = Command::new("cp")
        .arg("--sparse=always")
        .arg(base)
        .arg(changed)
        .output()
        .context("run cp")?;
    ensure!(
        out.status.success(),
        "cp --sparse=always {} {}: {}",
        base.display(),
        changed.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut bytes = 0;
    while bytes < target {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let len = (64 * KIB + ((960 * KIB) as f64 * u.powi(4)) as u64) / ALIGN * ALIGN;
        let off = rng.between(0, (layout.size - len) / ALIGN) * ALIGN;
        // Disjoint and not touching, so the list reads like a dirty bitmap's runs.
        if ranges.iter().any(|&(o, l)| off <= o + l && o <= off + len) {
            continue;
        }
        ranges.push((off, len));
        bytes += len;
    }
    ranges.sort_unstable();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(changed)
        .with_context(|| format!("open {}", changed.display()))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut kinds = [0u64; 3];
    let mut text = String::new();
    for &(off, len) in &ranges {
        fill_random(rng, &mut buf[..len as usize]);
        file.write_all_at(&buf[..len as usize], off)?;
        let k = layout.kinds_under(off, len);
        (0..3).for_each(|i| kinds[i] += k[i]);
        text.push_str(&format!("{off} {len}\n"));
    }
    file.sync_all()?;
    std::fs::write(list, text).with_context(|| format!("write {}", list.display()))?;
    Ok(Change {
        ranges,
        bytes,
        over_holes: kinds[Kind::Hole as usize],
        over_text: kinds[Kind::Text as usize],
        over_random: kinds[Kind::Random as usize],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_exact_shares_and_alternates() {
        let size = 256 * MIB;
        let layout = Layout::new(size, &mut Rng::new(3));
        let mut by_kind = [0u64; 3];
        let mut at = 0;
        for w in layout.regions.windows(2) {
            assert_ne!(w[0].2, w[1].2, "neighbours of one kind are merged");
        }
        for &(off, len, kind) in &layout.regions {
            assert_eq!(off, at);
            assert!(len % ALIGN == 0);
            by_kind[kind as usize] += len;
            at += len;
        }
        assert_eq!(at, size);
        assert_eq!(
            by_kind[Kind::Hole as usize],
            size * 40 / 100 / ALIGN * ALIGN
        );
        assert!(
            layout.regions.len() > 40,
            "{} regions",
            layout.regions.len()
        );
    }

    #[test]
    fn numbers_are_padded() {
        let mut v = Vec::new();
        push_num(&mut v, 42, 5);
        push_num(&mut v, 0, 1);
        push_num(&mut v, 1234, 2);
        assert_eq!(v, b"0004201234");
    }
}
