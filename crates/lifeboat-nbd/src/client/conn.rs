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

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::assemble::{relative_range, Coverage};
use crate::error::DisconnectReason;
use crate::proto::limits;
use crate::proto::transmission::{
    decode_descriptors, decode_error_prefix, BlockDescriptor, ChunkType, Command, Errno,
    ReplyChunk, ReplyKind, RequestHeader, SimpleReplyHeader, StructuredReplyHeader,
};
use crate::proto::ProtoError;

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

struct Pending {
    expect: Expect,
    slot: oneshot::Sender<ReplyResult>,
}

#[derive(Default)]
struct State {
    next_cookie: u64,
    pending: HashMap<u64, Pending>,
    dead: Option<DisconnectReason>,
}

struct Shared {
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
    fn kill(&self, reason: DisconnectReason) {
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

    fn touch(&self) {
        let ns = self.epoch.elapsed().as_nanos() as u64;
        self.last_rx.store(ns, Ordering::Relaxed);
    }

    fn last_rx(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_rx.load(Ordering::Relaxed))
    }

    fn take_pending(&self, cookie: u64) -> Option<Pending> {
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
        let reader = tokio::spawn(reader_task(
            BufReader::with_capacity(256 * 1024, rd),
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

/// A structured reply being received.
struct Partial {
    pending: Pending,
    data: Option<Vec<u8>>,
    coverage: Coverage,
    status: Vec<(u32, Vec<BlockDescriptor>)>,
    error: Option<ServerFailure>,
}

async fn reader_task<R: AsyncRead + Unpin>(
    mut rd: BufReader<R>,
    shared: Arc<Shared>,
    context_ids: Vec<u32>,
) {
    let mut partial = HashMap::new();
    let Err(reason) = read_replies(&mut rd, &shared, &context_ids, &mut partial).await;
    // Record the reason before the slots in `partial` are dropped.
    shared.kill(reason);
    drop(partial);
}

fn protocol(e: ProtoError) -> DisconnectReason {
    DisconnectReason::Protocol(e)
}

fn violation(what: &'static str, detail: String) -> DisconnectReason {
    protocol(ProtoError::invalid(what, detail))
}

async fn read_exact<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    buf: &mut [u8],
) -> Result<(), DisconnectReason> {
    rd.read_exact(buf)
        .await
        .map_err(|e| DisconnectReason::from_io(&e))?;
    shared.touch();
    Ok(())
}

async fn read_replies<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    context_ids: &[u32],
    partial: &mut HashMap<u64, Partial>,
) -> Result<std::convert::Infallible, DisconnectReason> {
    let mut hdr = [0u8; StructuredReplyHeader::LEN];
    loop {
        read_exact(rd, shared, &mut hdr[..4]).await?;
        let kind = ReplyKind::from_magic(u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]))
            .map_err(protocol)?;
        let len = kind.header_len();
        read_exact(rd, shared, &mut hdr[4..len]).await?;
        match kind {
            ReplyKind::Simple => {
                let h = SimpleReplyHeader::decode(&hdr[..len]).map_err(protocol)?;
                simple_reply(rd, shared, partial, h).await?;
            }
            ReplyKind::Structured => {
                let h = StructuredReplyHeader::decode(&hdr[..len]).map_err(protocol)?;
                chunk(rd, shared, context_ids, partial, h).await?;
            }
        }
    }
}

async fn simple_reply<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    partial: &HashMap<u64, Partial>,
    h: SimpleReplyHeader,
) -> Result<(), DisconnectReason> {
    if partial.contains_key(&h.cookie) {
        return Err(violation(
            "simple reply",
            format!("cookie {} already has structured chunks", h.cookie),
        ));
    }
    let p = shared.take_pending(h.cookie).ok_or_else(|| {
        violation(
            "simple reply",
            format!("cookie {} matches no request", h.cookie),
        )
    })?;
    let result = if h.error != 0 {
        Err(ServerFailure {
            errno: Errno::from(h.error),
            message: String::new(),
        })
    } else {
        match p.expect {
            Expect::Read { length, .. } => {
                // Bounded: requests are at most limits::MAX_READ.
                let mut data = vec![0u8; length as usize];
                read_exact(rd, shared, &mut data).await?;
                Ok(Outcome::Data(Bytes::from(data)))
            }
            Expect::BlockStatus { .. } => {
                return Err(violation(
                    "simple reply",
                    "success without data to NBD_CMD_BLOCK_STATUS".into(),
                ))
            }
        }
    };
    // The caller may have given up; the reply was still consumed.
    let _ = p.slot.send(result);
    Ok(())
}

async fn chunk<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    context_ids: &[u32],
    partial: &mut HashMap<u64, Partial>,
    h: StructuredReplyHeader,
) -> Result<(), DisconnectReason> {
    let p = match partial.entry(h.cookie) {
        Entry::Occupied(o) => o.into_mut(),
        Entry::Vacant(v) => {
            let pending = shared.take_pending(h.cookie).ok_or_else(|| {
                violation(
                    "structured reply",
                    format!("cookie {} matches no request", h.cookie),
                )
            })?;
            v.insert(Partial {
                pending,
                data: None,
                coverage: Coverage::default(),
                status: Vec::new(),
                error: None,
            })
        }
    };
    let length = u64::from(h.length);
    let ct = h.chunk_type;
    match (ct, p.pending.expect) {
        (ChunkType::None, _) => {
            if !h.is_done() || length != 0 {
                return Err(violation(
                    ct.name(),
                    "must be empty and carry the DONE flag".into(),
                ));
            }
        }
        (
            ChunkType::OffsetData,
            Expect::Read {
                offset,
                length: req_len,
            },
        ) => {
            if length <= 8 {
                return Err(violation(
                    ct.name(),
                    format!("length {length} carries no data"),
                ));
            }
            let mut off = [0u8; 8];
            read_exact(rd, shared, &mut off).await?;
            let (start, end) = relative_range(
                ct.name(),
                offset,
                req_len,
                u64::from_be_bytes(off),
                length - 8,
            )
            .map_err(protocol)?;
            p.coverage.insert(start, end).map_err(protocol)?;
            let data = p.data.get_or_insert_with(|| vec![0u8; req_len as usize]);
            read_exact(rd, shared, &mut data[start as usize..end as usize]).await?;
        }
        (
            ChunkType::OffsetHole,
            Expect::Read {
                offset,
                length: req_len,
            },
        ) => {
            if length != 12 {
                return Err(violation(
                    ct.name(),
                    format!("length {length}, expected 12"),
                ));
            }
            let mut b = [0u8; 12];
            read_exact(rd, shared, &mut b).await?;
            let (hole_off, hole_len) = match ReplyChunk::decode(ct, &b).map_err(protocol)? {
                ReplyChunk::OffsetHole { offset, length } => (offset, length),
                _ => unreachable!("decode of OffsetHole yields OffsetHole"),
            };
            let (start, end) =
                relative_range(ct.name(), offset, req_len, hole_off, hole_len.into())
                    .map_err(protocol)?;
            p.coverage.insert(start, end).map_err(protocol)?;
        }
        (
            ChunkType::BlockStatus,
            Expect::BlockStatus {
                length: req_len, ..
            },
        ) => {
            let max = 4 + 8 * limits::MAX_BLOCK_STATUS_DESCRIPTORS as u64;
            if !(12..=max).contains(&length) {
                return Err(violation(
                    ct.name(),
                    format!("length {length} out of bounds"),
                ));
            }
            let mut b = vec![0u8; length as usize];
            read_exact(rd, shared, &mut b).await?;
            let context_id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            if !context_ids.contains(&context_id) {
                return Err(violation(
                    ct.name(),
                    format!("context id {context_id} was never negotiated"),
                ));
            }
            if p.status.iter().any(|(id, _)| *id == context_id) {
                return Err(violation(
                    ct.name(),
                    format!("context id {context_id} sent twice"),
                ));
            }
            let descriptors = decode_descriptors(&b[4..]).map_err(protocol)?;
            check_descriptors(&descriptors, req_len)?;
            p.status.push((context_id, descriptors));
        }
        (t, expect) if t.is_error() => {
            if !(6..=6 + u64::from(u16::MAX) + 8).contains(&length) {
                return Err(violation(
                    t.name(),
                    format!("length {length} out of bounds"),
                ));
            }
            let mut b = vec![0u8; length as usize];
            read_exact(rd, shared, &mut b).await?;
            let (error, message) = decode_error_prefix(&b).map_err(protocol)?;
            if t == ChunkType::ErrorOffset {
                let (offset, len) = match expect {
                    Expect::Read { offset, length } => (offset, length),
                    Expect::BlockStatus { offset, length, .. } => (offset, length),
                };
                match ReplyChunk::decode(t, &b).map_err(protocol)? {
                    ReplyChunk::ErrorOffset { offset: at, .. } => {
                        relative_range(t.name(), offset, len, at, 1).map_err(protocol)?;
                    }
                    _ => unreachable!("decode of ErrorOffset yields ErrorOffset"),
                }
            }
            if error == 0 {
                return Err(violation(t.name(), "error value is 0".into()));
            }
            p.error.get_or_insert(ServerFailure {
                errno: Errno::from(error),
                message,
            });
        }
        (t, _) => {
            return Err(violation(
                "structured reply",
                format!("unexpected {t} chunk for cookie {}", h.cookie),
            ))
        }
    }
    if h.is_done() {
        let Some(p) = partial.remove(&h.cookie) else {
            unreachable!("present above");
        };
        let result = finish(p)?;
        let _ = result.1.send(result.0);
    }
    Ok(())
}

type Finished = (ReplyResult, oneshot::Sender<ReplyResult>);

fn finish(p: Partial) -> Result<Finished, DisconnectReason> {
    let slot = p.pending.slot;
    if let Some(err) = p.error {
        return Ok((Err(err), slot));
    }
    let outcome = match p.pending.expect {
        Expect::Read { length, .. } => {
            if p.coverage.covered() != u64::from(length) {
                return Err(violation(
                    "read reply",
                    format!("DONE after {} of {length} bytes", p.coverage.covered()),
                ));
            }
            let data = p.data.unwrap_or_else(|| vec![0u8; length as usize]);
            Outcome::Data(Bytes::from(data))
        }
        Expect::BlockStatus { context_id, .. } => {
            if !p.status.iter().any(|(id, _)| *id == context_id) {
                return Err(violation(
                    "block status reply",
                    format!("DONE without extents for context id {context_id}"),
                ));
            }
            Outcome::Status(p.status)
        }
    };
    Ok((Ok(outcome), slot))
}

/// Every descriptor but the last must end inside the request; the last may
/// run past it (the protocol allows that), and is clamped by the caller.
fn check_descriptors(d: &[BlockDescriptor], req_len: u32) -> Result<(), DisconnectReason> {
    let mut end = 0u64;
    for (i, desc) in d.iter().enumerate() {
        if end >= u64::from(req_len) {
            return Err(violation(
                "block status reply",
                format!("descriptor {i} starts past the requested length {req_len}"),
            ));
        }
        end += u64::from(desc.length);
    }
    Ok(())
}
