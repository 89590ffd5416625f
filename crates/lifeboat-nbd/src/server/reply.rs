//! Replies of the transmission phase and the one task that writes them.
//!
//! Every request that needs an answer holds a [`PendingReply`], which carries
//! the permits that bound the connection's work in flight. The permits are
//! released only once the reply is written, so a client that stops reading
//! stalls its own requests instead of growing the server's memory.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::ServerStats;
use crate::proto::transmission::{Errno, SimpleReplyHeader};

/// Coalesces small replies into one write; large data goes out directly.
const WRITE_BUFFER: usize = 64 * 1024;

/// The permits a request holds until its reply is on the wire; held only
/// to be dropped then.
pub(super) struct Permits {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Permits {
    pub(super) fn new(request: OwnedSemaphorePermit) -> Self {
        Permits {
            _request: request,
            _bytes: None,
        }
    }
}

pub(super) struct Reply {
    cookie: u64,
    /// 0 or an errno.
    error: u32,
    data: Bytes,
    _permits: Permits,
}

pub(super) type ReplySender = mpsc::UnboundedSender<Reply>;

/// A reply owed to the client. If dropped unsent (the source panicked or the
/// task was cancelled), it answers `EIO`, so the client never waits forever
/// for a cookie.
pub(super) struct PendingReply {
    cookie: u64,
    owed: Option<(ReplySender, Permits)>,
}

impl PendingReply {
    pub(super) fn new(cookie: u64, tx: ReplySender, permits: Permits) -> Self {
        PendingReply {
            cookie,
            owed: Some((tx, permits)),
        }
    }

    pub(super) fn add_bytes_permit(&mut self, permit: OwnedSemaphorePermit) {
        if let Some((_, permits)) = &mut self.owed {
            permits._bytes = Some(permit);
        }
    }

    pub(super) fn ok(self, data: Bytes) {
        self.send(0, data);
    }

    pub(super) fn error(self, errno: Errno) {
        self.send(errno.raw(), Bytes::new());
    }

    fn send(mut self, error: u32, data: Bytes) {
        self.send_now(error, data);
    }

    fn send_now(&mut self, error: u32, data: Bytes) {
        if let Some((tx, permits)) = self.owed.take() {
            // Fails only when the writer is gone, and then so is the client.
            let _ = tx.send(Reply {
                cookie: self.cookie,
                error,
                data,
                _permits: permits,
            });
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.send_now(Errno::Io.raw(), Bytes::new());
    }
}

/// Writes replies in the order they are ready until every sender is gone,
/// then flushes and shuts the write side down. Each reply is written whole,
/// so replies never interleave.
pub(super) async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut replies: mpsc::UnboundedReceiver<Reply>,
    stats: Arc<ServerStats>,
) -> std::io::Result<()> {
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    let mut header = BytesMut::with_capacity(SimpleReplyHeader::LEN);
    while let Some(reply) = replies.recv().await {
        header.clear();
        SimpleReplyHeader {
            error: reply.error,
            cookie: reply.cookie,
        }
        .encode(&mut header);
        wr.write_all(&header).await?;
        if !reply.data.is_empty() {
            wr.write_all(&reply.data).await?;
            stats.add_bytes_served(reply.data.len() as u64);
        }
        drop(reply);
        if replies.is_empty() {
            wr.flush().await?;
        }
    }
    wr.flush().await?;
    // The client may close first once it has every reply; that is no error.
    let _ = wr.shutdown().await;
    Ok(())
}
