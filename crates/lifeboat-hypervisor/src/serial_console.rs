//! A guest's root shell on its serial port, reached through QEMU's
//! `-chardev socket,server=on,...` Unix socket: how `lifeboat demo` writes in the demo
//! guest, and how the tests drive their guests.
//!
//! The guest runs a non-interactive shell (no prompt, tty echo off), but nothing here
//! relies on that: each command is framed by a begin and an end marker that appear in
//! the output only when the shell executes the `echo`s, never in an echo of the typed
//! line (`echo "__LB""END_x"` prints `__LBEND_x`, the typed text does not contain it).
//! Kernel messages before the begin marker are dropped; output may arrive in pieces.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout, Instant};

const BEGIN: &str = "__LBBEG_";
const END: &str = "__LBEND_";
/// Kill the current input line (VKILL in canonical mode): drops a half-typed line
/// left by an earlier probe or by garbage on the wire.
const KILL_LINE: &str = "\x15";
/// Unmatched output kept for error messages; older bytes are dropped.
const KEEP_BYTES: usize = 256 * 1024;

/// What went wrong on a serial console; each names the socket or the command.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("serial console {}: not accepting within {limit:?}: {source}", path.display())]
    Connect {
        path: PathBuf,
        limit: Duration,
        source: std::io::Error,
    },
    #[error("serial console {}: the guest shell did not answer within {limit:?}; last output:\n{output}", path.display())]
    NotReady {
        path: PathBuf,
        limit: Duration,
        output: String,
    },
    #[error("guest command {cmd:?} exited with status {status}; output:\n{output}")]
    Failed {
        cmd: String,
        status: i32,
        output: String,
    },
    #[error("guest command {cmd:?} did not finish within {limit:?}; output so far:\n{output}")]
    Timeout {
        cmd: String,
        limit: Duration,
        output: String,
    },
    #[error("serial console {}: closed by QEMU (did the VM exit?); last output:\n{output}", path.display())]
    Closed { path: PathBuf, output: String },
    #[error("serial console {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

pub type Result<T, E = ConsoleError> = std::result::Result<T, E>;

/// A shell session on the guest's serial console.
pub struct SerialConsole {
    path: PathBuf,
    stream: UnixStream,
    /// Bytes received and not yet consumed by a finished command.
    received: Vec<u8>,
    /// Distinguishes this console's markers from those of an earlier connection.
    session: u32,
    commands: u64,
}

/// A finished command: what it printed and its exit status.
#[derive(Debug, PartialEq)]
struct Finished {
    output: String,
    status: i32,
    /// Bytes of the buffer up to the end of the end-marker line.
    consumed: usize,
}

impl SerialConsole {
    /// Connects to QEMU's serial socket at `path`, retrying until it exists and
    /// accepts (QEMU creates it shortly after starting).
    pub async fn connect(path: &Path, limit: Duration) -> Result<Self> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(source) if Instant::now() >= deadline => {
                    return Err(ConsoleError::Connect {
                        path: path.to_owned(),
                        limit,
                        source,
                    });
                }
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(Self {
            path: path.to_owned(),
            stream,
            received: Vec::new(),
            session: nanos ^ std::process::id().rotate_left(16),
            commands: 0,
        })
    }

    /// Waits until the guest's shell answers a command. Probes every second and
    /// accepts the answer to any probe, so a slow shell is not mistaken for a dead one.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut tags = Vec::new();
        loop {
            let tag = self.send("true").await?;
            tags.push(tag);
            let step = Instant::now() + Duration::from_secs(1);
            if self.wait_any(&tags, step.min(deadline)).await?.is_some() {
                self.received.clear();
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ConsoleError::NotReady {
                    path: self.path.clone(),
                    limit,
                    output: self.received_text(),
                });
            }
        }
    }

    /// Runs `cmd` in the guest shell and returns its output (stdout and stderr,
    /// without `\r` and without the final newline). Fails, with the output, when
    /// the exit status is not 0 or no end marker arrives within `limit`.
    pub async fn run(&mut self, cmd: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        let tag = self.send(cmd).await?;
        match self.wait_any(std::slice::from_ref(&tag), deadline).await? {
            Some((_, done)) if done.status == 0 => Ok(done.output),
            Some((_, done)) => Err(ConsoleError::Failed {
                cmd: cmd.to_string(),
                status: done.status,
                output: done.output,
            }),
            None => {
                let output = self.received_text();
                self.received.clear();
                Err(ConsoleError::Timeout {
                    cmd: cmd.to_string(),
                    limit,
                    output,
                })
            }
        }
    }

    /// Types `cmd` framed by markers; returns the tag that identifies its markers.
    async fn send(&mut self, cmd: &str) -> Result<String> {
        self.commands += 1;
        let tag = format!("{:08x}_{}", self.session, self.commands);
        // The quotes split each marker in the typed text, so an echo of the input
        // cannot match what `find_finished` looks for.
        let line = format!(
            "{KILL_LINE}echo \"__LB\"\"BEG_{tag}__\"; {cmd}\necho \"__LB\"\"END_{tag}__ $?\"\n"
        );
        self.stream
            .write_all(line.as_bytes())
            .await
            .map_err(|source| ConsoleError::Io {
                path: self.path.clone(),
                what: "write",
                source,
            })?;
        Ok(tag)
    }

    /// Reads until one of `tags` has finished or `deadline` passes (then `None`).
    async fn wait_any(
        &mut self,
        tags: &[String],
        deadline: Instant,
    ) -> Result<Option<(usize, Finished)>> {
        loop {
            for (i, tag) in tags.iter().enumerate() {
                if let Some(done) = find_finished(&self.received, tag) {
                    self.received.drain(..done.consumed);
                    return Ok(Some((i, done)));
                }
            }
            if self.received.len() > KEEP_BYTES {
                let excess = self.received.len() - KEEP_BYTES;
                self.received.drain(..excess);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match timeout(left, self.stream.read_buf(&mut self.received)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => {
                    return Err(ConsoleError::Closed {
                        path: self.path.clone(),
                        output: self.received_text(),
                    })
                }
                Ok(Ok(_)) => {}
                Ok(Err(source)) => {
                    return Err(ConsoleError::Io {
                        path: self.path.clone(),
                        what: "read",
                        source,
                    })
                }
            }
        }
    }

    fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.received).replace('\r', "")
    }
}

/// Finds the output of the command with `tag` in `buf`, once its end-marker line is
/// complete.
fn find_finished(buf: &[u8], tag: &str) -> Option<Finished> {
    // The trailing "__" keeps tag 1 from matching inside tag 10.
    let begin = format!("{BEGIN}{tag}__");
    let end = format!("{END}{tag}__ ");
    let begin_at = find(buf, begin.as_bytes(), 0)?;
    let start = begin_at + find(&buf[begin_at..], b"\n", 0)? + 1;
    let end_at = find(buf, end.as_bytes(), start)?;
    let status_at = end_at + end.len();
    let status_len = find(&buf[status_at..], b"\n", 0)?;
    let status_text = String::from_utf8_lossy(&buf[status_at..status_at + status_len]);
    let status = status_text.trim().parse::<i32>().ok()?;
    let mut output = String::from_utf8_lossy(&buf[start..end_at]).replace('\r', "");
    if output.ends_with('\n') {
        output.pop();
    }
    Some(Finished {
        output,
        status,
        consumed: status_at + status_len + 1,
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::find_finished;

    #[test]
    fn ignores_echoed_input_and_noise_before_the_begin_marker() {
        let buf = b"[  1.0] noise\r\necho \"__LB\"\"BEG_t_1__\"; cat f\r\n\
                    echo \"__LB\"\"END_t_1__ $?\"\r\n__LBBEG_t_1__\r\nline 1\r\nline 2\r\n\
                    __LBEND_t_1__ 0\r\nrest";
        let done = find_finished(buf, "t_1").unwrap();
        assert_eq!(done.output, "line 1\nline 2");
        assert_eq!(done.status, 0);
        assert_eq!(&buf[done.consumed..], b"rest");
    }

    #[test]
    fn waits_for_the_whole_end_line() {
        let full = b"__LBBEG_t_2__\r\nx__LBEND_t_2__ 17\r\n";
        for cut in 0..full.len() {
            assert_eq!(find_finished(&full[..cut], "t_2"), None, "cut at {cut}");
        }
        let done = find_finished(full, "t_2").unwrap();
        assert_eq!((done.output.as_str(), done.status), ("x", 17));
    }

    #[test]
    fn other_tags_do_not_match() {
        let buf =
            b"__LBBEG_t_30__\r\n__LBEND_t_30__ 0\r\n__LBBEG_t_3__\r\nthree\r\n__LBEND_t_3__ 0\r\n";
        assert_eq!(find_finished(buf, "t_300"), None);
        assert_eq!(find_finished(buf, "t_3").unwrap().output, "three");
    }
}
