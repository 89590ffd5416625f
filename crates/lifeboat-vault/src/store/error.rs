//! The vault's public error type: every failure names the vault or object and, where the
//! operator can act, what to do.

use crate::backend::BackendError;
use crate::format::{FormatError, Name, PointId};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Backend(#[from] BackendError),

    #[error(transparent)]
    Format(#[from] FormatError),

    #[error("vault {url}: there is no vault here (no `config` object); create one with `lifeboat vault init --vault {url}`")]
    NotAVault { url: String },

    #[error("vault {url}: a vault already exists here; use it, or pick another URL")]
    AlreadyExists { url: String },

    #[error("vault {url}: no recovery point {point}{}", name.as_ref().map(|n| format!(" of {n}")).unwrap_or_default())]
    UnknownPoint {
        url: String,
        name: Option<Name>,
        point: PointId,
    },

    #[error("point {point}: it has no disk {disk}")]
    UnknownDisk { point: PointId, disk: String },

    #[error("vault {url}: this host's key opens only the points of {holds}, not those of {wanted} (each VM has its own key; ask the server for {wanted}'s, or use the vault's master key)")]
    OtherScope {
        url: String,
        holds: Name,
        wanted: Name,
    },

    #[error("vault {url}: opened without a key (maintenance by the control plane); reading or writing points needs the vault's key")]
    NoKey { url: String },

    #[error("{0}")]
    Usage(String),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("point {point} of {name} is damaged: {reason}")]
    Damaged {
        name: Name,
        point: PointId,
        reason: String,
    },
}

pub type Result<T, E = VaultError> = std::result::Result<T, E>;

impl VaultError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        VaultError::Io {
            what: what.into(),
            source,
        }
    }
}
