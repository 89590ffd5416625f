//! What an operation is and how it stands.

use serde::{Deserialize, Serialize};

/// The kinds of operations, as stored and shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    /// `protect`: replication enabled, up to the first point.
    Enable,
    /// `unprotect`.
    Disable,
    FailoverTest,
    FailoverPlanned,
    FailoverUnplanned,
    FailoverCleanup,
    FailoverCommit,
    Failback,
    Reprotect,
}

crate::named_enum!(OperationKind, "operation kind", {
    Enable => "enable",
    Disable => "disable",
    FailoverTest => "failover-test",
    FailoverPlanned => "failover-planned",
    FailoverUnplanned => "failover-unplanned",
    FailoverCleanup => "failover-cleanup",
    FailoverCommit => "failover-commit",
    Failback => "failback",
    Reprotect => "reprotect",
});

/// How an operation stands. `Running` covers undoing too (the operation's `undoing`
/// flag says which way it goes): one running operation per VM, whichever way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    Running,
    /// Every step done.
    Succeeded,
    /// A step failed; what was done before it was undone where it could be.
    Failed,
    /// Cancelled before its point of no return, and undone.
    Cancelled,
}

crate::named_enum!(OperationStatus, "operation status", {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl OperationStatus {
    pub fn is_done(self) -> bool {
        self != OperationStatus::Running
    }
}
