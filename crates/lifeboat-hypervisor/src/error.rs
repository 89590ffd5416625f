//! The one public error type of the hypervisor crate. Every variant names the VM (or
//! the file) it is about and, where the operator can act, what to do.

use std::path::PathBuf;

use crate::spec::VmName;

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("VM spec {path}: {reason}")]
    InvalidSpec { path: PathBuf, reason: String },

    #[error("VM {0} is not defined; define it first with `lifeboat vm define SPEC.toml`")]
    UnknownVm(VmName),

    #[error("VM {0} is already defined; undefine it first or pick another name")]
    AlreadyDefined(VmName),

    #[error("{0}")]
    Unsupported(String),

    #[error("VM {vm} is {state}; {what}")]
    WrongState {
        vm: VmName,
        state: String,
        what: String,
    },

    #[error("VM {vm}: QEMU failed to start: {reason}")]
    StartFailed { vm: VmName, reason: String },

    #[error("VM {vm}: QMP {command}: {source}")]
    Qmp {
        vm: VmName,
        command: String,
        #[source]
        source: crate::qemu::qmp::QmpError,
    },

    #[error("VM {vm}: reading the cut over NBD: {source}")]
    Nbd {
        vm: VmName,
        #[source]
        source: lifeboat_nbd::NbdError,
    },

    #[error("VM {vm}: {what} did not finish within {secs} s")]
    Timeout { vm: VmName, what: String, secs: u64 },

    #[error("VM {vm}: changed-block tracking needs a full resync: {reason}")]
    NeedsFullResync { vm: VmName, reason: String },

    #[error("VM {vm}: changed-block tracking is not started; start it with a full cut first")]
    NotTracking { vm: VmName },

    #[error("{what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("home {0} is a shared directory (writable by a group or everyone, like /tmp, or owned by another user); give Lifeboat a directory of its own with --home")]
    SharedHome(PathBuf),

    #[error("{tool} failed: {reason}")]
    Tool { tool: String, reason: String },
}

pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;

impl HypervisorError {
    pub(crate) fn io(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        HypervisorError::Io {
            what: what.into(),
            path: path.into(),
            source,
        }
    }
}
