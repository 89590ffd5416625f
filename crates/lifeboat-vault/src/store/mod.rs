//! The vault's logic over its format and storage: writing points, reading and restoring
//! them, leases, and the maintenance passes verify, prune, gc and stats.

pub mod cache;
pub mod chunking;
pub mod error;
pub mod gc;
mod keyring;
pub mod lease;
pub mod pages;
pub mod prune;
pub mod reader;
mod restore;
pub mod retention;
pub mod stats;
pub mod vault;
pub mod verify;
pub mod writer;

pub use chunking::align_to_chunks;
pub use error::{Result, VaultError};
pub use gc::{execute_gc, gc, plan_gc, GcPlan, GcReport};
pub use prune::{execute_prune, plan_prune, plan_prune_of, PrunePlan, PruneReport};
pub use reader::{PointReader, RestoreStats};
pub use retention::RetentionPolicy;
pub use stats::{stats, VaultStats};
pub use vault::{PointRef, Unlock, Vault};
pub use verify::{verify, Fault, PointStatus, Problem, VerifyPhase, VerifyProgress, VerifyReport};
pub use writer::{DiskLayout, PointOptions, PointWriter};
