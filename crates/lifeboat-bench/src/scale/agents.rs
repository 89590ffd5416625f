//! Simulated agents, for this benchmark only: each host is a TLS listener with an agent's
//! identity that answers the calls the server's scheduler makes (start a sync, its
//! status) at once, with a made-up point. No VM, no vault: what is measured is the
//! control plane's own cost per VM and per sync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use lifeboat_agent::identity::Identity;
use lifeboat_agent::serve::{serve, Limits, Transport};
use lifeboat_agent::sync::{SyncKind, SyncRequest, SyncResult, SyncState, SyncStatus};

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
}

impl Drop for Agents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts `hosts` simulated agents on loopback, sharing one identity made in `home`.
pub async fn start(home: &std::path::Path, hosts: usize) -> Result<Agents> {
    let identity = Identity::load_or_create(home, "simulated").context("an agent identity")?;
    let counts = Arc::new(Counts::default());
    let mut addresses = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..hosts {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addresses.push(listener.local_addr()?.to_string());
        let router = Router::new()
            .route("/api/v1/hello", get(hello))
            .route("/api/v1/inventory", get(inventory))
            .route("/api/v1/vms/{vm}/syncs", post(start_sync))
            .route("/api/v1/syncs/{id}", get(sync_status))
            .with_state(counts.clone());
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

async fn hello(State(c): State<Arc<Counts>>) -> Json<serde_json::Value> {
    c.requests.fetch_add(1, Ordering::Relaxed);
    Json(serde_json::json!({ "hostname": "simulated", "version": env!("CARGO_PKG_VERSION") }))
}

async fn inventory(State(c): State<Arc<Counts>>) -> Json<serde_json::Value> {
    c.requests.fetch_add(1, Ordering::Relaxed);
    Json(serde_json::json!({ "hostname": "simulated", "vms": [] }))
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

async fn start_sync(
    State(c): State<Arc<Counts>>,
    Path(vm): Path<String>,
    Json(req): Json<SyncRequest>,
) -> Json<SyncStatus> {
    c.requests.fetch_add(1, Ordering::Relaxed);
    c.syncs.fetch_add(1, Ordering::Relaxed);
    Json(committed(&vm, &req.sync_id))
}

async fn sync_status(State(c): State<Arc<Counts>>, Path(id): Path<String>) -> Json<SyncStatus> {
    c.requests.fetch_add(1, Ordering::Relaxed);
    Json(committed("vm", &id))
}
