//! The master key and the sub-keys derived from it (vault-format.md, "Keys"). Each job has
//! its own key, so a chunk id can never be confused with a nonce or a key check, and the
//! provider, who sees ids, learns nothing it could test a guess against.
//!
//! In a format-2 vault every name (a VM) has its own **scope key**, derived one way from
//! the master key, and that name's sub-keys come from the scope key: a host given one
//! VM's scope key can neither read nor forge the points of another, and learns nothing of
//! the master key. Format-1 vaults derive every name's sub-keys from the master key.

use std::fmt;

use zeroize::Zeroize;

use super::aead::Cipher;
use super::blob::BlobKind;
use super::error::{FormatError, Result};
use super::ids::{ChunkId, Name, PageId};

const CTX_CHUNK_ID: &str = "lifeboat vault v1 chunk id";
const CTX_PAGE_ID: &str = "lifeboat vault v1 page id";
const CTX_SEAL: &str = "lifeboat vault v1 seal";
const CTX_NONCE: &str = "lifeboat vault v1 nonce";
const CTX_KEY_CHECK: &str = "lifeboat vault v1 key check";
const CTX_SCOPE: &str = "lifeboat vault v2 scope";

/// The vault's random 32-byte master key. Never printed; wiped from memory on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// A fresh key from the operating system's randomness.
    pub fn random() -> Result<Self> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(FormatError::Random)?;
        Ok(MasterKey(k))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// The raw key, for wrapping it in a key slot or a key file only.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The scope key of `name` (format 2): keyed BLAKE3, under a key derived from the
    /// master key, of the name's UTF-8 bytes. One way: a scope key tells nothing of the
    /// master key or of another name's scope key.
    pub fn scope_key(&self, name: &Name) -> ScopeKey {
        let mut k = blake3::derive_key(CTX_SCOPE, &self.0);
        let scope = *blake3::keyed_hash(&k, name.as_str().as_bytes()).as_bytes();
        k.zeroize();
        ScopeKey(scope)
    }
}

/// The key of one name's points in a format-2 vault. Never printed; wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct ScopeKey([u8; 32]);

impl ScopeKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ScopeKey(bytes)
    }

    /// The raw key, for a key file only.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for ScopeKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for ScopeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScopeKey(<secret>)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<secret>)")
    }
}

/// The sub-keys of one vault, derived once per unlock.
#[derive(Clone)]
pub struct VaultKeys {
    chunk_id: [u8; 32],
    page_id: [u8; 32],
    nonce: [u8; 32],
    key_check: [u8; 32],
    seal: std::sync::Arc<Cipher>,
}

impl VaultKeys {
    /// The sub-keys of a format-1 vault (every name), and the key check of any vault.
    pub fn derive(master: &MasterKey) -> Self {
        Self::derive_from(master.expose())
    }

    /// The sub-keys of one name of a format-2 vault.
    pub fn derive_scope(scope: &ScopeKey) -> Self {
        Self::derive_from(scope.expose())
    }

    fn derive_from(root: &[u8; 32]) -> Self {
        let mut seal_key = blake3::derive_key(CTX_SEAL, root);
        let seal = std::sync::Arc::new(Cipher::new(&seal_key));
        seal_key.zeroize();
        VaultKeys {
            chunk_id: blake3::derive_key(CTX_CHUNK_ID, root),
            page_id: blake3::derive_key(CTX_PAGE_ID, root),
            nonce: blake3::derive_key(CTX_NONCE, root),
            key_check: blake3::derive_key(CTX_KEY_CHECK, root),
            seal,
        }
    }

    /// The id of a chunk's plaintext. Crate-private: outside code gets chunk ids only from
    /// `blob::seal_chunk`, so an id always names the plaintext it was sealed with.
    pub(crate) fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.chunk_id, plaintext).as_bytes())
    }

    /// The id of an index page's plaintext (crate-private for the same reason).
    pub(crate) fn page_id(&self, plaintext: &[u8]) -> PageId {
        PageId(*blake3::keyed_hash(&self.page_id, plaintext).as_bytes())
    }

    /// The content-addressed nonce of a chunk or page blob: keyed BLAKE3 over
    /// `kind | flags | id | payload`, first 12 bytes. `payload` is the compressed bytes that
    /// get encrypted (zstd output may differ between zstd versions, and two different
    /// payloads under one nonce would break AES-GCM, so the nonce covers them), or empty
    /// when the plaintext is sealed as is: the id already names it.
    pub fn nonce_for(&self, kind: BlobKind, flags: u8, id: &[u8; 32], payload: &[u8]) -> [u8; 12] {
        let mut h = blake3::Hasher::new_keyed(&self.nonce);
        h.update(&[kind as u8, flags]);
        h.update(id);
        h.update(payload);
        let mut n = [0u8; 12];
        n.copy_from_slice(&h.finalize().as_bytes()[..12]);
        n
    }

    /// The `key_check` of `config`: keyed hash of the empty string. Tells a wrong key file
    /// apart from a damaged vault without decrypting anything.
    pub fn key_check(&self) -> [u8; 32] {
        *blake3::keyed_hash(&self.key_check, b"").as_bytes()
    }

    pub(crate) fn cipher(&self) -> &Cipher {
        &self.seal
    }
}

impl Drop for VaultKeys {
    fn drop(&mut self) {
        self.chunk_id.zeroize();
        self.page_id.zeroize();
        self.nonce.zeroize();
        self.key_check.zeroize();
    }
}

impl fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultKeys(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_keys_differ_and_are_stable() {
        let m = MasterKey::from_bytes([1; 32]);
        let k = VaultKeys::derive(&m);
        let data = b"some chunk";
        assert_ne!(k.chunk_id(data).0, k.page_id(data).0);
        assert_eq!(k.chunk_id(data), VaultKeys::derive(&m).chunk_id(data));
        // The exact derivation of the spec, so another implementation can follow it.
        let key = blake3::derive_key("lifeboat vault v1 chunk id", &[1; 32]);
        assert_eq!(
            k.chunk_id(data).0,
            *blake3::keyed_hash(&key, data).as_bytes()
        );
        let kc = blake3::derive_key("lifeboat vault v1 key check", &[1; 32]);
        assert_eq!(k.key_check(), *blake3::keyed_hash(&kc, b"").as_bytes());
        let other = VaultKeys::derive(&MasterKey::from_bytes([2; 32]));
        assert_ne!(k.chunk_id(data), other.chunk_id(data));
        assert_ne!(k.key_check(), other.key_check());
    }

    #[test]
    fn nonce_depends_on_every_input() {
        let k = VaultKeys::derive(&MasterKey::from_bytes([1; 32]));
        let n = k.nonce_for(BlobKind::Chunk, 0, &[3; 32], b"p");
        assert_eq!(n, k.nonce_for(BlobKind::Chunk, 0, &[3; 32], b"p"));
        assert_ne!(n, k.nonce_for(BlobKind::IndexPage, 0, &[3; 32], b"p"));
        assert_ne!(n, k.nonce_for(BlobKind::Chunk, 1, &[3; 32], b"p"));
        assert_ne!(n, k.nonce_for(BlobKind::Chunk, 0, &[4; 32], b"p"));
        assert_ne!(n, k.nonce_for(BlobKind::Chunk, 0, &[3; 32], b"q"));
    }

    #[test]
    fn scope_keys_are_per_name_and_follow_the_spec() {
        let m = MasterKey::from_bytes([1; 32]);
        let web: Name = "web1".parse().unwrap();
        let db: Name = "db1".parse().unwrap();
        assert_eq!(m.scope_key(&web), m.scope_key(&web));
        assert_ne!(m.scope_key(&web), m.scope_key(&db));
        assert_ne!(m.scope_key(&web).0, [1; 32]);
        let k = blake3::derive_key("lifeboat vault v2 scope", &[1; 32]);
        assert_eq!(
            m.scope_key(&web).0,
            *blake3::keyed_hash(&k, b"web1").as_bytes()
        );
        // One name's keys open nothing of another's, nor of format 1.
        let data = b"some chunk";
        let (w, d) = (
            VaultKeys::derive_scope(&m.scope_key(&web)),
            VaultKeys::derive_scope(&m.scope_key(&db)),
        );
        assert_ne!(w.chunk_id(data), d.chunk_id(data));
        assert_ne!(w.chunk_id(data), VaultKeys::derive(&m).chunk_id(data));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let m = MasterKey::from_bytes([0xab; 32]);
        assert!(!format!("{m:?}").contains("ab"));
        assert!(!format!("{:?}", VaultKeys::derive(&m)).contains("ab"));
        assert!(!format!("{:?}", ScopeKey::from_bytes([0xab; 32])).contains("ab"));
    }
}
