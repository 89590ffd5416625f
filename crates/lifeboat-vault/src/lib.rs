//! The vault: where every recovery point lives. Immutable, content-addressed, encrypted
//! objects on a folder, S3 or Azure Blob; the format is written down in
//! `docs/vault-format.md` and this crate implements exactly that.
//!
//! - `format`: the bytes — keys, sealed blobs, packs, index pages, manifests, config.
//! - `backend`: the storage — one small interface over `object_store`, with retries and
//!   bounded concurrency.
//! - `direct_io`: bulk file reads and writes around the page cache (O_DIRECT).

#[cfg(feature = "storage")]
pub mod backend;
#[cfg(feature = "storage")]
pub mod direct_io;
pub mod format;
#[cfg(feature = "storage")]
pub mod store;

#[cfg(feature = "storage")]
pub use store::{
    align_to_chunks, DiskLayout, PointOptions, PointReader, PointRef, PointWriter, Unlock, Vault,
    VaultError,
};
