//! The client's error type, and why a connection died. The server has its
//! own, [`crate::server::ServeError`].

use std::fmt;
use std::io;
use std::time::Duration;

use thiserror::Error;

use crate::proto::handshake::{OptionCode, ReplyType};
use crate::proto::transmission::{Command, Errno};
use crate::proto::ProtoError;

/// Why a connection is dead. Cloneable, because every request that was
/// pending or is issued later on that connection fails with the same reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The server closed the connection.
    ServerClosed,
    /// A socket error.
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    /// The server broke the protocol; the stream can no longer be trusted.
    Protocol(ProtoError),
    /// The server sent nothing for this long while a request was waiting.
    Timeout(Duration),
    /// This client disconnected.
    ClientClosed,
}

impl DisconnectReason {
    pub(crate) fn from_io(e: &io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            DisconnectReason::ServerClosed
        } else {
            DisconnectReason::Io {
                kind: e.kind(),
                message: e.to_string(),
            }
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ServerClosed => f.write_str("the server closed the connection"),
            DisconnectReason::Io { message, .. } => write!(f, "socket error: {message}"),
            DisconnectReason::Protocol(e) => write!(f, "protocol violation by the server: {e}"),
            DisconnectReason::Timeout(d) => write!(f, "the server did not answer within {d:?}"),
            DisconnectReason::ClientClosed => f.write_str("the client disconnected"),
        }
    }
}

/// Errors from connecting to and talking with an NBD server. `endpoint` is the
/// socket path or address, so a message names the export it is about.
#[derive(Debug, Error)]
pub enum NbdError {
    #[error("nbd {endpoint}: cannot connect: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },

    /// The connection is dead (during the handshake or after it); every
    /// request on it fails with this.
    #[error("nbd {endpoint}: connection lost: {reason}")]
    Disconnected {
        endpoint: String,
        reason: DisconnectReason,
    },

    #[error("nbd {endpoint}: server does not support {what}")]
    Unsupported { endpoint: String, what: String },

    #[error("nbd {endpoint}: export {export:?} does not exist on the server ({message})")]
    ExportNotFound {
        endpoint: String,
        export: String,
        message: String,
    },

    #[error(
        "nbd {endpoint}: server did not grant meta context {context:?}; for \
         qemu:dirty-bitmap:NAME the bitmap does not exist or was not exported with the export"
    )]
    MetaContextNotGranted { endpoint: String, context: String },

    #[error("nbd {endpoint}: server refused {option}: {reply}: {message}")]
    OptionRefused {
        endpoint: String,
        option: OptionCode,
        reply: ReplyType,
        message: String,
    },

    #[error("nbd {endpoint}: meta context {context:?} was not negotiated on this connection; add it to ConnectOptions::meta_contexts")]
    ContextNotNegotiated { endpoint: String, context: String },

    #[error("nbd {endpoint}: {command} offset {offset} length {length} is outside the export of {export_size} bytes")]
    OutOfRange {
        endpoint: String,
        command: Command,
        offset: u64,
        length: u64,
        export_size: u64,
    },

    /// The server answered the request with an error; the connection stays usable.
    #[error("nbd {endpoint}: {command} offset {offset} length {length} failed on the server: {errno}{}", fmt_message(.message))]
    Server {
        endpoint: String,
        command: Command,
        offset: u64,
        length: u32,
        errno: Errno,
        message: String,
    },
}

fn fmt_message(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(" ({m})")
    }
}

impl NbdError {
    /// The reason, if this error means the connection is dead.
    pub fn disconnect_reason(&self) -> Option<&DisconnectReason> {
        match self {
            NbdError::Disconnected { reason, .. } => Some(reason),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self.disconnect_reason(), Some(DisconnectReason::Timeout(_)))
    }
}
