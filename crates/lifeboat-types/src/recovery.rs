//! VMs brought up on a recovery host.

use serde::{Deserialize, Serialize};

/// A port of the recovery host that leads to a recovered VM (a NIC on a user network):
/// where a tester or a client reaches the guest's `guest_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortForward {
    pub host_port: u16,
    pub guest_port: u16,
    /// Bound on every address of the recovery host (`--expose`), not only its loopback.
    #[serde(default)]
    pub public: bool,
    /// The guest's address it leads to, when the copy has a static one there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10.0.2.60")]
    pub guest_addr: Option<std::net::Ipv4Addr>,
}

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
