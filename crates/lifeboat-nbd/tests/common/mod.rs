//! Test fixtures: a real `qemu-nbd` serving a qcow2 image with known contents
//! and a dirty bitmap, and a scriptable fake server for failure injection.
#![allow(dead_code)]

pub mod fake;
pub mod raw;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;
pub const KIB: u64 = 1 << 10;
pub const IMAGE_SIZE: u64 = 64 * MIB;
pub const EXPORT: &str = "lifeboat";
pub const BITMAP_CONTEXT: &str = "qemu:dirty-bitmap:b0";

/// (pattern byte, offset, length) written before the bitmap `b0` exists.
pub const WRITES_BEFORE_BITMAP: &[(u8, u64, u64)] = &[
    (0xab, MIB, 64 * KIB),
    (0xcd, 10 * MIB, 128 * KIB),
    (0x11, 63 * MIB, MIB),
];
/// Written after `b0` was added, so `b0` marks their 64 KiB granules dirty.
pub const WRITES_AFTER_BITMAP: &[(u8, u64, u64)] = &[
    (0xef, 5 * MIB, 64 * KIB),
    (0x22, 20 * MIB + 4 * KIB, 8 * KIB),
    (0x33, MIB + 32 * KIB, 4 * KIB),
];
/// `b0`'s dirty ranges: the 64 KiB granules touched by WRITES_AFTER_BITMAP.
pub const EXPECTED_DIRTY: &[(u64, u64)] =
    &[(MIB, 64 * KIB), (5 * MIB, 64 * KIB), (20 * MIB, 64 * KIB)];
/// Allocated (non-hole) ranges: the 64 KiB qcow2 clusters ever written.
pub const EXPECTED_ALLOCATED: &[(u64, u64)] = &[
    (MIB, 64 * KIB),
    (5 * MIB, 64 * KIB),
    (10 * MIB, 128 * KIB),
    (20 * MIB, 64 * KIB),
    (63 * MIB, MIB),
];

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (install qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io_writes(image: &Path, writes: &[(u8, u64, u64)]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "qcow2"]);
    for (p, off, len) in writes {
        cmd.arg("-c").arg(format!("write -P {p:#x} {off} {len}"));
    }
    cmd.arg(image);
    run(&mut cmd);
}

/// A `qemu-nbd` process serving the test image read-only with bitmap `b0`.
pub struct QemuNbd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The image's contents, as `qemu-img convert -O raw` reads them.
    pub raw: Vec<u8>,
    child: Child,
}

impl QemuNbd {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg(IMAGE_SIZE.to_string()));
        qemu_io_writes(&image, WRITES_BEFORE_BITMAP);
        run(Command::new("qemu-img")
            .args(["bitmap", "--add"])
            .arg(&image)
            .arg("b0"));
        qemu_io_writes(&image, WRITES_AFTER_BITMAP);
        let raw_path = dir.path().join("disk.raw");
        run(Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&image)
            .arg(&raw_path));
        let raw = std::fs::read(&raw_path).unwrap();
        let socket = dir.path().join("nbd.sock");
        let child = Command::new("qemu-nbd")
            .arg(format!("--socket={}", socket.display()))
            .args(["-f", "qcow2", "--read-only", "--persistent", "-x", EXPORT])
            .args(["-B", "b0"])
            .arg(&image)
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot run qemu-nbd (install qemu-utils)");
        // Ready when it accepts a connection: qemu-nbd binds the socket (the file
        // appears) before it listens, and a client in between is refused (seen in CI).
        // `--persistent` keeps it serving after this probe hangs up.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "qemu-nbd never accepted a connection"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuNbd {
            dir,
            socket,
            raw,
            child,
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `KILL`) to qemu-nbd.
    pub fn signal(&self, sig: &str) {
        run(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string()));
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Checks the image really holds the written patterns, independently of qemu-img.
pub fn assert_patterns(raw: &[u8]) {
    // Later writes overwrite earlier ones, so apply them in order.
    let mut expect = vec![0u8; IMAGE_SIZE as usize];
    for (p, off, len) in WRITES_BEFORE_BITMAP.iter().chain(WRITES_AFTER_BITMAP) {
        expect[*off as usize..(*off + *len) as usize].fill(*p);
    }
    assert!(
        raw == expect.as_slice(),
        "image contents differ from the writes"
    );
}
