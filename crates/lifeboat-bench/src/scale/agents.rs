//! Simulated agents, for this benchmark only: each host is a TLS listener with an agent's
//! identity that answers what the server asks of an agent while nobody operates it: the
//! greeting (host health, every 10 s), the inventory (the Hosts & VMs page, `GET
//! /api/v1/vms`), and the scheduler's calls (start a sync, its status), at once, with a
//! made-up point. Each lists the VMs the seed put on its host ([`Layout`]), running, in
//! the real agent's own types. No VM, no vault: what is measured is the control plane's
//! own cost per VM and per sync. A call the simulation does not answer is counted and
//! named in the report, so a server that starts asking something new is not measured
//! against 404s unnoticed.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use lifeboat_agent::api::{Hello, Inventory, SERVICE};
use lifeboat_agent::identity::Identity;
use lifeboat_agent::serve::{serve, Limits, Transport};
use lifeboat_agent::sync::{SyncKind, SyncRequest, SyncResult, SyncState, SyncStatus};
use lifeboat_hypervisor::hypervisor::DiskInfo;
use lifeboat_hypervisor::{DiskFormat, DiskName, NicSpec, VmInfo, VmName, VmState};

use crate::dashboard::seed::{host_name, vm_name, Layout};

/// The fleet's simulated agents: their addresses, one pinned certificate, and what they
/// were asked.
pub struct Agents {
    pub addresses: Vec<String>,
    pub fingerprint: String,
    pub counts: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
pub struct Counts {
    /// Syncs started (each answered committed at once).
    pub syncs: AtomicU64,
    /// Every request.
    pub requests: AtomicU64,
    /// Inventories listed.
    pub inventories: AtomicU64,
    /// Calls the simulation does not answer (`METHOD /path`, VM names as `{vm}`).
    pub unanswered: Mutex<BTreeSet<String>>,
}

impl Counts {
    /// The calls no simulated agent answered, so far.
    pub fn unanswered(&self) -> Vec<String> {
        let set = self.unanswered.lock().unwrap_or_else(|e| e.into_inner());
        set.iter().cloned().collect()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One simulated host: what it says, and its VMs.
struct Host {
    counts: Arc<Counts>,
    hello: Hello,
    /// Its inventory, serialized once (it never changes).
    inventory: axum::body::Bytes,
    vms: HashSet<String>,
}

/// Starts a simulated agent for every host of `layout` on loopback, sharing one identity
/// made in `home`.
pub async fn start(home: &std::path::Path, layout: Layout) -> Result<Agents> {
    let identity = Identity::load_or_create(home, "simulated").context("an agent identity")?;
    let counts = Arc::new(Counts::default());
    let mut addresses = Vec::new();
    let mut tasks = Vec::new();
    for h in 0..layout.hosts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addresses.push(listener.local_addr()?.to_string());
        let vms: Vec<VmInfo> = layout.vms_on(h).map(simulated_vm).collect::<Result<_>>()?;
        let host = Arc::new(Host {
            counts: counts.clone(),
            hello: Hello {
                service: SERVICE.into(),
                hostname: host_name(h),
                version: lifeboat_agent::VERSION.into(),
                fingerprint: identity.fingerprint(),
                enrolled: true,
            },
            vms: vms.iter().map(|v| v.name.as_str().to_string()).collect(),
            inventory: serde_json::to_vec(&Inventory {
                hostname: host_name(h),
                vms,
            })?
            .into(),
        });
        let router = Router::new()
            .route("/api/v1/hello", get(hello))
            .route("/api/v1/inventory", get(inventory))
            .route("/api/v1/vms/{vm}/syncs", post(start_sync))
            .route("/api/v1/syncs/{id}", get(sync_status))
            .fallback(unanswered)
            .with_state(host);
        let transport = Transport::tls(&identity)?;
        tasks.push(tokio::spawn(async move {
            let _ = serve(listener, transport, router, Limits::default()).await;
        }));
    }
    Ok(Agents {
        addresses,
        fingerprint: identity.fingerprint(),
        counts,
        tasks,
    })
}

/// VM `i` as an agent lists it: running, one 20 GiB qcow2 disk, one NIC on a bridge.
fn simulated_vm(i: usize) -> Result<VmInfo> {
    let name = vm_name(i);
    let n = i as u32;
    Ok(VmInfo {
        name: VmName::new(name.as_str()).map_err(anyhow::Error::msg)?,
        uuid: Some(uuid::Uuid::from_u128(0x5ca1e << 32 | i as u128)),
        state: VmState::Running,
        memory_mib: 2048,
        vcpus: 2,
        disks: vec![DiskInfo {
            name: DiskName::new("vda").map_err(anyhow::Error::msg)?,
            path: format!("/var/lib/lifeboat/vms/{name}/vda.qcow2").into(),
            format: DiskFormat::Qcow2,
            virtual_size: 20 << 30,
            allocated_size: 6 << 30,
        }],
        nics: vec![NicSpec {
            mac: format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                n >> 16 & 0xff,
                n >> 8 & 0xff,
                n & 0xff
            ),
            network: "bridge:br0".into(),
            host_forwards: Vec::new(),
        }],
        fenced: None,
    })
}

async fn hello(State(h): State<Arc<Host>>) -> Json<Hello> {
    h.counts.requests.fetch_add(1, Ordering::Relaxed);
    Json(h.hello.clone())
}

async fn inventory(State(h): State<Arc<Host>>) -> Response {
    h.counts.requests.fetch_add(1, Ordering::Relaxed);
    h.counts.inventories.fetch_add(1, Ordering::Relaxed);
    (
        [(header::CONTENT_TYPE, "application/json")],
        h.inventory.clone(),
    )
        .into_response()
}

/// A committed point for `sync_id`: the same answer however often it is asked.
fn committed(vm: &str, sync_id: &str) -> SyncStatus {
    let now = Utc::now();
    let point = format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%S%.6fZ"),
        &sync_id[..8.min(sync_id.len())]
    );
    SyncStatus {
        sync_id: sync_id.to_string(),
        vm: vm.to_string(),
        started: now,
        state: SyncState::Committed(SyncResult {
            point: point.clone(),
            parent: None,
            kind: SyncKind::Incremental,
            cut_time: now,
            consistency: "crash".into(),
            bytes_read: 1 << 20,
            new_bytes_stored: 64 << 10,
            seconds: 0.01,
            points: vec![point],
            note: None,
        }),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn start_sync(
    State(h): State<Arc<Host>>,
    Path(vm): Path<String>,
    Json(req): Json<SyncRequest>,
) -> Response {
    h.counts.requests.fetch_add(1, Ordering::Relaxed);
    // As the real agent: a VM that is not on this host is not synced.
    if !h.vms.contains(&vm) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no VM {vm} on {}", h.hello.hostname),
        );
    }
    h.counts.syncs.fetch_add(1, Ordering::Relaxed);
    Json(committed(&vm, &req.sync_id)).into_response()
}

async fn sync_status(State(h): State<Arc<Host>>, Path(id): Path<String>) -> Json<SyncStatus> {
    h.counts.requests.fetch_add(1, Ordering::Relaxed);
    Json(committed("vm", &id))
}

/// Anything else: counted and named, answered as the real agent answers an unknown route.
async fn unanswered(State(h): State<Arc<Host>>, method: Method, uri: Uri) -> Response {
    h.counts.requests.fetch_add(1, Ordering::Relaxed);
    let path: Vec<&str> = uri.path().split('/').collect();
    let path = path
        .iter()
        .enumerate()
        .map(|(i, part)| match i > 0 && path[i - 1] == "vms" {
            true => "{vm}",
            false => part,
        })
        .collect::<Vec<_>>()
        .join("/");
    let mut set = h
        .counts
        .unanswered
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    set.insert(format!("{method} {path}"));
    error(
        StatusCode::NOT_FOUND,
        "no such route in the simulated agent".into(),
    )
}
