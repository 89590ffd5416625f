//! A server database as a fleet of `vms` protected VMs leaves it: hosts, protections,
//! ten points each, operations, and one VM with a day of points for the RPO chart.
//! Written before the server starts, through the server's own database layer.

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

    /// How many hosts `vms` VMs need (at least two: a VM has a recovery host).
    pub fn hosts(&self, vms: usize) -> usize {
        vms.div_ceil(self.vms_per_host).max(2)
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
    let hosts = spec.hosts(vms);
    let per_host = spec.vms_per_host;
    let mut host_ids = Vec::new();
    for h in 0..hosts {
        let host = Host {
            id: format!("host-{h}").into(),
            // Where nothing listens, only the hosts page asks, and it is not timed.
            address: (spec.agent)(h).unwrap_or_else(|| format!("127.0.0.1:{}", 1 + h)),
            hostname: format!("host{h}"),
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
        let host = &host_ids[i / per_host];
        let vm = format!("vm{i:04}");
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
            recovery_host_id: host_ids[(i / per_host + 1) % hosts].clone(),
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
        let vm = format!("vm{:04}", i % vms);
        let op = db
            .start_operation(
                &host_ids[i % vms / per_host],
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
        chart_page: format!("/hosts/{}/vms/vm0000", host_ids[0]),
    })
}
