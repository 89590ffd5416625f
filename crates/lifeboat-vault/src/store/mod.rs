//! The vault's logic over its format and storage: writing points, reading and restoring
//! them, leases, and (later) verify, prune, gc and stats.

pub mod cache;
pub mod error;
pub mod lease;
pub mod pages;
pub mod reader;
pub mod retention;
pub mod vault;
pub mod writer;

pub use error::{Result, VaultError};
pub use reader::{PointReader, RestoreStats};
pub use vault::{PointRef, Unlock, Vault};
pub use writer::{align_to_chunks, DiskLayout, PointOptions, PointWriter};
