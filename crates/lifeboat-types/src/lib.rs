//! Lifeboat's vocabulary, shared by the server, the agent's client and the CLI: typed IDs,
//! the protection state machine with its one transition function, and the kinds and
//! statuses of operations and recoveries. No I/O here: these types are checked in unit
//! tests and stored by the server as checked columns.

pub mod ids;
pub mod network;
pub mod operation;
pub mod protection;
pub mod recovery;
pub mod version;

pub use ids::{HostId, OperationId, ProtectionId, RecoveryId};
pub use network::{
    Addressing, DnsRecord, HostNetwork, MoveKind, NetworkSettings, NicAddressing, NicSettings,
    StaticAddress,
};
pub use operation::{OperationKind, OperationStatus};
pub use protection::{Event, ProtectionState, Refusal};
pub use recovery::{PortForward, RecoveryKind, RecoveryState};
pub use version::VersionSkew;

/// Text that is not one of an enum's names, with the names it could have been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a known {what}; expected one of: {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

/// `as_str`, `FromStr`, `Display` and `ALL` for a unit-only enum whose serde names are
/// the given texts: one table, so the database's check constraint, the API and the CLI
/// can never spell a state differently.
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err($crate::UnknownName {
                        what: $what,
                        value: other.to_string(),
                        expected: [$($name),+].join(", "),
                    }),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use named_enum;
