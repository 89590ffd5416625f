//! The transmission phase of one connection: many requests in flight.
//!
//! ```text
//!  callers ──submit──▶ pending map (cookie → what was asked, reply slot)
//!     │                    ▲                         │
//!     └─ header ─▶ writer task ─▶ socket ─▶ reader task ┘ (demultiplexes by cookie)
//! ```
//!
//! Callers register their request in the pending map *before* it is written,
//! then wait on a oneshot slot. The writer task owns the write half (so a
//! cancelled caller can never leave half a header on the wire); the reader
//! task owns the read half, validates every reply against the request it
//! answers and fills the slot. Whatever kills the connection (EOF, socket
//! error, protocol violation, timeout) records one [`DisconnectReason`] first
//! and then drops every slot, so all waiters and later callers see that reason.
//!
//! Timeout rule: a caller gives up when the server has sent nothing for
//! `io_timeout` since the later of its submission and the last bytes received.
//! Progress on other requests therefore keeps a deep pipeline alive, while a
//! silent server fails everything within `io_timeout`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::DisconnectReason;
use crate::proto::transmission::{BlockDescriptor, Command, Errno, RequestHeader};

/// What a request expects back; the reader checks replies against it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    Read {
        offset: u64,
        length: u32,
    },
    BlockStatus {
        offset: u64,
        length: u32,
        context_id: u32,
    },
}

/// A successful reply.
pub(crate) enum Outcome {
    Data(Bytes),
    /// Descriptors per context id, in the order the server sent them.
    Status(Vec<(u32, Vec<BlockDescriptor>)>),
}

/// The server answered with an error; the connection remains usable.
pub(crate) struct ServerFailure {
    pub errno: Errno,
    pub message: String,
}

pub(crate) type ReplyResult = Result<Outcome, ServerFailure>;

pub(super) struct Pending {
    pub(super) expect: Expect,
    pub(super) slot: oneshot::Sender<ReplyResult>,
}

#[derive(Default)]
struct State {
    next_cookie: u64,
    pending: HashMap<u64, Pending>,
    dead: Option<DisconnectReason>,
}

pub(super) struct Shared {
    state: Mutex<State>,
    epoch: Instant,
    /// Nanoseconds after `epoch` when bytes last arrived from the server.
    last_rx: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every mutation is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection dead (first reason wins) and fails every waiter.
    pub(super) fn kill(&self, reason: DisconnectReason) {
        let pending = {
            let mut st = self.lock();
            if st.dead.is_none() {
                st.dead = Some(reason);
            }
            std::mem::take(&mut st.pending)
        };
        drop(pending);
    }

    fn dead_reason(&self) -> DisconnectReason {
        self.lock()
            .dead
            .clone()
            .unwrap_or(DisconnectReason::ServerClosed)
    }

    pub(super) fn touch(&self) {
        let ns = self.epoch.elapsed().as_nanos() as u64;
        self.last_rx.store(ns, Ordering::Relaxed);
    }

    fn last_rx(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_rx.load(Ordering::Relaxed))
    }

    pub(super) fn take_pending(&self, cookie: u64) -> Option<Pending> {
        self.lock().pending.remove(&cookie)
    }
}

enum WriterMsg {
    Frame(Bytes),
    /// Write the frame, shut the write side down, then signal.
    Close(Bytes, oneshot::Sender<()>),
}

pub(crate) struct Connection {
    shared: Arc<Shared>,
    to_writer: mpsc::UnboundedSender<WriterMsg>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    io_timeout: Duration,
}

impl Connection {
    pub(crate) fn start<S>(stream: S, context_ids: Vec<u32>, io_timeout: Duration) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_cookie: 1,
                ..State::default()
            }),
            epoch: Instant::now(),
            last_rx: AtomicU64::new(0),
        });
        let (rd, wr) = tokio::io::split(stream);
        let (to_writer, from_callers) = mpsc::unbounded_channel();
        let reader = tokio::spawn(super::reader::reader_task(
            tokio::io::BufReader::with_capacity(256 * 1024, rd),
            shared.clone(),
            context_ids,
        ));
        let writer = tokio::spawn(writer_task(wr, from_callers, shared.clone()));
        Connection {
            shared,
            to_writer,
            reader,
            writer,
            io_timeout,
        }
    }

    /// Registers and sends a request; the reply arrives on the returned slot.
    pub(crate) fn submit(
        &self,
        command: Command,
        flags: u16,
        expect: Expect,
    ) -> Result<oneshot::Receiver<ReplyResult>, DisconnectReason> {
        let (offset, length) = match expect {
            Expect::Read { offset, length } => (offset, length),
            Expect::BlockStatus { offset, length, .. } => (offset, length),
        };
        let (slot, rx) = oneshot::channel();
        let cookie = {
            let mut st = self.shared.lock();
            if let Some(reason) = &st.dead {
                return Err(reason.clone());
            }
            let cookie = st.next_cookie;
            st.next_cookie += 1;
            st.pending.insert(cookie, Pending { expect, slot });
            cookie
        };
        let mut buf = BytesMut::with_capacity(RequestHeader::LEN);
        RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        }
        .encode(&mut buf);
        if self.to_writer.send(WriterMsg::Frame(buf.freeze())).is_err() {
            self.shared.take_pending(cookie);
            return Err(self.shared.dead_reason());
        }
        Ok(rx)
    }

    /// Waits for a reply under the timeout rule in the module doc.
    pub(crate) async fn wait(
        &self,
        mut rx: oneshot::Receiver<ReplyResult>,
    ) -> Result<ReplyResult, DisconnectReason> {
        let submitted = Instant::now();
        loop {
            let deadline = submitted.max(self.shared.last_rx()) + self.io_timeout;
            match tokio::time::timeout_at(deadline.into(), &mut rx).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(_)) => return Err(self.shared.dead_reason()),
                Err(_) => {
                    let deadline = submitted.max(self.shared.last_rx()) + self.io_timeout;
                    if Instant::now() >= deadline {
                        self.kill(DisconnectReason::Timeout(self.io_timeout));
                        return Err(self.shared.dead_reason());
                    }
                }
            }
        }
    }

    pub(crate) fn kill(&self, reason: DisconnectReason) {
        self.shared.kill(reason);
        self.reader.abort();
        self.writer.abort();
    }

    /// Sends `NBD_CMD_DISC` and closes the write side, waiting at most `io_timeout`.
    pub(crate) async fn close(&self) {
        let mut buf = BytesMut::with_capacity(RequestHeader::LEN);
        RequestHeader {
            flags: 0,
            command: Command::Disconnect,
            cookie: 0,
            offset: 0,
            length: 0,
        }
        .encode(&mut buf);
        let (done, done_rx) = oneshot::channel();
        if self
            .to_writer
            .send(WriterMsg::Close(buf.freeze(), done))
            .is_ok()
        {
            let _ = tokio::time::timeout(self.io_timeout, done_rx).await;
        }
        self.kill(DisconnectReason::ClientClosed);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.kill(DisconnectReason::ClientClosed);
    }
}

async fn writer_task<W: AsyncWrite>(
    wr: W,
    mut from_callers: mpsc::UnboundedReceiver<WriterMsg>,
    shared: Arc<Shared>,
) {
    let mut wr = std::pin::pin!(wr);
    let mut batch = BytesMut::new();
    while let Some(first) = from_callers.recv().await {
        // Coalesce the headers queued meanwhile into one write.
        let mut close = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Frame(b) => batch.extend_from_slice(&b),
                WriterMsg::Close(b, done) => {
                    batch.extend_from_slice(&b);
                    close = Some(done);
                    break;
                }
            }
            next = from_callers.try_recv().ok();
        }
        if let Err(e) = wr.write_all(&batch).await {
            shared.kill(DisconnectReason::from_io(&e));
            return;
        }
        batch.clear();
        if let Some(done) = close {
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
            let _ = done.send(());
            return;
        }
    }
}
