//! The transmission phase of one connection: read requests, answer them.
//!
//! ```text
//!  socket ─▶ request loop ─┬─ READ ─▶ task: source.read ─┐
//!                          └─ others: answered at once ──┴─▶ reply channel ─▶ writer ─▶ socket
//! ```
//!
//! The request loop takes a request permit (at most `max_in_flight`) before
//! reading each request, and a READ also takes permits for its bytes (at most
//! `max_in_flight_bytes`); both are released when the reply is written (see
//! [`super::reply`]). Reads run concurrently and their replies go out in the
//! order they finish, each carrying the client's cookie.
//!
//! Ending: `NBD_CMD_DISC`, or the client closing its side between requests,
//! stops reading; the replies still owed are written, then the socket is
//! shut down. A protocol violation or socket error drops everything at once.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::reply::{write_replies, PendingReply, Permits, ReplySender};
use super::{ExportSize, ExportSource, ServeError, ServerOptions, ServerStats};
use crate::proto::limits;
use crate::proto::transmission::{Command, Errno, RequestHeader};
use crate::proto::ProtoError;

const READ_BUFFER: usize = 64 * 1024;

/// What every request of one connection needs.
struct Conn<S> {
    source: Arc<S>,
    source_size: u64,
    /// What the client was told; reads between the two sizes are zeroes.
    size: u64,
    export: String,
    stats: Arc<ServerStats>,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// Serves requests on `io` until the client disconnects.
pub(super) async fn serve<IO, S>(
    io: IO,
    source: Arc<S>,
    sizes: ExportSize,
    options: &ServerOptions,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite,
    S: ExportSource,
{
    let conn = Conn {
        source,
        source_size: sizes.source,
        size: sizes.advertised,
        export: options.export_name.clone(),
        stats: options.stats.clone(),
        requests: Arc::new(Semaphore::new(
            options.max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
        )),
        // One largest READ must always fit, or it would wait forever.
        bytes: Arc::new(Semaphore::new(
            options
                .max_in_flight_bytes
                .clamp(limits::MAX_READ as usize, Semaphore::MAX_PERMITS),
        )),
    };
    let (rd, wr) = tokio::io::split(io);
    let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
    let (tx, rx) = mpsc::unbounded_channel();
    let requests = read_requests(&mut rd, &conn, tx);
    let writer = write_replies(wr, rx, conn.stats.clone());
    tokio::pin!(requests, writer);
    let io_error = |e| ServeError::from_io(&conn.export, "before reading its replies", e);
    tokio::select! {
        r = &mut requests => {
            // The loop has ended and dropped its sender: the writer finishes
            // the replies still owed, then stops.
            r?;
            writer.await.map_err(io_error)
        }
        w = &mut writer => {
            // The request loop holds a sender, so the writer ends first only on an error.
            w.map_err(io_error)?;
            Ok(())
        }
    }
}

/// Reads and dispatches requests until the client leaves; returns once every
/// READ it started has handed over its reply.
async fn read_requests<R, S>(rd: &mut R, conn: &Conn<S>, tx: ReplySender) -> Result<(), ServeError>
where
    R: AsyncBufRead + Unpin,
    S: ExportSource,
{
    let mut reads = JoinSet::new();
    loop {
        while reads.try_join_next().is_some() {}
        let request = conn
            .requests
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Some(req) = read_header(rd, conn).await? else {
            tracing::debug!(
                export = conn.export,
                "nbd client closed without NBD_CMD_DISC"
            );
            break;
        };
        conn.stats.add_request();
        if req.command == Command::Disconnect {
            // The protocol gives it no reply; the owed ones are still written.
            break;
        }
        let reply = PendingReply::new(req.cookie, tx.clone(), Permits::new(request));
        match req.command {
            Command::Read => start_read(conn, req, reply, &mut reads).await,
            Command::Write => {
                // The payload must be consumed whatever the answer, or the
                // next header would be read from the middle of it.
                skip_payload(rd, conn, req.length).await?;
                reply.error(Errno::Perm);
            }
            Command::Flush => reply.ok(Bytes::new()),
            // A hint to prefetch; nothing to do, but the range must be valid.
            Command::Cache => match check_range(conn, &req) {
                Ok(()) => reply.ok(Bytes::new()),
                Err(errno) => reply.error(errno),
            },
            Command::Trim | Command::WriteZeroes => reply.error(Errno::Perm),
            // No meta context can be negotiated, so no BLOCK_STATUS is valid.
            Command::BlockStatus | Command::Resize | Command::Disconnect | Command::Unknown(_) => {
                tracing::debug!(export = conn.export, command = %req.command, "nbd command refused");
                reply.error(Errno::Inval);
            }
        }
    }
    while reads.join_next().await.is_some() {}
    Ok(())
}

/// Next request header, or `None` if the client closed between requests.
async fn read_header<R, S>(rd: &mut R, conn: &Conn<S>) -> Result<Option<RequestHeader>, ServeError>
where
    R: AsyncRead + Unpin,
{
    let mut hdr = [0u8; RequestHeader::LEN];
    let io_err = |e| ServeError::from_io(&conn.export, "in the middle of a request", e);
    let n = rd.read(&mut hdr).await.map_err(io_err)?;
    if n == 0 {
        return Ok(None);
    }
    rd.read_exact(&mut hdr[n..]).await.map_err(io_err)?;
    RequestHeader::decode(&hdr)
        .map(Some)
        .map_err(|e| ServeError::protocol(&conn.export, e))
}

/// Discards a WRITE payload, bounded like a READ.
async fn skip_payload<R, S>(rd: &mut R, conn: &Conn<S>, length: u32) -> Result<(), ServeError>
where
    R: AsyncBufRead + Unpin,
{
    if length > limits::MAX_READ {
        return Err(ServeError::protocol(
            &conn.export,
            ProtoError::TooLong {
                what: "NBD_CMD_WRITE payload",
                len: length.into(),
                max: limits::MAX_READ.into(),
            },
        ));
    }
    let mut payload = rd.take(length.into());
    let copied = tokio::io::copy_buf(&mut payload, &mut tokio::io::sink())
        .await
        .map_err(|e| ServeError::from_io(&conn.export, "in the middle of a write payload", e))?;
    if copied < u64::from(length) {
        return Err(ServeError::ClientClosed {
            export: conn.export.clone(),
            during: "in the middle of a write payload",
        });
    }
    Ok(())
}

fn check_range<S>(conn: &Conn<S>, req: &RequestHeader) -> Result<(), Errno> {
    let inside = req
        .offset
        .checked_add(req.length.into())
        .is_some_and(|end| end <= conn.size);
    if inside {
        Ok(())
    } else {
        Err(Errno::Inval)
    }
}

/// Validates a READ and starts it in its own task.
async fn start_read<S: ExportSource>(
    conn: &Conn<S>,
    req: RequestHeader,
    mut reply: PendingReply,
    reads: &mut JoinSet<()>,
) {
    if req.length > limits::MAX_READ {
        return reply.error(Errno::Inval);
    }
    if let Err(errno) = check_range(conn, &req) {
        tracing::debug!(
            export = conn.export,
            offset = req.offset,
            length = req.length,
            size = conn.size,
            "nbd read outside the export"
        );
        return reply.error(errno);
    }
    if req.length == 0 {
        return reply.ok(Bytes::new());
    }
    let bytes = conn
        .bytes
        .clone()
        .acquire_many_owned(req.length)
        .await
        .expect("the semaphore is never closed");
    reply.add_bytes_permit(bytes);
    let source = conn.source.clone();
    let stats = conn.stats.clone();
    let export = conn.export.clone();
    let (offset, length) = (req.offset, req.length);
    // The part past the source's end (the padding to 512) reads as zeroes.
    let from_source = conn.source_size.saturating_sub(offset).min(length.into()) as u32;
    reads.spawn(async move {
        let read = async {
            if from_source == 0 {
                Ok(Bytes::new())
            } else {
                source.read(offset, from_source).await
            }
        };
        match read.await {
            Ok(data) if data.len() == from_source as usize => reply.ok(pad(data, length)),
            Ok(data) => {
                stats.add_failed_read();
                tracing::error!(
                    export,
                    offset,
                    length = from_source,
                    got = data.len(),
                    "nbd export source returned the wrong length; answering EIO"
                );
                reply.error(Errno::Io);
            }
            Err(e) => {
                stats.add_failed_read();
                tracing::warn!(
                    export,
                    offset,
                    length,
                    "nbd read failed, answering EIO: {e}"
                );
                reply.error(Errno::Io);
            }
        }
    });
}

/// `data` followed by zeroes up to `length`.
fn pad(data: Bytes, length: u32) -> Bytes {
    if data.len() == length as usize {
        return data;
    }
    let mut out = BytesMut::with_capacity(length as usize);
    out.extend_from_slice(&data);
    out.resize(length as usize, 0);
    out.freeze()
}
