//! The vault's bytes, exactly as `docs/vault-format.md` (format version 1) writes them
//! down: typed ids and object keys, the key hierarchy, sealed blobs, packs and their
//! trailers, index pages, manifests and the `config` object with its key slots. Nothing
//! here does I/O; the `backend` moves the bytes and this module makes and checks them.
//!
//! Every decoder takes hostile input: lengths are bounded before allocating, tags are
//! checked before decompressing, ids are recomputed after decrypting, and the answer to bad
//! bytes is a `FormatError` that names the object, never a panic. Chunk and page ids are
//! only ever computed by `seal_chunk`/`seal_page` (the builder invariant of Proxmox's
//! `data_blob.rs`), so sealed bytes always carry the id of their own plaintext.

pub mod aead;
pub mod blob;
pub mod config;
pub mod error;
pub mod ids;
pub mod keyfile;
pub mod keys;
pub mod manifest;
pub mod pack;
pub mod page;

#[cfg(test)]
mod frozen;
#[cfg(test)]
mod tests;

pub use blob::{open_chunk, open_chunk_into, seal_chunk, BlobKind};
pub use config::{KdfParams, KeySlot, VaultConfig};
pub use error::FormatError;
pub use ids::{
    lease_object_key, manifest_key, manifest_prefix, pack_key, parse_lease_key, parse_manifest_key,
    parse_pack_key, ChunkId, LeaseObject, Name, PackId, PageId, PointId, SessionId, VaultId,
    CONFIG_KEY,
};
pub use keyfile::{KeyFile, VaultKey};
pub use keys::{MasterKey, ScopeKey, VaultKeys};
pub use manifest::{
    open_manifest, seal_manifest, Consistency, DiskManifest, Manifest, PageRef, PointStats,
};
pub use pack::{read_trailer, trailer_len_from_footer, PackBuilder, PackedId, TrailerEntry};
pub use page::{open_page, seal_page, IndexEntry, IndexPage, ENTRIES_PER_PAGE};
