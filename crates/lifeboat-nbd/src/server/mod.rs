//! A read-only NBD server for one export backed by any async byte source.
//!
//! Instant recovery uses it: the agent serves a disk of a recovery point
//! straight from the vault ([`ExportSource`]) and QEMU boots the VM from a
//! local qcow2 overlay whose backing file is this export, while
//! `block-stream` copies the rest into the overlay in the background.
//!
//! ```text
//!  accept ─▶ handshake (handshake.rs) ──GO / EXPORT_NAME──▶ transmission (transmission.rs)
//!                 │                                           │
//!                 └─ ABORT, unknown export, timeout ─▶ close  └─ DISC / EOF ─▶ write owed replies, close
//! ```
//!
//! What clients get: fixed-newstyle negotiation, simple replies only
//! (structured replies, meta contexts, extended headers and TLS are refused
//! with `NBD_REP_ERR_UNSUP`), and the transmission flags in
//! [`TRANSMISSION_FLAGS`]: read-only, flush accepted, and safe for several
//! connections at once. Writes, trims and zeroing are answered `EPERM`;
//! reads outside the export and unknown commands `EINVAL`; a failed source
//! read `EIO`, with the connection left up.
//!
//! The client is treated as hostile: the handshake is bounded in time
//! ([`ServerOptions::handshake_timeout`]) and in options; every length is
//! checked before anything is allocated for it; the work in flight per
//! connection is bounded in requests and bytes, so a client that stops
//! reading its replies stalls only itself; a protocol violation closes only
//! that client's connection.

mod error;
mod handshake;
mod listener;
mod reply;
mod source;
mod stats;
mod transmission;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use error::ServeError;
pub use listener::serve_unix;
pub use source::ExportSource;
pub use stats::ServerStats;

use crate::proto::transmission::transmission_flags as tf;

/// The transmission flags sent with the export size.
pub const TRANSMISSION_FLAGS: u16 =
    tf::HAS_FLAGS | tf::READ_ONLY | tf::SEND_FLUSH | tf::CAN_MULTI_CONN;

/// Default for [`ServerOptions::max_in_flight`]; QEMU keeps up to 16 requests in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// Default for [`ServerOptions::max_in_flight_bytes`].
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;
/// Default for [`ServerOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// Default for [`ServerOptions::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to serve the export.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Name clients ask for; the empty name (the default export) is accepted too.
    pub export_name: String,
    /// Requests one connection may have in flight; further requests are not
    /// read until a reply has been written.
    pub max_in_flight: usize,
    /// Bytes of READ data one connection may have in flight (at least
    /// [`crate::proto::limits::MAX_READ`], so the largest read always fits).
    pub max_in_flight_bytes: usize,
    /// Connections [`serve_unix`] serves at once; further clients wait in
    /// the listen backlog.
    pub max_connections: usize,
    /// Time a client has to choose the export after connecting.
    pub handshake_timeout: Duration,
    /// Counters shared by every connection; clone the `Arc` to watch them.
    pub stats: Arc<ServerStats>,
}

impl ServerOptions {
    pub fn new(export_name: impl Into<String>) -> Self {
        ServerOptions {
            export_name: export_name.into(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            stats: Arc::new(ServerStats::default()),
        }
    }

    pub fn with_max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests;
        self
    }

    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

/// Serves one connection: the handshake, then requests until the client
/// disconnects. `Ok` when the client left cleanly (`NBD_OPT_ABORT`,
/// `NBD_CMD_DISC`, or closing between requests).
pub async fn serve_connection<IO, S>(
    mut io: IO,
    source: Arc<S>,
    options: &ServerOptions,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: ExportSource,
{
    let sizes = ExportSize::of(source.size());
    let negotiated = tokio::time::timeout(
        options.handshake_timeout,
        handshake::negotiate(&mut io, sizes.advertised, options),
    )
    .await
    .map_err(|_| ServeError::HandshakeTimeout {
        export: options.export_name.clone(),
        timeout: options.handshake_timeout,
    })??;
    match negotiated {
        handshake::Negotiated::Aborted => Ok(()),
        handshake::Negotiated::Transmission => {
            options.stats.add_connection();
            transmission::serve(io, source, sizes, options).await
        }
    }
}

/// The source's size and the size clients are told.
///
/// The advertised size is rounded up to a multiple of 512, the tail reading
/// as zeroes: QEMU's block layer counts whole sectors, and its client (7.2
/// at least) with simple replies then reads a whole sector's worth of reply
/// data for the last request while the server sends only up to the export's
/// end, which hangs or desynchronizes the connection. A guest sees such a
/// disk rounded up the same way when QEMU serves it from a raw file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExportSize {
    pub(crate) source: u64,
    pub(crate) advertised: u64,
}

impl ExportSize {
    pub(crate) const ALIGN: u64 = 512;

    pub(crate) fn of(source: u64) -> Self {
        let advertised = source
            .checked_next_multiple_of(Self::ALIGN)
            // Within 511 bytes of 2^64: cannot round up, and no disk is that big.
            .unwrap_or(source);
        ExportSize { source, advertised }
    }
}
