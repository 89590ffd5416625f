//! A server database as a fleet of `vms` protected VMs leaves it: hosts, protections,
//! ten points each, operations, and one VM with a day of points for the RPO chart.
//! Written before the server starts, through the server's own database layer.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{Duration, Utc};
use lifeboat_server::db::{Database, Host, PointRow, Protection, ProtectionState};

/// VMs per host.
const VMS_PER_HOST: usize = 10;
/// Points per VM (the chart's VM has a day of them).
const POINTS: i64 = 10;
/// The chart's VM: a point every 30 s for 24 hours.
pub const CHART_POINTS: i64 = 2880;

/// What the pages are then asked about.
pub struct Seeded {
    /// The VM page with a day of points: its path.
    pub chart_page: String,
}

/// Where a seeded fleet's VMs run: VM `i` is [`vm_name`]`(i)`, on host `i / per_host`,
/// named [`host_name`]. The seed and the `scale` bench's simulated agents both follow
/// it, so each agent lists exactly the VMs the database has on its host.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub vms: usize,
    pub per_host: usize,
}

impl Layout {
    /// How many hosts (at least two: a VM has a recovery host).
    pub fn hosts(&self) -> usize {
        self.vms.div_ceil(self.per_host).max(2)
    }

    /// The host VM `i` runs on.
    pub fn host_of(&self, i: usize) -> usize {
        i / self.per_host
    }

    /// The VMs on host `h` (none on the spare second host of a one-host fleet).
    pub fn vms_on(&self, h: usize) -> Range<usize> {
        (h * self.per_host).min(self.vms)..((h + 1) * self.per_host).min(self.vms)
    }
}

/// VM `i`'s name.
pub fn vm_name(i: usize) -> String {
    format!("vm{i:04}")
}

/// Host `h`'s name (its agent's hostname).
pub fn host_name(h: usize) -> String {
    format!("host{h}")
}

/// What a seeded fleet is: its hosts' agents, its VMs' state and policy.
pub struct Spec {
    /// VMs per host.
    pub vms_per_host: usize,
    /// The agents: `host:port` of host `h` (`None`: nothing listens), and the pinned
    /// certificate fingerprint.
    pub agent: Box<dyn Fn(usize) -> Option<String>>,
    pub fingerprint: String,
    pub state: ProtectionState,
    pub policy: String,
}

impl Spec {
    /// The dashboard bench's fleet: no agent listens, and replication is paused (home
    /// again, waiting for reprotect), so what is measured is the dashboard alone.
    pub fn paused() -> Spec {
        Spec {
            vms_per_host: VMS_PER_HOST,
            agent: Box::new(|_| None),
            fingerprint: "0".repeat(64),
            state: ProtectionState::FailedBack,
            policy: "default".into(),
        }
    }

    /// Where a fleet of `vms` VMs runs.
    pub fn layout(&self, vms: usize) -> Layout {
        Layout {
            vms,
            per_host: self.vms_per_host,
        }
    }
}

/// Seeds the database under `server_home`, with `password` as the dashboard's.
pub async fn seed(server_home: &Path, vms: usize, password: &str) -> Result<Seeded> {
    std::fs::create_dir_all(server_home.join("server"))?;
    let url = format!(
        "sqlite://{}",
        server_home.join("server/lifeboat.db").display()
    );
    seed_into(&url, vms, password, &Spec::paused()).await
}

/// Seeds the database at `url` with a fleet of `vms` VMs as `spec` says.
pub async fn seed_into(url: &str, vms: usize, password: &str, spec: &Spec) -> Result<Seeded> {
    let db = Database::connect(url)
        .await
        .with_context(|| format!("opening {}", lifeboat_server::db::redact(url)))?;
    lifeboat_server::auth::ensure_admin_password(&db, Some(password)).await?;
    let layout = spec.layout(vms);
    let hosts = layout.hosts();
    let mut host_ids = Vec::new();
    for h in 0..hosts {
        let host = Host {
            id: format!("host-{h}").into(),
            // Where nothing listens, only the hosts page asks, and it is not timed.
            address: (spec.agent)(h).unwrap_or_else(|| format!("127.0.0.1:{}", 1 + h)),
            hostname: host_name(h),
            fingerprint: spec.fingerprint.clone(),
            enrolled_at: Utc::now().to_rfc3339(),
        };
        db.add_host(&host, "credential").await?;
        host_ids.push(host.id);
    }
    let now = Utc::now();
    let spread = lifeboat_server::policy::Policy::find(&spec.policy)
        .map(|p| Duration::from_std(p.interval()).unwrap_or_default())
        .unwrap_or_default();
    for i in 0..vms {
        let host = &host_ids[layout.host_of(i)];
        let vm = vm_name(i);
        let points = if i == 0 { CHART_POINTS } else { POINTS };
        let last = now - Duration::seconds(5 + i as i64 % 60);
        let p = Protection {
            id: format!("prot-{i}").into(),
            host_id: host.clone(),
            vm: vm.clone(),
            point_name: format!("{host}-{vm}"),
            vault_url: format!("file:///srv/vault{}", i % 3),
            // Never kept: the agents hold the key, sealed (`vault_keys`).
            vault_passphrase: Default::default(),
            recovery_host_id: host_ids[(layout.host_of(i) + 1) % hosts].clone(),
            state: spec.state,
            policy: spec.policy.clone(),
            last_point: Some(format!("p-{i}-{}", points - 1)),
            last_point_time: Some(last.to_rfc3339()),
            last_consistency: Some("crash".into()),
            bytes_replicated: 1 << 30,
            syncs_committed: points,
            created_at: now.to_rfc3339(),
            // Spread over the policy's interval, as in a fleet that has run for a while.
            next_sync_at: (now + spread * i as i32 / vms as i32).to_rfc3339(),
            ..Default::default()
        };
        db.add_protection(&p).await?;
        for h in [&p.host_id, &p.recovery_host_id] {
            // Sealed to an agent; a simulated agent never opens it.
            db.put_vault_key(&p.id, h, "c2VhbGVk").await?;
        }
        let every = if i == 0 { 30 } else { 300 };
        for n in 0..points {
            let cut = last - Duration::seconds(every * (points - 1 - n));
            db.add_point(
                &p.id,
                &PointRow {
                    point: format!("p-{i}-{n:05}"),
                    cut_time: cut.to_rfc3339(),
                    consistency: "crash".into(),
                    kind: if n == 0 { "full" } else { "incremental" }.into(),
                    bytes_read: 1 << 20,
                    new_bytes: 1 << 18,
                    note: None,
                },
            )
            .await?;
        }
    }
    for i in 0..100.min(vms * 2) {
        let vm = vm_name(i % vms);
        let op = db
            .start_operation(
                &host_ids[layout.host_of(i % vms)],
                &vm,
                lifeboat_types::OperationKind::Enable,
                "checking the vault",
            )
            .await?;
        db.advance_operation(
            &op,
            lifeboat_types::OperationStatus::Succeeded,
            "first point committed",
        )
        .await?;
    }
    Ok(Seeded {
        chart_page: format!("/hosts/{}/vms/{}", host_ids[0], vm_name(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::Layout;

    #[test]
    fn every_vm_is_on_the_one_host_that_lists_it() {
        for per_host in [10, 50] {
            for vms in [1, 9, 10, 11, 50, 99, 100, 1000, 10_000] {
                let layout = Layout { vms, per_host };
                let listed: Vec<usize> =
                    (0..layout.hosts()).flat_map(|h| layout.vms_on(h)).collect();
                assert_eq!(
                    listed,
                    (0..vms).collect::<Vec<_>>(),
                    "{vms} VMs, {per_host} a host"
                );
                for h in 0..layout.hosts() {
                    for i in layout.vms_on(h) {
                        assert_eq!(layout.host_of(i), h);
                    }
                }
                assert!(layout.hosts() >= 2);
            }
        }
    }
}
