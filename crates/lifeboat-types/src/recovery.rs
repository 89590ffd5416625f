//! VMs brought up on a recovery host.

use serde::{Deserialize, Serialize};

/// Why a VM was brought up on a recovery host.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryKind {
    /// Beside production: an isolated network (no route out), a new MAC, its own ports.
    #[default]
    Test,
    /// The VM itself, moved in order with zero data loss: same MAC, same networks.
    Planned,
    /// The VM itself, from a chosen point, its source presumed lost and fenced.
    Unplanned,
}

crate::named_enum!(RecoveryKind, "recovery kind", {
    Test => "test",
    Planned => "planned",
    Unplanned => "unplanned",
});

/// A recovered VM's state as the server records it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryState {
    /// Being brought up.
    #[default]
    Starting,
    Running,
    /// A failover that was committed: the copy is the VM now.
    Committed,
    /// Being removed (cleanup, failback).
    Removing,
    Failed,
    /// Its VM runs elsewhere now (an unplanned failback brought it home): it is to be
    /// fenced as soon as its host answers.
    Fencing,
    /// Stopped and fenced on its host: it cannot start. Its disks stay, with any write
    /// made after the point the VM came home from.
    Fenced,
}

crate::named_enum!(RecoveryState, "recovery state", {
    Starting => "starting",
    Running => "running",
    Committed => "committed",
    Removing => "removing",
    Failed => "failed",
    Fencing => "fencing",
    Fenced => "fenced",
});
