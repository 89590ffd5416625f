//! A protected VM's failover network settings against what they apply to
//! (docs/networking.md): the VM's NICs, as its host's inventory shows them, and the
//! networks of the recovery host (`GET /api/v1/networks` on its agent). Checked when the
//! settings are stored and again in a move's first step, before anything changes.

use std::collections::BTreeMap;
use std::time::Duration;

use lifeboat_types::network::NetworkError;
use lifeboat_types::{MoveKind, NetworkSettings};
use serde::Deserialize;

use crate::agents::agent_client;
use crate::db::{HostAccess, Protection};

/// How long a host has to tell its VMs or its networks.
pub const ASK: Duration = Duration::from_secs(15);

/// Why settings could not be checked, or were refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Refused(#[from] NetworkError),
    /// A host did not answer: what could not be checked, and why.
    #[error("{0}")]
    Unreachable(String),
    /// The VM's host answered without the VM.
    #[error("{0}")]
    NoVm(String),
}

/// A NIC of a VM as its host's inventory lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct NicSpec {
    pub mac: String,
    /// `user`, `isolated`, `bridge:NAME`, `network:NAME`.
    pub network: String,
}

#[derive(Deserialize)]
struct InventoryVm {
    name: String,
    #[serde(default)]
    nics: Vec<NicSpec>,
}

#[derive(Deserialize)]
struct Inventory {
    vms: Vec<InventoryVm>,
}

/// The stored settings of `p` (none stored: every NIC keeps its address). Settings that
/// do not read (a row written by another version, edited by hand) are an error, never
/// taken for "keep every address": a move would then leave the VM unreachable.
pub fn settings(p: &Protection) -> Result<NetworkSettings, String> {
    let text = p.network_settings.trim();
    if text.is_empty() {
        return Ok(NetworkSettings::default());
    }
    serde_json::from_str(text).map_err(|e| {
        format!(
            "the stored network settings of {} do not read ({e}); set them again with `lifeboat network {}`",
            p.vm, p.vm
        )
    })
}

/// VM `vm`'s NICs, as its host's agent lists them within `within`.
pub async fn vm_nics(
    host: &HostAccess,
    vm: &str,
    within: Duration,
) -> Result<Vec<NicSpec>, CheckError> {
    let unreachable = |e: String| {
        CheckError::Unreachable(format!(
            "{} does not answer ({e}): {vm}'s NICs cannot be read",
            host.host.hostname
        ))
    };
    let answer = agent_client(host, within)
        .map_err(|e| unreachable(e.to_string()))?
        .inventory()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let inventory: Inventory = serde_json::from_value(answer)
        .map_err(|e| unreachable(format!("its inventory does not read: {e}")))?;
    inventory
        .vms
        .into_iter()
        .find(|v| v.name == vm)
        .map(|v| v.nics)
        .ok_or_else(|| {
            CheckError::NoVm(format!(
                "{} has no VM {vm} (undefined there?): its NICs cannot be read",
                host.host.hostname
            ))
        })
}

/// Where each NIC (MAC, network on the host it moves to) goes in `kind` of move: a test
/// copy's NICs are on `isolated`; a moved VM's where `map` sends them, or a network of
/// the same name; a VM failing back to the networks it has at home.
pub fn targets(
    nics: &[NicSpec],
    kind: MoveKind,
    map: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    nics.iter()
        .map(|n| {
            let to = match kind {
                MoveKind::Test => "isolated".to_string(),
                MoveKind::Failback => n.network.clone(),
                MoveKind::Failover => lifeboat_agent::recovery::mapped_network(&n.network, map)
                    .unwrap_or_else(|| n.network.clone()),
            };
            (n.mac.clone(), to)
        })
        .collect()
}

/// Checks `settings` for each of `kinds` of move of a VM with `nics` onto `rhost` under
/// `map` (the host asked once): the NICs' networks exist there, and new addresses lie in
/// their subnets. Returns what could not be checked, for the log.
pub async fn check_move(
    settings: &NetworkSettings,
    kinds: &[MoveKind],
    nics: &[NicSpec],
    map: &BTreeMap<String, String>,
    rhost: &HostAccess,
) -> Result<Vec<String>, CheckError> {
    let macs: Vec<String> = nics.iter().map(|n| n.mac.clone()).collect();
    settings.check(&macs)?;
    let asked = agent_client(rhost, ASK)
        .map_err(|e| CheckError::Unreachable(e.to_string()))?
        .networks()
        .await;
    let networks = match asked {
        Ok(n) => n,
        // An agent older than this check: the move goes on, and its provision still
        // refuses a NIC on a network it lacks.
        Err(lifeboat_agent::client::ClientError::Refused { status: 404, .. }) => {
            return Ok(vec![format!(
                "the recovery host {} does not tell its networks (an older agent): the network settings were checked against the VM only",
                rhost.host.hostname
            )])
        }
        Err(e) => {
            return Err(CheckError::Unreachable(format!(
                "the recovery host {} does not tell its networks ({e})",
                rhost.host.hostname
            )))
        }
    };
    let mut unchecked = Vec::new();
    for &kind in kinds {
        unchecked.extend(settings.check_against(kind, &targets(nics, kind, map), &networks)?);
    }
    Ok(unchecked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(mac: &str, network: &str) -> NicSpec {
        NicSpec {
            mac: mac.into(),
            network: network.into(),
        }
    }

    #[test]
    fn settings_that_do_not_read_are_an_error_not_keep_everything() {
        let mut p = Protection {
            vm: "web".into(),
            ..Default::default()
        };
        for empty in ["", "{}"] {
            p.network_settings = empty.into();
            assert_eq!(settings(&p).unwrap(), NetworkSettings::default());
        }
        p.network_settings = r#"{"nics": [], "future_field": 1}"#.into();
        let err = settings(&p).unwrap_err();
        assert!(err.contains("lifeboat network web"), "{err}");
    }

    #[test]
    fn nics_go_where_the_map_sends_them_and_test_copies_go_isolated() {
        let nics = [
            nic("m1", "bridge:br0"),
            nic("m2", "user"),
            nic("m3", "bridge:br1"),
        ];
        let map = BTreeMap::from([("br0".to_string(), "br-dr".to_string())]);
        assert_eq!(
            targets(&nics, MoveKind::Failover, &map),
            [
                ("m1".to_string(), "bridge:br-dr".to_string()),
                ("m2".into(), "user".into()),
                ("m3".into(), "bridge:br1".into())
            ]
        );
        assert!(targets(&nics, MoveKind::Test, &map)
            .iter()
            .all(|(_, n)| n == "isolated"));
    }
}
