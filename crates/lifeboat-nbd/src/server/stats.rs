//! Counters of what the server did, for hydration progress and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Shared by every connection of a server ([`super::ServerOptions::stats`]);
/// the counters only grow. Read them from any thread.
#[derive(Debug, Default)]
pub struct ServerStats {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes_served: AtomicU64,
    failed_reads: AtomicU64,
}

impl ServerStats {
    /// Connections that finished the handshake and entered transmission.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Transmission requests received, of every kind.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bytes of READ data written to clients.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::Relaxed)
    }

    /// Reads the source failed (or answered with the wrong length), each answered `EIO`.
    pub fn failed_reads(&self) -> u64 {
        self.failed_reads.load(Ordering::Relaxed)
    }

    pub(super) fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add_bytes_served(&self, n: u64) {
        self.bytes_served.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn add_failed_read(&self) {
        self.failed_reads.fetch_add(1, Ordering::Relaxed);
    }
}
