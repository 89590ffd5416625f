//! AES-256-GCM, the vault's one cipher (vault-format.md, "Encryption").
//!
//! Backed by `aws-lc-rs`, the crypto provider rustls uses for our TLS too (one provider in
//! the build, not ring as well). Its AES-GCM, like ring's before it, uses the CPU's AES and
//! carry-less-multiply (and, where present, vector AES) instructions: on the vault
//! benchmark ring sealed about three times as fast as the pure-Rust `aes-gcm` crate, whose
//! GHASH alone was 6% of a full backup. The raw keys the cipher is built from are wiped by
//! the callers. Switching providers changed no byte: AES-256-GCM is a standard, checked
//! against its published vector below and against vault bytes written with ring
//! (`format::frozen`).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key.
pub struct Cipher(LessSafeKey);

/// Sealing failed: the message is longer than AES-GCM allows (never for vault objects,
/// whose sizes are capped far below).
#[derive(Debug)]
pub struct SealError;

/// Opening failed: wrong key, or the bytes, nonce or associated data were changed.
#[derive(Debug)]
pub struct OpenError;

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Cipher {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes a 32-byte key");
        Cipher(LessSafeKey::new(key))
    }

    /// Encrypts `buf` in place and returns its tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SealError> {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| SealError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// `ciphertext | tag` of `plain`.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut buf = Vec::with_capacity(plain.len() + TAG_LEN);
        buf.extend_from_slice(plain);
        let tag = self.seal_in_place(nonce, aad, &mut buf)?;
        buf.extend_from_slice(&tag);
        Ok(buf)
    }

    /// Decrypts `buf` in place, checking `tag`; `buf` is left undefined on failure.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), OpenError> {
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag,
                buf,
            )
            .map(|_| ())
            .map_err(|_| OpenError)
    }

    /// Decrypts `ciphertext | tag`, checking the tag; the plaintext on success.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < TAG_LEN {
            return Err(OpenError);
        }
        let mut buf = sealed.to_vec();
        let n = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| OpenError)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_any_change() {
        let c = Cipher::new(&[7; 32]);
        let n = [1; NONCE_LEN];
        let sealed = c.seal(&n, b"aad", b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + TAG_LEN);
        assert_eq!(c.open(&n, b"aad", &sealed).unwrap(), b"hello");
        assert!(c.open(&n, b"aae", &sealed).is_err());
        assert!(c.open(&[2; NONCE_LEN], b"aad", &sealed).is_err());
        assert!(Cipher::new(&[8; 32]).open(&n, b"aad", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                c.open(&n, b"aad", &bad).is_err(),
                "bit flip at {i} accepted"
            );
        }
        assert!(c.open(&n, b"aad", &sealed[..TAG_LEN - 1]).is_err());
    }

    /// The standard's test vector (NIST GCM spec, test case 14: zero key, zero IV, one
    /// zero block), so a vault written here opens with any AES-GCM implementation.
    #[test]
    fn matches_the_published_test_vector() {
        let c = Cipher::new(&[0; 32]);
        let sealed = c.seal(&[0; NONCE_LEN], b"", &[0; 16]).unwrap();
        assert_eq!(
            hex::encode(sealed),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
    }
}
