//! Async NBD client: connect, negotiate, then read data and block status with
//! many requests in flight on one connection (see [`conn`] for how).

mod assemble;
mod conn;
mod negotiate;
mod reader;

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs, UnixStream};

use crate::error::{DisconnectReason, NbdError};
use crate::extent::{push_merged, Extent};
use crate::proto::handshake::OptionRequest;
use crate::proto::limits;
use crate::proto::transmission::Command;
use conn::{Connection, Expect, Outcome, ReplyResult};
pub use negotiate::{ExportInfo, MetaContext};

/// Default for [`ConnectOptions::io_timeout`].
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest range one BLOCK_STATUS request asks about in [`NbdClient::extents`].
const MAX_STATUS_REQUEST: u32 = 1 << 30;

/// What to ask of the server when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Export to open; QEMU's `block-export-add` uses the node name by default.
    pub export_name: String,
    /// Meta contexts to negotiate, e.g. `base:allocation` or
    /// `qemu:dirty-bitmap:NAME`. Each must be granted or connecting fails.
    pub meta_contexts: Vec<String>,
    /// How long the server may stay silent, during the handshake or while a
    /// request waits, before the connection is declared dead.
    pub io_timeout: Duration,
}

impl ConnectOptions {
    pub fn new(export_name: impl Into<String>) -> Self {
        ConnectOptions {
            export_name: export_name.into(),
            meta_contexts: Vec::new(),
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }

    pub fn with_meta_context(mut self, name: impl Into<String>) -> Self {
        self.meta_contexts.push(name.into());
        self
    }

    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }
}

/// A connection to one NBD export. Methods take `&self` and may run
/// concurrently (share it with `Arc`); their requests are pipelined.
pub struct NbdClient {
    endpoint: String,
    info: ExportInfo,
    contexts: Vec<MetaContext>,
    max_read: u32,
    conn: Connection,
}

impl NbdClient {
    /// Connects to a server listening on a Unix socket (QEMU's usual setup).
    pub async fn connect_unix(path: &Path, opts: ConnectOptions) -> Result<Self, NbdError> {
        let endpoint = format!("unix:{}", path.display());
        let stream = match tokio::time::timeout(opts.io_timeout, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(NbdError::Connect { endpoint, source }),
            Err(_) => return Err(timeout_error(endpoint, opts.io_timeout)),
        };
        Self::connect_stream(stream, endpoint, opts).await
    }

    /// Connects over TCP (no TLS).
    pub async fn connect_tcp(
        addr: impl ToSocketAddrs + std::fmt::Display,
        opts: ConnectOptions,
    ) -> Result<Self, NbdError> {
        let endpoint = format!("tcp:{addr}");
        let stream = match tokio::time::timeout(opts.io_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(NbdError::Connect { endpoint, source }),
            Err(_) => return Err(timeout_error(endpoint, opts.io_timeout)),
        };
        let _ = stream.set_nodelay(true);
        Self::connect_stream(stream, endpoint, opts).await
    }

    /// Negotiates over an already connected stream; `endpoint` names it in errors.
    pub async fn connect_stream<S>(
        mut stream: S,
        endpoint: impl Into<String>,
        opts: ConnectOptions,
    ) -> Result<Self, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let endpoint = endpoint.into();
        let negotiated = match tokio::time::timeout(
            opts.io_timeout,
            negotiate::negotiate(&mut stream, &endpoint, &opts),
        )
        .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                if e.disconnect_reason().is_none() {
                    // The stream is still in sync: tell the server we are leaving.
                    send_abort(&mut stream).await;
                }
                return Err(e);
            }
            Err(_) => return Err(timeout_error(endpoint, opts.io_timeout)),
        };
        let max_read = match negotiated.info.block_size {
            Some(b) => b.maximum.min(limits::MAX_READ),
            None => limits::MAX_READ,
        };
        let ids = negotiated.contexts.iter().map(|c| c.id).collect();
        tracing::debug!(
            endpoint,
            size = negotiated.info.size,
            contexts = ?negotiated.contexts,
            "nbd connected"
        );
        Ok(NbdClient {
            conn: Connection::start(stream, ids, opts.io_timeout),
            endpoint,
            info: negotiated.info,
            contexts: negotiated.contexts,
            max_read,
        })
    }

    pub fn export_size(&self) -> u64 {
        self.info.size
    }

    pub fn export_info(&self) -> &ExportInfo {
        &self.info
    }

    /// The meta contexts granted, in the order they were asked for.
    pub fn meta_contexts(&self) -> &[MetaContext] {
        &self.contexts
    }

    /// Largest single READ request sent; [`Self::read`] splits longer reads.
    pub fn max_read_len(&self) -> u32 {
        self.max_read
    }

    /// Reads `len` bytes at `offset`. Reads longer than [`Self::max_read_len`]
    /// are split here into pipelined requests and reassembled; for throughput,
    /// callers should still keep several reads of a few MiB in flight.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, NbdError> {
        self.check_range(Command::Read, offset, len.into())?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if len <= self.max_read {
            return self.read_one(offset, len).await;
        }
        // Submit every piece before waiting on any, so they are all in flight.
        let mut pieces = Vec::new();
        let mut at = 0u32;
        while at < len {
            let n = (len - at).min(self.max_read);
            let expect = Expect::Read {
                offset: offset + u64::from(at),
                length: n,
            };
            let rx = self
                .conn
                .submit(Command::Read, 0, expect)
                .map_err(|r| self.disconnected(r))?;
            pieces.push((expect, rx));
            at += n;
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for (expect, rx) in pieces {
            let reply = self.conn.wait(rx).await;
            out.extend_from_slice(&self.data(Command::Read, expect, reply)?);
        }
        Ok(out.freeze())
    }

    async fn read_one(&self, offset: u64, length: u32) -> Result<Bytes, NbdError> {
        let expect = Expect::Read { offset, length };
        let rx = self
            .conn
            .submit(Command::Read, 0, expect)
            .map_err(|r| self.disconnected(r))?;
        let reply = self.conn.wait(rx).await;
        self.data(Command::Read, expect, reply)
    }

    fn data(
        &self,
        command: Command,
        expect: Expect,
        reply: Result<ReplyResult, DisconnectReason>,
    ) -> Result<Bytes, NbdError> {
        match self.outcome(command, expect, reply)? {
            Outcome::Data(b) => Ok(b),
            Outcome::Status(_) => unreachable!("reader answers READ with data"),
        }
    }

    /// One BLOCK_STATUS request for `context`. The server may describe less
    /// than `len` bytes; extents are absolute and clamped to the request.
    pub async fn block_status(
        &self,
        context: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<Extent>, NbdError> {
        self.check_range(Command::BlockStatus, offset, len.into())?;
        let context_id = self.context_id(context)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let expect = Expect::BlockStatus {
            offset,
            length: len,
            context_id,
        };
        let rx = self
            .conn
            .submit(Command::BlockStatus, 0, expect)
            .map_err(|r| self.disconnected(r))?;
        let reply = self.conn.wait(rx).await;
        let Outcome::Status(per_context) = self.outcome(Command::BlockStatus, expect, reply)?
        else {
            unreachable!("reader answers BLOCK_STATUS with status");
        };
        let end = offset + u64::from(len);
        let mut out = Vec::new();
        let mut at = offset;
        let descriptors = per_context
            .into_iter()
            .find(|(id, _)| *id == context_id)
            .map(|(_, d)| d)
            .unwrap_or_default();
        for d in descriptors {
            let length = u64::from(d.length).min(end - at);
            push_merged(
                &mut out,
                Extent {
                    offset: at,
                    length,
                    flags: d.flags,
                },
            );
            at += length;
            if at == end {
                break;
            }
        }
        Ok(out)
    }

    /// All extents of `context` covering `[offset, offset + len)`, asking as
    /// often as needed; adjacent extents with equal flags are merged.
    pub async fn extents(
        &self,
        context: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>, NbdError> {
        self.check_range(Command::BlockStatus, offset, len)?;
        self.context_id(context)?;
        let end = offset + len;
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let ask = (end - at).min(u64::from(MAX_STATUS_REQUEST)) as u32;
            // block_status checks the reply is nonempty, so `at` always advances.
            for e in self.block_status(context, at, ask).await? {
                push_merged(&mut out, e);
            }
            at = out.last().map_or(at, Extent::end);
        }
        Ok(out)
    }

    /// Sends `NBD_CMD_DISC` and closes the connection.
    pub async fn disconnect(self) -> Result<(), NbdError> {
        self.conn.close().await;
        Ok(())
    }

    fn outcome(
        &self,
        command: Command,
        expect: Expect,
        reply: Result<ReplyResult, DisconnectReason>,
    ) -> Result<Outcome, NbdError> {
        match reply {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(failure)) => {
                let (offset, length) = match expect {
                    Expect::Read { offset, length } => (offset, length),
                    Expect::BlockStatus { offset, length, .. } => (offset, length),
                };
                Err(NbdError::Server {
                    endpoint: self.endpoint.clone(),
                    command,
                    offset,
                    length,
                    errno: failure.errno,
                    message: failure.message,
                })
            }
            Err(reason) => Err(self.disconnected(reason)),
        }
    }

    fn disconnected(&self, reason: DisconnectReason) -> NbdError {
        NbdError::Disconnected {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    fn context_id(&self, context: &str) -> Result<u32, NbdError> {
        self.contexts
            .iter()
            .find(|c| c.name == context)
            .map(|c| c.id)
            .ok_or_else(|| NbdError::ContextNotNegotiated {
                endpoint: self.endpoint.clone(),
                context: context.to_owned(),
            })
    }

    fn check_range(&self, command: Command, offset: u64, length: u64) -> Result<(), NbdError> {
        let fits = offset
            .checked_add(length)
            .is_some_and(|end| end <= self.info.size);
        if fits {
            Ok(())
        } else {
            Err(NbdError::OutOfRange {
                endpoint: self.endpoint.clone(),
                command,
                offset,
                length,
                export_size: self.info.size,
            })
        }
    }
}

/// Best effort `NBD_OPT_ABORT`; the connection is dropped right after anyway.
async fn send_abort<S: AsyncWrite + Unpin>(stream: &mut S) {
    let mut buf = BytesMut::new();
    OptionRequest::Abort.encode(&mut buf);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&buf)).await;
}

fn timeout_error(endpoint: String, after: Duration) -> NbdError {
    NbdError::Disconnected {
        endpoint,
        reason: DisconnectReason::Timeout(after),
    }
}
