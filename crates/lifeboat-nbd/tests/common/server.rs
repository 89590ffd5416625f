//! Fixtures for the server tests: sources with random data and injectable
//! faults, a server on a fresh Unix socket, and running tools with a deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lifeboat_nbd::server::{serve_unix, ExportSource, ServerOptions, ServerStats};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// Deterministic bytes with no runs of zeroes to speak of (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A memory source whose reads can be made to fail, panic, return the wrong
/// length or take a while, depending on the offset asked for.
pub struct TestSource {
    pub data: Bytes,
    /// Reads starting at this offset fail with an I/O error.
    pub fail_at: Option<u64>,
    /// Reads starting at this offset panic.
    pub panic_at: Option<u64>,
    /// Reads starting at this offset return one byte too few.
    pub short_at: Option<u64>,
    /// Reads at offsets below this wait `slow_delay` first.
    pub slow_below: u64,
    pub slow_delay: Duration,
}

impl TestSource {
    pub fn new(data: Bytes) -> Self {
        TestSource {
            data,
            fail_at: None,
            panic_at: None,
            short_at: None,
            slow_below: 0,
            slow_delay: Duration::ZERO,
        }
    }
}

impl ExportSource for TestSource {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    async fn read(&self, offset: u64, len: u32) -> std::io::Result<Bytes> {
        if offset < self.slow_below {
            tokio::time::sleep(self.slow_delay).await;
        }
        if Some(offset) == self.fail_at {
            return Err(std::io::Error::other("injected vault read failure"));
        }
        if Some(offset) == self.panic_at {
            panic!("injected source panic");
        }
        let (start, end) = (offset as usize, offset as usize + len as usize);
        if Some(offset) == self.short_at {
            return Ok(self.data.slice(start..end - 1));
        }
        Ok(self.data.slice(start..end))
    }
}

/// [`serve_unix`] on a socket in a fresh temporary directory.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub stats: Arc<ServerStats>,
    pub task: JoinHandle<()>,
}

impl TestServer {
    pub fn start<S: ExportSource>(source: S, options: ServerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("export.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let stats = options.stats.clone();
        let task = tokio::spawn(async move {
            serve_unix(listener, Arc::new(source), options)
                .await
                .expect("the listener never fails in tests");
        });
        TestServer {
            dir,
            socket,
            stats,
            task,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The export as QEMU names it.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Stops serving: the task and every connection end.
    pub async fn stop(&self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a tool to completion within `limit`, panicking with its stderr on failure.
pub async fn run_tool(program: &str, args: &[&str], limit: Duration) -> String {
    let out = tokio::time::timeout(
        limit,
        tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {limit:?}"))
    .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
