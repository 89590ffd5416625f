//! The agent's sealing key: an X25519 key pair made at first start and kept in
//! `HOME/agent/sealing.key` (0600). Whatever is sealed to its public key opens only here.
//! Back it up with the agent's identity: without it, the vault keys the server keeps for
//! this host open nothing, and protection must be enabled again (with the passphrase).
//!
//! What it is for (docs/security.md, "Vault keys"): when protection is enabled, the operator's
//! vault passphrase passes through the server once; each agent that will use the vault
//! unlocks it, seals the vault's key to itself and hands the sealed key back. The server
//! keeps only sealed keys, so its database (or a copy of it) opens no vault, and a sealed
//! key taken from it opens nothing on another host.
//!
//! Format of a sealed message (an ECIES in the manner of HPKE's base mode, RFC 9180):
//!
//! ```text
//! "LBS1" | ephemeral X25519 public key (32) | AES-256-GCM ciphertext | tag (16)
//! key   = HKDF-SHA256(salt = "LBS1", ikm = X25519(ephemeral, recipient),
//!                     info = "lifeboat sealed key v1" | ephemeral public | recipient public)
//! nonce = 12 zero bytes (the key is new for every message)
//! AAD   = "LBS1" | ephemeral public | recipient public
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::hkdf;

const MAGIC: &[u8; 4] = b"LBS1";
const INFO: &[u8] = b"lifeboat sealed key v1";
const PUBLIC_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Sealed messages are keys (a key file is well under 1 KiB); anything larger is refused
/// before any work.
pub const MAX_SEALED_LEN: usize = 8 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the agent's sealing key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("this sealed key was not sealed to this agent, or it is damaged; enable protection again so the agent seals the vault's key anew")]
    Open,
    #[error("sealing failed: {0}")]
    Seal(String),
}

/// The agent's key pair.
pub struct SealingKey {
    private: PrivateKey,
    public: [u8; PUBLIC_LEN],
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey(public {})", hex(&self.public))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl SealingKey {
    /// The key in `dir/sealing.key`, made there (0600) when missing.
    pub fn load_or_create(dir: &Path) -> Result<SealingKey, SealError> {
        let path = dir.join("sealing.key");
        let bad = |message: String| SealError::Key {
            path: path.clone(),
            message,
        };
        let private = match std::fs::read(&path) {
            Ok(bytes) => PrivateKey::from_private_key(&X25519, &bytes)
                .map_err(|_| bad("not an X25519 private key (32 bytes)".into()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let private =
                    PrivateKey::generate(&X25519).map_err(|_| bad("generating".into()))?;
                let seed: aws_lc_rs::encoding::Curve25519SeedBin<'_> =
                    private.as_be_bytes().map_err(|_| bad("encoding".into()))?;
                // Whole or not at all: written aside, synced, then renamed into place, so
                // a crash never leaves an empty key that stops the agent from starting.
                let staged = dir.join("sealing.key.new");
                let _ = std::fs::remove_file(&staged);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&staged)
                    .map_err(|e| bad(e.to_string()))?;
                f.write_all(seed.as_ref())
                    .and_then(|()| f.sync_all())
                    .and_then(|()| std::fs::rename(&staged, &path))
                    .and_then(|()| std::fs::File::open(dir)?.sync_all())
                    .map_err(|e| bad(e.to_string()))?;
                private
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let public = private
            .compute_public_key()
            .map_err(|_| bad("computing the public key".into()))?;
        let public: [u8; PUBLIC_LEN] = public
            .as_ref()
            .try_into()
            .map_err(|_| bad("an X25519 public key is 32 bytes".into()))?;
        Ok(SealingKey { private, public })
    }

    pub fn public(&self) -> [u8; PUBLIC_LEN] {
        self.public
    }

    /// Opens a message sealed to this key.
    pub fn open(&self, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < MAGIC.len() + PUBLIC_LEN + TAG_LEN
            || sealed.len() > MAX_SEALED_LEN
            || &sealed[..4] != MAGIC
        {
            return Err(SealError::Open);
        }
        let ephemeral: [u8; PUBLIC_LEN] = sealed[4..4 + PUBLIC_LEN]
            .try_into()
            .map_err(|_| SealError::Open)?;
        let key = agreement::agree(
            &self.private,
            UnparsedPublicKey::new(&X25519, ephemeral),
            SealError::Open,
            |shared| message_key(shared, &ephemeral, &self.public),
        )?;
        let mut buf = zeroize::Zeroizing::new(sealed[4 + PUBLIC_LEN..].to_vec());
        let aad = aad(&ephemeral, &self.public);
        let plain_len = key
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(&aad),
                &mut buf,
            )
            .map_err(|_| SealError::Open)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// Seals `plaintext` to the holder of the private key of `recipient`.
pub fn seal(recipient: &[u8; PUBLIC_LEN], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let failed = |what: &str| SealError::Seal(what.to_string());
    let ephemeral = PrivateKey::generate(&X25519).map_err(|_| failed("generating a key"))?;
    let ephemeral_public: [u8; PUBLIC_LEN] = ephemeral
        .compute_public_key()
        .map_err(|_| failed("a public key"))?
        .as_ref()
        .try_into()
        .map_err(|_| failed("a public key"))?;
    let key = agreement::agree(
        &ephemeral,
        UnparsedPublicKey::new(&X25519, recipient),
        failed("agreeing on a key"),
        |shared| message_key(shared, &ephemeral_public, recipient).map_err(|_| failed("deriving")),
    )?;
    let mut out = Vec::with_capacity(4 + PUBLIC_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ephemeral_public);
    let mut body = plaintext.to_vec();
    let aad = aad(&ephemeral_public, recipient);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(&aad),
        &mut body,
    )
    .map_err(|_| failed("encrypting"))?;
    out.extend_from_slice(&body);
    zeroize::Zeroize::zeroize(&mut body);
    Ok(out)
}

fn aad(ephemeral: &[u8; PUBLIC_LEN], recipient: &[u8; PUBLIC_LEN]) -> Vec<u8> {
    [MAGIC.as_slice(), ephemeral, recipient].concat()
}

fn message_key(
    shared: &[u8],
    ephemeral: &[u8; PUBLIC_LEN],
    recipient: &[u8; PUBLIC_LEN],
) -> Result<LessSafeKey, SealError> {
    let info = [INFO, ephemeral.as_slice(), recipient.as_slice()];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, MAGIC).extract(shared);
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| SealError::Open)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agent_that_holds_the_key_opens_what_was_sealed_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let alpha = SealingKey::load_or_create(&a).unwrap();
        let beta = SealingKey::load_or_create(&b).unwrap();
        let sealed = seal(&alpha.public(), b"the vault's key").unwrap();
        assert_eq!(&alpha.open(&sealed).unwrap()[..], b"the vault's key");
        assert!(matches!(beta.open(&sealed), Err(SealError::Open)));
        // Each seal is new: the same message twice looks unrelated.
        assert_ne!(
            seal(&alpha.public(), b"x").unwrap(),
            seal(&alpha.public(), b"x").unwrap()
        );
        // A flipped bit anywhere is refused, never opened to something else.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(alpha.open(&bad).is_err(), "byte {i}");
        }
        assert!(alpha.open(&sealed[..sealed.len() - 1]).is_err());
        assert!(alpha.open(b"").is_err());
        // The key survives a restart, and its file is the owner's only.
        let again = SealingKey::load_or_create(&a).unwrap();
        assert_eq!(again.public(), alpha.public());
        assert_eq!(&again.open(&sealed).unwrap()[..], b"the vault's key");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.join("sealing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{alpha:?}").contains(&format!("{:?}", &sealed[..8])));
    }
}
