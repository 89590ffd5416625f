//! Talking to qemu-guest-agent inside a VM, through the virtio-serial port QEMU exposes
//! as a Unix socket (`org.qemu.guest_agent.0`), to freeze and thaw the guest's filesystems
//! around a cut: an app-consistent point.
//!
//! The guest may not run an agent at all, and whatever it answers is untrusted: every
//! exchange is bounded in time and size, and "no answer" means "crash-consistent".
//! A freeze leaves a marker file until the thaw, so a process that died in between thaws
//! the guest the next time it looks (a guest left frozen stops writing).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::{HypervisorError, Result};
use crate::qemu::layout::VmDir;

/// The longest answer line accepted from the guest.
const MAX_LINE: usize = 64 * 1024;

struct Session {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Session {
    /// Connects and resynchronises: the agent may still hold a half-read request from a
    /// client that went away, so `guest-sync-delimited` with a fresh id comes first and
    /// everything before its answer is dropped.
    async fn open(socket: &Path) -> std::io::Result<Session> {
        let stream = UnixStream::connect(socket).await?;
        let (r, w) = stream.into_split();
        let mut s = Session {
            reader: BufReader::new(r),
            writer: w,
        };
        let id = u64::from(std::process::id()) << 20 ^ u64::from(rand_u32());
        // 0xFF makes the agent drop any partial input before the request (it answers the
        // stray byte with an error line, skipped below like any stale answer).
        s.writer.write_all(&[0xff]).await?;
        s.send(&serde_json::json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))
            .await?;
        // Stale answers to an earlier client come first; the caller's timeout bounds this.
        loop {
            match s.answer().await {
                Ok(v) if v.get("return").and_then(Value::as_u64) == Some(id) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(e),
                _ => {}
            }
        }
    }

    async fn send(&mut self, request: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.writer.write_all(&line).await
    }

    async fn call(&mut self, request: &Value) -> std::io::Result<Value> {
        self.send(request).await?;
        self.answer().await
    }

    /// The next answer line, parsed; an `error` answer is an error.
    async fn answer(&mut self) -> std::io::Result<Value> {
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
                .await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the guest agent closed the connection",
                ));
            }
            // The 0xFF the agent sends back before a sync answer, and blank lines.
            let text: Vec<u8> = buf.into_iter().filter(|b| *b != 0xff).collect();
            let text = String::from_utf8_lossy(&text);
            if text.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(text.trim()).map_err(|e| {
                std::io::Error::other(format!("not JSON from the guest agent: {e}"))
            })?;
            if let Some(err) = v.get("error") {
                return Err(std::io::Error::other(format!(
                    "the guest agent refused: {}",
                    err.get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                )));
            }
            return Ok(v);
        }
    }
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ 0x9e37_79b9
}

fn marker(dir: &VmDir) -> std::path::PathBuf {
    dir.dir.join("guest-frozen")
}

/// Freezes the guest's filesystems; `Ok(None)` when no agent answers within `limit`.
pub async fn freeze(dir: &VmDir, limit: Duration) -> Result<Option<u64>> {
    let socket = dir.guest_agent_socket();
    let attempt = async {
        let mut s = Session::open(&socket).await?;
        crate::private::write_private(
            &marker(dir),
            b"frozen by lifeboat; thawed at the next look\n",
        )?;
        let v = s
            .call(&serde_json::json!({"execute": "guest-fsfreeze-freeze"}))
            .await?;
        Ok::<u64, std::io::Error>(v.get("return").and_then(Value::as_u64).unwrap_or(0))
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(n)) => Ok(Some(n)),
        Ok(Err(e)) => {
            tracing::info!(vm = %dir.name, error = %e, "no app-consistent freeze");
            // The freeze may have half-happened: make sure the guest is not left frozen.
            thaw_if_frozen(dir, limit).await?;
            Ok(None)
        }
        Err(_) => {
            tracing::info!(vm = %dir.name, "the guest agent did not answer in time");
            thaw_if_frozen(dir, limit).await?;
            Ok(None)
        }
    }
}

/// Thaws the guest if a freeze of ours may still hold it; a no-op otherwise.
pub async fn thaw_if_frozen(dir: &VmDir, limit: Duration) -> Result<()> {
    let m = marker(dir);
    if !m.exists() {
        return Ok(());
    }
    let socket = dir.guest_agent_socket();
    let attempt = async {
        let mut s = Session::open(&socket).await?;
        s.call(&serde_json::json!({"execute": "guest-fsfreeze-thaw"}))
            .await
    };
    let failed = match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(_)) => {
            return std::fs::remove_file(&m).map_err(|e| HypervisorError::io("removing", &m, e))
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", limit.as_secs()),
    };
    // The guest may still be frozen: keep the marker and say so, rather than carry on
    // with a guest that cannot write.
    Err(HypervisorError::Tool {
        tool: "qemu-guest-agent".into(),
        reason: format!(
            "VM {}: thawing its filesystems failed ({failed}); the guest may still be frozen. \
             Check qemu-guest-agent in the guest (`guest-fsfreeze-status`), then remove {}",
            dir.name,
            m.display()
        ),
    })
}
