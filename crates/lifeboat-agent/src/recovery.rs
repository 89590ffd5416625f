//! Recoveries on this host: the API's types and the journal of the VMs this agent brought
//! up from recovery points.
//!
//! A recovery is named by the id the server gives it, so asking twice brings the VM up
//! once. The id is a `RecoveryId` (`ids`): a plain file name, so the journal never reads
//! or deletes a file outside its folder whatever a request says. Its record,
//! `HOME/agent/recoveries/ID.json`, is written before anything is
//! created and removed after everything is gone, so a crash in between leaves something
//! `remove` still finds. The vault passphrase is never written: after a restart the server
//! asks again (the same request), which resumes serving the point to the VM.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use lifeboat_hypervisor::qemu::hydrate::DiskHydration;
use lifeboat_hypervisor::spec::HostForward;
use lifeboat_hypervisor::{DiskName, VmName};
use serde::{Deserialize, Serialize};

use crate::ids::RecoveryId;

use crate::sync::VaultAccess;

/// Why a VM is brought up from a point; it decides its network.
pub use lifeboat_types::RecoveryKind;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryRequest {
    /// Chosen by the server; asking again with the same id resumes the same recovery.
    pub recovery_id: String,
    pub vault: VaultAccess,
    /// The point to start from (its id in the vault).
    pub point: String,
    /// The name the VM gets on this host.
    pub vm: String,
    pub kind: RecoveryKind,
    /// Only resume serving a recovery this host has; never bring one up. The server's
    /// watcher asks this way, so a request racing with a removal cannot recreate the VM.
    #[serde(default)]
    pub resume_only: bool,
    /// Source network → network on this host, per NIC (planned and unplanned; a test copy
    /// is always `isolated`). Networks not named keep their name.
    #[serde(default)]
    pub network_map: std::collections::BTreeMap<String, String>,
    /// A test copy's guest ports to forward from a port of this host, on every address
    /// (`failover --test --expose`): how a tester reaches the isolated copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<u16>,
    /// Each re-addressed NIC's addressing (by its MAC in the VM's definition): written
    /// into a cloud-init seed the copy reads at its first boot (`guest_seed`). Empty:
    /// no seed, every NIC keeps its address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_network: Vec<lifeboat_types::NicAddressing>,
    /// Bring it up as this job (`jobs`): the call answers 202 at once and the caller
    /// polls `GET /api/v1/jobs/{id}` for the recovery's status; asked again with the same
    /// id, the same job answers. Without it the call answers when the VM is defined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Checks a network map before anything is changed: every target must name a network a
/// host can have: `user`, `isolated`, `bridge:NAME`, `network:NAME` (libvirt), or a bare
/// bridge name (`br0=br-dr`, as operators write it).
pub fn check_network_map(map: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    match map.iter().find(|(_, to)| network_target(to).is_none()) {
        Some((from, to)) => Err(format!(
            "network map {from}={to}: there is no network {to:?}; use user, isolated, \
             a bridge (NAME or bridge:NAME) or network:NAME (a libvirt network)"
        )),
        None => Ok(()),
    }
}

/// The network a map's target names: itself when it says its kind, `bridge:NAME` for a
/// bare bridge name; `None` when it names nothing a host can have.
fn network_target(to: &str) -> Option<String> {
    use lifeboat_hypervisor::spec::NetworkKind;
    if NetworkKind::parse(to).is_some() {
        return Some(to.to_string());
    }
    let bridge = format!("bridge:{to}");
    let valid = NetworkKind::parse(&bridge).is_some();
    valid.then_some(bridge)
}

/// The network a NIC on `network` gets on the recovery host under `map`: keys match the
/// whole `network` (`bridge:br0`) or its name (`br0`).
pub fn mapped_network(
    network: &str,
    map: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    use lifeboat_hypervisor::spec::NetworkKind;
    let name = match NetworkKind::parse(network)? {
        NetworkKind::LibvirtNetwork(n) | NetworkKind::Bridge(n) => n,
        NetworkKind::User | NetworkKind::Isolated => network,
    };
    map.get(network)
        .or_else(|| map.get(name))
        .and_then(|to| network_target(to))
}

/// What the agent keeps about a recovery (no secrets). Its id and names are typed, so a
/// record read back names only files of this recovery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryRecord {
    pub recovery_id: RecoveryId,
    pub vm: VmName,
    pub point: String,
    pub kind: RecoveryKind,
    pub vault_url: String,
    pub disks: Vec<DiskName>,
    /// Host ports forwarded to the guest: where to reach it on this host.
    pub forwards: Vec<HostForward>,
    /// Every disk is local: the VM needs nothing from the vault any more.
    pub hydrated: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryStatus {
    #[serde(flatten)]
    pub record: RecoveryRecord,
    /// `running`, `stopped`, `paused (…)`, or `missing` when the VM is gone.
    pub vm_state: String,
    pub hydration: Vec<DiskHydration>,
    /// What went wrong last, if anything (e.g. a hydration error being retried).
    pub error: Option<String>,
}

impl RecoveryStatus {
    /// Bytes hydrated and to hydrate, over all disks.
    pub fn hydration_totals(&self) -> (u64, u64) {
        self.hydration
            .iter()
            .fold((0, 0), |(d, t), h| (d + h.done, t + h.total))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemovalReport {
    pub recovery_id: String,
    /// False when there was nothing of it on this host.
    pub removed: bool,
    pub vm: Option<String>,
}

/// The journal directory, `HOME/agent/recoveries`.
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(agent_home: &Path) -> std::io::Result<Journal> {
        let dir = agent_home.join("recoveries");
        lifeboat_hypervisor::private::private_dir(&dir)?;
        Ok(Journal { dir })
    }

    fn path(&self, id: &RecoveryId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn load(&self, id: &RecoveryId) -> Option<RecoveryRecord> {
        let text = std::fs::read(self.path(id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn save(&self, r: &RecoveryRecord) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(r).expect("a record always serialises");
        lifeboat_hypervisor::qemu::layout::write_atomically(&self.path(&r.recovery_id), &json)
            .map_err(std::io::Error::other)
    }

    pub fn remove(&self, id: &RecoveryId) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn all(&self) -> Vec<RecoveryRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<RecoveryRecord> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// The recovery that owns VM `vm` on this host, if any.
    pub fn of_vm(&self, vm: &VmName) -> Option<RecoveryRecord> {
        self.all().into_iter().find(|r| &r.vm == vm)
    }
}

#[cfg(test)]
mod network_map_tests {
    use super::*;

    #[test]
    fn maps_name_their_target_kind_and_match_by_network_or_name() {
        let map: std::collections::BTreeMap<String, String> = [
            ("br0", "bridge:br-dr"),
            ("network:default", "bridge:br-dr"),
            ("user", "isolated"),
            ("lan", "network:wan"),
            ("br1", "br-test"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        check_network_map(&map).unwrap();
        let m = |n: &str| mapped_network(n, &map);
        assert_eq!(m("bridge:br0").as_deref(), Some("bridge:br-dr"));
        assert_eq!(m("network:default").as_deref(), Some("bridge:br-dr"));
        assert_eq!(m("network:lan").as_deref(), Some("network:wan"));
        assert_eq!(m("user").as_deref(), Some("isolated"));
        assert_eq!(
            m("bridge:br1").as_deref(),
            Some("bridge:br-test"),
            "a bare name is a bridge"
        );
        assert_eq!(m("bridge:br2"), None, "not mapped: keeps its network");
        for bad in ["bridge:", "no spaces", "x:y", "a-name-longer-than-15"] {
            let one = [("br0".to_string(), bad.to_string())].into_iter().collect();
            assert!(check_network_map(&one).is_err(), "{bad}");
        }
    }
}
