//! Disk images as a source of bytes for `vault put-image`: a raw file or block device (its
//! holes found with SEEK_DATA/SEEK_HOLE) or a qcow2 file, read through `qemu-nbd` and our
//! NBD client so that only allocated data is read.
//!
//! The format is never guessed from the content: a raw disk whose guest wrote a qcow2
//! header at sector 0 would otherwise be opened as qcow2, and its backing-file path could
//! make us read any file on the host into the vault.

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use lifeboat_nbd::{ConnectOptions, NbdClient, BASE_ALLOCATION};

use lifeboat_vault::direct_io::DirectFile;

pub enum ImageSource {
    Raw(Arc<RawSource>),
    Qcow2(Box<Qcow2Source>),
}

pub struct RawSource {
    file: std::fs::File,
    /// The same file opened with O_DIRECT, where the file system allows it.
    direct: Option<DirectFile>,
    size: u64,
}

pub struct Qcow2Source {
    client: NbdClient,
    server: tokio::process::Child,
    _dir: tempfile::TempDir,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// The format the file name says: `.qcow2` is qcow2, anything else raw.
    pub fn from_name(path: &Path) -> ImageFormat {
        if path.extension().is_some_and(|e| e == "qcow2") {
            ImageFormat::Qcow2
        } else {
            ImageFormat::Raw
        }
    }
}

impl ImageSource {
    pub async fn open(path: &Path, format: ImageFormat) -> Result<ImageSource> {
        let source = match format {
            ImageFormat::Qcow2 => Self::open_qcow2(path).await?,
            ImageFormat::Raw => {
                let mut file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                // Block devices report length 0 in their metadata; seeking to the end works
                // for files and devices alike.
                let size = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
                    .with_context(|| format!("finding the size of {}", path.display()))?;
                ImageSource::Raw(Arc::new(RawSource {
                    file,
                    direct: DirectFile::open(path),
                    size,
                }))
            }
        };
        if source.size() == 0 {
            bail!("{} is empty: nothing to store", path.display());
        }
        Ok(source)
    }

    async fn open_qcow2(path: &Path) -> Result<ImageSource> {
        refuse_backing_file(path).await?;
        let dir = tempfile::Builder::new()
            .prefix("lb-nbd")
            .tempdir_in("/tmp")?;
        let socket: PathBuf = dir.path().join("nbd.sock");
        let server = tokio::process::Command::new("qemu-nbd")
            .args([
                "--read-only",
                "--persistent",
                "--shared=4",
                "--format=qcow2",
            ])
            .arg(format!("--socket={}", socket.display()))
            .arg(path)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("running qemu-nbd (install qemu-utils)")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "qemu-nbd did not start serving {} within 30 s",
                    path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = NbdClient::connect_unix(
            &socket,
            ConnectOptions::new("").with_meta_context(BASE_ALLOCATION),
        )
        .await
        .with_context(|| format!("reading {} through qemu-nbd", path.display()))?;
        Ok(ImageSource::Qcow2(Box::new(Qcow2Source {
            client,
            server,
            _dir: dir,
        })))
    }

    pub fn size(&self) -> u64 {
        match self {
            ImageSource::Raw(r) => r.size,
            ImageSource::Qcow2(q) => q.client.export_size(),
        }
    }

    /// Byte ranges that hold data; everything else reads as zeros.
    pub async fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        match self {
            ImageSource::Raw(r) => raw_data_ranges(&r.file, r.size),
            ImageSource::Qcow2(q) => Ok(q
                .client
                .extents(BASE_ALLOCATION, 0, q.client.export_size())
                .await?
                .into_iter()
                .filter(|e| !e.is_hole() && !e.is_zero())
                .map(|e| (e.offset, e.length))
                .collect()),
        }
    }

    /// Reads `len` bytes at `offset`. Several reads may be in flight at once: a raw
    /// image is read on the blocking pool, a qcow2 one through the pipelined NBD client.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        match self {
            ImageSource::Raw(r) => {
                let r = r.clone();
                tokio::task::spawn_blocking(move || r.read(offset, len))
                    .await
                    .context("reading the image")?
            }
            ImageSource::Qcow2(q) => Ok(q.client.read(offset, len as u32).await?),
        }
    }

    pub async fn close(self) {
        if let ImageSource::Qcow2(q) = self {
            let Qcow2Source {
                client, mut server, ..
            } = *q;
            let _ = client.disconnect().await;
            let _ = server.kill().await;
        }
    }
}

impl RawSource {
    fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        let what = || format!("reading {len} bytes at {offset}");
        if let Some(d) = &self.direct {
            if let Some(bytes) = d.read(offset, len).with_context(what)? {
                return Ok(bytes);
            }
        }
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .with_context(what)?;
        Ok(Bytes::from(buf))
    }
}

/// A qcow2 with a backing file would pull that file's bytes into the point; it is refused
/// so that the image alone decides what is stored.
async fn refuse_backing_file(path: &Path) -> Result<()> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .await
        .context("running qemu-img (install qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "{} is not a readable qcow2 image: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if let Some(backing) = info.get("backing-filename").and_then(|b| b.as_str()) {
        bail!(
            "{} has a backing file ({backing}); flatten it first (`qemu-img convert -O qcow2 {} FLAT.qcow2`)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Data ranges of a raw file by SEEK_DATA / SEEK_HOLE; the whole file where the file
/// system cannot tell.
fn raw_data_ranges(file: &std::fs::File, size: u64) -> Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at: i64 = 0;
    let end = size as i64;
    while at < end {
        // SAFETY: plain lseek on a file descriptor we own for the duration of the call.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `at`
            }
            // No SEEK_DATA support: treat everything as data.
            return Ok(vec![(0, size)]);
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        if hole > data {
            out.push((data as u64, (hole - data) as u64));
        }
        at = hole;
    }
    Ok(out)
}

/// Reads `offset length` lines (decimal or 0x-hex), as `--changed` takes them.
pub fn parse_ranges(text: &str, origin: &Path) -> Result<Vec<(u64, u64)>> {
    let num = |s: &str| -> Option<u64> {
        match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            bail!(
                "{}:{}: expected `offset length`, got {line:?}",
                origin.display(),
                i + 1
            );
        };
        let (Some(off), Some(len)) = (num(a), num(b)) else {
            bail!(
                "{}:{}: {line:?} is not two numbers",
                origin.display(),
                i + 1
            );
        };
        out.push((off, len));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_files_parse_and_errors_name_the_line() {
        let p = Path::new("r.txt");
        assert_eq!(
            parse_ranges("# c\n0 10\n0x100 0x20\n\n", p).unwrap(),
            vec![(0, 10), (256, 32)]
        );
        let e = parse_ranges("0 10\n5\n", p).unwrap_err().to_string();
        assert!(e.contains("r.txt:2"), "{e}");
        assert!(parse_ranges("a b\n", p).is_err());
    }

    #[test]
    fn sparse_raw_files_show_their_data_ranges() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sparse.raw");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        let ranges = raw_data_ranges(&f, 64 << 20).unwrap();
        assert!(
            ranges
                .iter()
                .any(|(o, l)| *o <= 8 << 20 && o + l >= (8 << 20) + 4096),
            "{ranges:?}"
        );
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert!(total < 16 << 20, "holes must not count as data: {ranges:?}");
    }
}
