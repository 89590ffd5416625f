//! The overview (`GET /api/v1/status`) and Prometheus metrics (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::page::Page;
use super::protection::{view, ProtectionView};
use super::{db_error, ApiError, ServerState};
use crate::db::{Database, DbError, Operation, ProtectionState};

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Overview {
    pub hosts: usize,
    pub protected_vms: usize,
    /// Protected VMs by state (`enabling`, `initial_sync`, `protected`, `degraded`).
    pub by_state: BTreeMap<String, usize>,
    /// The VM with the oldest newest point, and that age.
    pub worst_rpo: Option<WorstRpo>,
    pub running_operations: Vec<Operation>,
    /// One page of the protections (`?offset=&limit=`): `limit` of them from `offset`, in
    /// a stable order (by VM, then host id). Counts and the worst RPO cover them all.
    pub protections: Vec<ProtectionView>,
    /// Where this page starts.
    #[serde(default)]
    pub offset: usize,
    /// The next page's `offset`; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct WorstRpo {
    pub vm: String,
    pub host: String,
    pub rpo_seconds: f64,
}

#[utoipa::path(get, path = "/api/v1/status", tag = "status", params(Page),
    responses((status = 200, description = "Counts by state, worst RPO, running operations, and one page of the protections (follow `next_offset`)", body = Overview),
               (status = 401, description = "Missing or wrong API token", body = ApiError)))]
pub async fn overview(
    State(s): State<Arc<ServerState>>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    match overview_of(&s.db).await {
        Ok(mut o) => {
            o.offset = page.offset;
            o.next_offset = page.cut(&mut o.protections);
            Json(o).into_response()
        }
        Err(e) => db_error(e),
    }
}

/// The overview, from the database alone (the dashboard redraws it every second).
pub async fn overview_of(db: &Database) -> Result<Overview, DbError> {
    let all = db.protections().await?;
    let hosts = db.hosts_with_access().await?;
    let ops = db.operations(100).await?;
    let views: Vec<ProtectionView> = all.iter().map(|p| view(p, &hosts)).collect();
    let mut by_state: BTreeMap<String, usize> = ProtectionState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for v in &views {
        *by_state.entry(v.state.as_str().to_string()).or_default() += 1;
    }
    let worst_rpo = views
        .iter()
        .filter_map(|v| v.rpo_seconds.map(|r| (r, v)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(r, v)| WorstRpo {
            vm: v.vm.clone(),
            host: v.host.clone(),
            rpo_seconds: r,
        });
    Ok(Overview {
        hosts: hosts.len(),
        protected_vms: views.len(),
        by_state,
        worst_rpo,
        running_operations: ops
            .into_iter()
            .filter(|o| o.status == lifeboat_types::OperationStatus::Running)
            .collect(),
        protections: views,
        offset: 0,
        next_offset: None,
    })
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text format: per-VM RPO and its threshold, newest point, bytes replicated,
/// syncs, sync duration, failed attempts in a row and state; the build; the scheduler's rounds.
/// Names follow Prometheus' conventions (`promtool check metrics` finds nothing).
pub async fn metrics(State(s): State<Arc<ServerState>>) -> Response {
    let (all, hosts) = match (s.db.protections().await, s.db.hosts_with_access().await) {
        (Ok(a), Ok(h)) => (a, h),
        (Err(e), _) | (_, Err(e)) => return db_error(e),
    };
    let views: Vec<ProtectionView> = all.iter().map(|p| view(p, &hosts)).collect();
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
    let vm_labels =
        |v: &ProtectionView| format!("host=\"{}\",vm=\"{}\"", label(&v.host), label(&v.vm));
    family(
        "lifeboat_vm_rpo_seconds",
        "gauge",
        "Age of the VM's newest recovery point.",
        &mut views
            .iter()
            .filter_map(|v| v.rpo_seconds.map(|r| (vm_labels(v), r))),
    );
    family(
        "lifeboat_vm_rpo_threshold_seconds",
        "gauge",
        "The RPO the VM's policy promises: an RPO above it is an alert (deploy/prometheus).",
        &mut views
            .iter()
            .map(|v| (vm_labels(v), v.rpo_threshold_seconds as f64)),
    );
    family(
        "lifeboat_vm_newest_point_timestamp_seconds",
        "gauge",
        "Cut time of the VM's newest recovery point, in seconds since the Unix epoch.",
        &mut views.iter().filter_map(|v| {
            let t = v.last_point_time.as_deref()?;
            let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
            Some((vm_labels(v), t.timestamp_millis() as f64 / 1000.0))
        }),
    );
    family(
        "lifeboat_vm_replicated_bytes_total",
        "counter",
        "New bytes the VM's syncs stored in the vault.",
        &mut views
            .iter()
            .map(|v| (vm_labels(v), v.bytes_replicated as f64)),
    );
    family(
        "lifeboat_vm_consecutive_sync_failures",
        "gauge",
        "Sync attempts of the VM that failed in a row, 0 after one succeeds (the error is in `lifeboat status`).",
        &mut all
            .iter()
            .zip(&views)
            .map(|(p, v)| (vm_labels(v), p.failures as f64)),
    );
    family(
        "lifeboat_vm_syncs_total",
        "counter",
        "Syncs of the VM that produced a recovery point.",
        &mut views
            .iter()
            .map(|v| (vm_labels(v), v.syncs_committed as f64)),
    );
    family(
        "lifeboat_vm_last_sync_duration_seconds",
        "gauge",
        "How long the VM's last committed sync took.",
        &mut views.iter().map(|v| (vm_labels(v), v.last_sync_seconds)),
    );
    family(
        "lifeboat_vm_protection_state",
        "gauge",
        "1 for the VM's protection state, 0 for the others.",
        &mut views.iter().flat_map(|v| {
            ProtectionState::ALL.iter().map(move |s| {
                (
                    format!("{},state=\"{}\"", vm_labels(v), s.as_str()),
                    if *s == v.state { 1.0 } else { 0.0 },
                )
            })
        }),
    );
    // Hosts the server has greeted since it started.
    let greeted: Vec<(String, crate::host_health::HostHealth)> = hosts
        .iter()
        .filter_map(|h| {
            let health = s.health.get(h.host.id.as_str())?;
            Some((format!("host=\"{}\"", label(&h.host.hostname)), health))
        })
        .collect();
    family(
        "lifeboat_host_up",
        "gauge",
        "1 when the host's agent answered the server's last greeting (every 10 s), else 0.",
        &mut greeted
            .iter()
            .map(|(l, h)| (l.clone(), if h.up { 1.0 } else { 0.0 })),
    );
    family(
        "lifeboat_host_version_skew",
        "gauge",
        "1 when the host's agent runs another release line than the server (`hosts list` says which to upgrade).",
        &mut greeted.iter().filter(|(_, h)| h.up).map(|(l, h)| {
            (l.clone(), if h.version_skew.is_some() { 1.0 } else { 0.0 })
        }),
    );
    let vaults = crate::retention::vault_sizes();
    let vault_label = |v: &crate::retention::VaultSize| format!("vault=\"{}\"", label(&v.url));
    family(
        "lifeboat_vault_stored_bytes",
        "gauge",
        "Bytes of every object in the vault, measured at most every 5 minutes after a prune (deleted points' data until `vault gc`).",
        &mut vaults.iter().map(|v| (vault_label(v), v.bytes as f64)),
    );
    family(
        "lifeboat_vault_objects",
        "gauge",
        "Objects in the vault (packs, manifests, keys, leases), measured with lifeboat_vault_stored_bytes.",
        &mut vaults.iter().map(|v| (vault_label(v), v.objects as f64)),
    );
    family(
        "lifeboat_build_info",
        "gauge",
        "1, labelled with the server's version.",
        &mut std::iter::once((
            format!("version=\"{}\"", label(env!("CARGO_PKG_VERSION"))),
            1.0,
        )),
    );
    family(
        "lifeboat_scheduler_rounds_total",
        "counter",
        "Rounds of the replication scheduler, each reading every protection: about one a second when idle.",
        &mut std::iter::once((String::new(), crate::replication::rounds() as f64)),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
