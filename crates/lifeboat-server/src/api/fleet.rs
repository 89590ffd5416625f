//! Every VM of every host (`GET /api/v1/vms`, the Hosts & VMs page, a scan's enrolled
//! agents): what each host's agent lists, with the protection of each VM, in a stable
//! order (by host name, host address, as host names may repeat, then VM).
//!
//! A list is made in two passes, as it is shown a page at a time: [`fleet`] asks every
//! agent for its inventory (at once, each through the host's kept client) and reads
//! which VMs are protected (ids only); [`Fleet::rows`] then reads whole only the
//! protections of the rows a page shows. At 10,000 VMs on PostgreSQL, reading every
//! protection whole took about 100 ms of each such page.

use std::collections::HashMap;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::page::Page;
use super::protection::{self, ProtectionView};
use super::ServerState;
use crate::db::{Database, DbError, Host, HostAccess, HostId, ProtectionId, Recovery};

/// Agents asked at once for their inventory.
const AGENTS_AT_ONCE: usize = 16;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmRow {
    pub host: String,
    pub address: String,
    pub vm: String,
    /// As the agent reports it: `{"state": "running" | "stopped" | …, "detail": …}`.
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
    /// `unprotected`, or the protection state.
    pub protection: String,
    pub protection_id: Option<String>,
    /// Why the VM is Degraded, when it is.
    pub reason: Option<String>,
    pub rpo_seconds: Option<f64>,
    pub last_point: Option<String>,
    pub last_point_time: Option<String>,
    pub recovery_host: Option<String>,
    /// Why the VM is fenced on this host (it was failed over): it does not start here.
    pub fenced: Option<String>,
    /// For a VM brought up from a recovery point: `test`, `planned` or `unplanned`.
    pub recovery_kind: Option<lifeboat_types::RecoveryKind>,
    /// For a recovered VM: the VM it is a copy of, as `HOST/VM`.
    pub recovered_from: Option<String>,
    /// For a recovered VM: the point it came from, and that point's cut time.
    pub recovered_point: Option<String>,
    pub recovered_point_time: Option<String>,
    /// For a recovered VM: percent of its disks that are local (100: it needs nothing
    /// from the vault any more).
    pub hydrated_percent: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostProblem {
    pub host: String,
    pub address: String,
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmList {
    /// One page of the VMs (`?offset=&limit=`), by host name, host address, then VM.
    pub vms: Vec<VmRow>,
    /// Every host that did not answer, on every page.
    pub unreachable: Vec<HostProblem>,
    /// Where this page starts.
    #[serde(default)]
    pub offset: usize,
    /// The next page's `offset`; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

/// What the list needs of an agent's inventory; the rest of each VM (disks, NICs…) is
/// skipped, not held.
#[derive(Deserialize)]
struct Inventory {
    vms: Vec<InventoryVm>,
}

#[derive(Deserialize)]
struct InventoryVm {
    name: String,
    #[serde(default)]
    state: serde_json::Value,
    #[serde(default)]
    fenced: Option<String>,
}

/// Every VM of every host, as their agents listed them: the list before any row of it is
/// drawn ([`Fleet::rows`]).
pub struct Fleet {
    pub hosts: Vec<HostAccess>,
    /// By host name, host address, then VM.
    pub vms: Vec<FleetVm>,
    /// Every host that did not answer, by name and address.
    pub unreachable: Vec<HostProblem>,
    pub recoveries: Vec<Recovery>,
}

/// A VM as its host's agent lists it, and its protection's id when it has one.
pub struct FleetVm {
    /// Its host, in [`Fleet::hosts`].
    pub host: usize,
    pub vm: String,
    /// As the agent reports it: `{"state": "running" | "stopped" | …, "detail": …}`.
    pub state: serde_json::Value,
    pub fenced: Option<String>,
    pub protection_id: Option<ProtectionId>,
}

/// Asks every agent for its VMs, at once, and reads which of them are protected.
pub async fn fleet(s: &ServerState) -> Result<Fleet, DbError> {
    let hosts = s.db.hosts_with_access().await?;
    let mut protected: HashMap<HostId, HashMap<String, ProtectionId>> = HashMap::new();
    for (id, host, vm) in s.db.protection_keys().await? {
        protected.entry(host).or_default().insert(vm, id);
    }
    let recoveries = s.db.recoveries().await?;
    // Through each host's kept client: a page that asks 200 hosts makes no 200 TLS
    // handshakes when it was shown a moment ago.
    let clients: Vec<_> = hosts.iter().map(|h| s.agents.get(h)).collect();
    let answers: Vec<(usize, Result<Inventory, String>)> =
        futures::stream::iter(clients.into_iter().enumerate())
            .map(|(i, client)| async move {
                let inv = match client {
                    Ok(c) => c.inventory_as().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (i, inv)
            })
            .buffer_unordered(AGENTS_AT_ONCE)
            .collect()
            .await;
    let mut vms = Vec::new();
    let mut unreachable = Vec::new();
    for (i, inv) in answers {
        let host = &hosts[i].host;
        match inv {
            Ok(inv) => {
                let ids = protected.get(&host.id);
                vms.extend(inv.vms.into_iter().map(|v| FleetVm {
                    host: i,
                    protection_id: ids.and_then(|ids| ids.get(&v.name)).cloned(),
                    vm: v.name,
                    state: v.state,
                    fenced: v.fenced,
                }));
            }
            Err(error) => unreachable.push(HostProblem {
                host: host.hostname.clone(),
                address: host.address.clone(),
                error,
            }),
        }
    }
    let key = |v: &FleetVm| {
        let h = &hosts[v.host].host;
        (h.hostname.as_str(), h.address.as_str())
    };
    vms.sort_by(|a, b| (key(a), &a.vm).cmp(&(key(b), &b.vm)));
    unreachable.sort_by(|a, b| (&a.host, &a.address).cmp(&(&b.host, &b.address)));
    Ok(Fleet {
        hosts,
        vms,
        unreachable,
        recoveries,
    })
}

impl Fleet {
    /// `v`'s host.
    pub fn host(&self, v: &FleetVm) -> &Host {
        &self.hosts[v.host].host
    }

    /// The rows of `vms` (of this fleet), and their protections' views: each protection
    /// of them read whole, once.
    pub async fn rows(
        &self,
        db: &Database,
        vms: &[FleetVm],
    ) -> Result<(Vec<VmRow>, Vec<ProtectionView>), DbError> {
        let ids: Vec<&str> = vms
            .iter()
            .filter_map(|v| v.protection_id.as_deref())
            .collect();
        let views: HashMap<ProtectionId, ProtectionView> = db
            .protections_with_ids(&ids)
            .await?
            .iter()
            .map(|p| (p.id.clone(), protection::view(p, &self.hosts)))
            .collect();
        let rows = vms
            .iter()
            .map(|v| {
                let p = v.protection_id.as_ref().and_then(|id| views.get(id));
                self.row(v, p)
            })
            .collect();
        Ok((rows, views.into_values().collect()))
    }

    /// The page of the list `page` asks for (`GET /api/v1/vms`).
    pub async fn page(mut self, db: &Database, page: &Page) -> Result<VmList, DbError> {
        let mut vms = std::mem::take(&mut self.vms);
        let next_offset = page.cut(&mut vms);
        let (rows, _) = self.rows(db, &vms).await?;
        Ok(VmList {
            vms: rows,
            unreachable: self.unreachable,
            offset: page.offset,
            next_offset,
        })
    }

    fn row(&self, v: &FleetVm, p: Option<&ProtectionView>) -> VmRow {
        let host = self.host(v);
        let r = self
            .recoveries
            .iter()
            .find(|r| r.host_id == host.id && r.vm == v.vm);
        let host_name = |id: &HostId| {
            self.hosts
                .iter()
                .find(|h| h.host.id == *id)
                .map_or(id.to_string(), |h| h.host.hostname.clone())
        };
        VmRow {
            host: host.hostname.clone(),
            address: host.address.clone(),
            vm: v.vm.clone(),
            state: v.state.clone(),
            protection: p.map_or("unprotected".into(), |p| p.state.as_str().into()),
            protection_id: p.map(|p| p.id.to_string()),
            reason: p.filter(|p| !p.reason.is_empty()).map(|p| p.reason.clone()),
            rpo_seconds: p.and_then(|p| p.rpo_seconds),
            last_point: p.and_then(|p| p.last_point.clone()),
            last_point_time: p.and_then(|p| p.last_point_time.clone()),
            recovery_host: p.map(|p| p.recovery_host.clone()),
            fenced: v.fenced.clone(),
            recovery_kind: r.map(|r| r.kind),
            recovered_from: r.map(|r| format!("{}/{}", host_name(&r.origin_host_id), r.origin_vm)),
            recovered_point: r.map(|r| r.point.clone()),
            recovered_point_time: r.map(|r| r.point_time.clone()),
            hydrated_percent: r.map(|r| match (r.hydrated, r.hydration_total) {
                (true, _) => 100.0,
                (false, 0) => 0.0,
                (false, t) => 100.0 * r.hydrated_bytes as f64 / t as f64,
            }),
        }
    }
}

/// Every VM of every host, each row in full (a scan's enrolled agents).
pub async fn vm_list(s: &ServerState) -> Result<VmList, DbError> {
    let fleet = fleet(s).await?;
    let (vms, _) = fleet.rows(&s.db, &fleet.vms).await?;
    Ok(VmList {
        vms,
        unreachable: fleet.unreachable,
        offset: 0,
        next_offset: None,
    })
}
