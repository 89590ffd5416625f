//! NBD (Network Block Device) for Lifeboat, in both directions.
//!
//! Backup: QEMU exposes a point-in-time cut of a VM disk (a fleecing overlay
//! plus a dirty bitmap) as an NBD export on a Unix socket; this crate's
//! [`NbdClient`] negotiates that export with the meta contexts it needs
//! (`base:allocation`, `qemu:dirty-bitmap:NAME`), then reads data and block
//! status with many requests in flight on one connection, checking every
//! reply against the request it answers so that a broken or hostile server
//! yields a typed [`NbdError`] — never a hang, a panic or an unbounded
//! allocation.
//!
//! Instant recovery: the [`server`] serves one read-only export from any
//! async byte source ([`server::ExportSource`], e.g. a recovery point in the
//! vault), so QEMU can boot a VM from a qcow2 overlay backed by it while
//! `block-stream` hydrates the overlay. It treats clients as hostile in the
//! same way and reports [`server::ServeError`].
//!
//! The wire format in [`proto`] encodes and decodes every message in both
//! directions and is shared by both sides. Not implemented: TLS, extended
//! headers, writes; the server offers simple replies only.

pub mod client;
mod error;
mod extent;
pub mod proto;
pub mod server;

pub use client::{ConnectOptions, ExportInfo, MetaContext, NbdClient, DEFAULT_IO_TIMEOUT};
pub use error::{DisconnectReason, NbdError};
pub use extent::{qemu_dirty_bitmap, Extent, BASE_ALLOCATION, STATE_DIRTY, STATE_HOLE, STATE_ZERO};
pub use proto::ProtoError;
