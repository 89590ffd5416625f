//! Why the server ended a connection, or stopped accepting.

use std::io;
use std::time::Duration;

use thiserror::Error;

use crate::proto::ProtoError;

/// Errors of the NBD server. Each names the export it is about; a client's
/// misbehaviour ends only that client's connection.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The listening socket failed with an error that retrying cannot fix.
    #[error("nbd export {export:?}: cannot accept connections: {source}; recreate the socket and serve again")]
    Accept {
        export: String,
        #[source]
        source: io::Error,
    },

    #[error("nbd export {export:?}: client socket error: {source}")]
    Io {
        export: String,
        #[source]
        source: io::Error,
    },

    /// The client hung up in the middle of a message, or during the handshake.
    #[error("nbd export {export:?}: the client closed the connection {during}")]
    ClientClosed {
        export: String,
        during: &'static str,
    },

    /// The client broke the protocol; the stream can no longer be trusted.
    #[error("nbd export {export:?}: the client broke the protocol: {error}")]
    Protocol {
        export: String,
        #[source]
        error: ProtoError,
    },

    #[error("nbd export {export:?}: the client did not finish the handshake within {timeout:?}")]
    HandshakeTimeout { export: String, timeout: Duration },

    /// `NBD_OPT_EXPORT_NAME` for another export; the protocol leaves no way to refuse but closing.
    #[error("nbd export {export:?}: the client asked for export {requested:?}, which this server does not serve")]
    UnknownExport { export: String, requested: String },

    #[error("nbd export {export:?}: the client sent handshake flags {flags:#x} this server does not know")]
    UnknownClientFlags { export: String, flags: u32 },

    #[error(
        "nbd export {export:?}: the client sent more than {max} options without choosing an export"
    )]
    TooManyOptions { export: String, max: usize },
}

impl ServeError {
    /// Maps a socket error, telling a hang-up apart from other failures.
    pub(crate) fn from_io(export: &str, during: &'static str, e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ServeError::ClientClosed {
                export: export.to_owned(),
                during,
            }
        } else {
            ServeError::Io {
                export: export.to_owned(),
                source: e,
            }
        }
    }

    pub(crate) fn protocol(export: &str, error: ProtoError) -> Self {
        ServeError::Protocol {
            export: export.to_owned(),
            error,
        }
    }

    /// True when the client simply went away; not worth more than a debug log.
    pub fn is_client_gone(&self) -> bool {
        match self {
            ServeError::ClientClosed { .. } => true,
            ServeError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            _ => false,
        }
    }
}
