//! NBD (Network Block Device) for Lifeboat. QEMU exposes a point-in-time cut
//! of a VM disk (a fleecing overlay plus a dirty bitmap) as an NBD export on a
//! Unix socket; this crate's [`NbdClient`] negotiates that export with the
//! meta contexts it needs (`base:allocation`, `qemu:dirty-bitmap:NAME`), then
//! reads data and block status with many requests in flight on one
//! connection, checking every reply against the request it answers so that a
//! broken or hostile server yields a typed [`NbdError`] — never a hang, a
//! panic or an unbounded allocation. The wire format in [`proto`] encodes and
//! decodes every message in both directions, so that the NBD server Lifeboat
//! will need to boot a VM from a recovery point can reuse it; only the client
//! logic exists today. Not implemented: TLS, extended headers, writes.

pub mod client;
mod error;
mod extent;
pub mod proto;

pub use client::{ConnectOptions, ExportInfo, MetaContext, NbdClient, DEFAULT_IO_TIMEOUT};
pub use error::{DisconnectReason, NbdError};
pub use extent::{qemu_dirty_bitmap, Extent, BASE_ALLOCATION, STATE_DIRTY, STATE_HOLE, STATE_ZERO};
pub use proto::ProtoError;
