//! qemu-guest-agent, spoken to over QEMU's chardev socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout, Instant};

/// A session with qemu-guest-agent over its virtio-serial chardev socket: one JSON
/// request per line, one JSON answer per line.
pub struct GuestAgent {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

impl GuestAgent {
    /// Connects and synchronises with `guest-sync-delimited`, retrying until the agent
    /// in the guest answers. Requests sent before the agent opened its port are read
    /// by it later, so answers to earlier syncs are skipped by their id.
    pub async fn connect(path: &Path, limit: Duration) -> anyhow::Result<Self> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("guest agent socket {}", path.display()))
                }
                Err(_) => sleep(Duration::from_millis(100)).await,
            }
        };
        let (read, writer) = stream.into_split();
        let mut agent = Self {
            path: path.to_owned(),
            reader: BufReader::new(read),
            writer,
            next_id: std::process::id() as u64 * 1000,
        };
        loop {
            agent.next_id += 1;
            let id = agent.next_id;
            agent
                .send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))
                .await?;
            let step = (Instant::now() + Duration::from_secs(3)).min(deadline);
            if agent.wait_sync(id, step).await? {
                return Ok(agent);
            }
            if Instant::now() >= deadline {
                bail!(
                    "guest agent {}: no answer to guest-sync within {limit:?}",
                    path.display()
                );
            }
        }
    }

    /// Reads answers until the sync with `id` (true) or `deadline` (false).
    async fn wait_sync(&mut self, id: u64, deadline: Instant) -> anyhow::Result<bool> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut line = Vec::new();
            match timeout(left, self.reader.read_until(b'\n', &mut line)).await {
                Err(_) => return Ok(false),
                Ok(Ok(0)) => bail!("guest agent {}: closed by QEMU", self.path.display()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e).context("read from the guest agent"),
            }
            // guest-sync-delimited answers after a 0xFF byte that resets the parser.
            let text = match line.iter().rposition(|&b| b == 0xff) {
                Some(at) => &line[at + 1..],
                None => &line[..],
            };
            if let Ok(answer) = serde_json::from_slice::<Value>(text) {
                if answer.get("return").and_then(Value::as_u64) == Some(id) {
                    return Ok(true);
                }
            }
        }
    }

    async fn send(&mut self, request: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .with_context(|| format!("write to guest agent {}", self.path.display()))
    }

    /// Runs `command` (with `arguments`, if any) and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> anyhow::Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        self.send(&request).await?;
        let mut line = String::new();
        let read = timeout(limit, self.reader.read_line(&mut line))
            .await
            .with_context(|| format!("guest agent: no answer to {command} within {limit:?}"))?
            .context("read from the guest agent")?;
        if read == 0 {
            bail!("guest agent {}: closed by QEMU", self.path.display());
        }
        let answer: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("guest agent answer to {command}: {line:?}"))?;
        if let Some(error) = answer.get("error") {
            bail!("guest agent {command}: {error}");
        }
        answer
            .get("return")
            .cloned()
            .with_context(|| format!("guest agent answer to {command} without return: {line}"))
    }

    /// Asks the guest to power off (`guest-shutdown`, which answers nothing on success).
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.send(&json!({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}}))
            .await
    }
}
