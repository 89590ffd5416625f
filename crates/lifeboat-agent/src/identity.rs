//! The agent's TLS identity: a P-256 key and a self-signed certificate, made once and kept
//! in `HOME/identity/` (key readable by root only). The server pins the certificate's
//! SHA-256 fingerprint at enrollment, so no certificate authority is involved.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making the agent's certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} is not a DER certificate and key pair written by this agent: {reason}; move the identity folder away to make a new identity (the server must then pin the new fingerprint)")]
    Damaged { path: PathBuf, reason: String },
}

/// The agent's certificate and key.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Identity {
    /// Loads the identity from `home/identity`, making one at first start.
    pub fn load_or_create(home: &Path, hostname: &str) -> Result<Identity, IdentityError> {
        let dir = home.join("identity");
        let cert_path = dir.join("cert.der");
        let key_path = dir.join("key.der");
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { what, path, source }
        };
        if cert_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(io("reading", &cert_path))?;
            let key = std::fs::read(&key_path).map_err(io("reading", &key_path))?;
            if cert.is_empty() || key.is_empty() {
                return Err(IdentityError::Damaged {
                    path: dir,
                    reason: "an empty file".into(),
                });
            }
            return Ok(Identity {
                cert: CertificateDer::from(cert),
                key,
            });
        }
        lifeboat_hypervisor::private::private_dir(&dir).map_err(io("creating", &dir))?;
        let names = vec![hostname.to_string(), "localhost".to_string()];
        let made = rcgen::generate_simple_self_signed(names)?;
        let cert = made.cert.der().to_vec();
        let key = made.signing_key.serialize_der();
        write_private(&key_path, &key).map_err(io("writing", &key_path))?;
        // The certificate last: its presence means the identity is whole.
        lifeboat_hypervisor::private::write_private(&cert_path, &cert)
            .map_err(io("writing", &cert_path))?;
        Ok(Identity {
            cert: CertificateDer::from(cert),
            key,
        })
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    /// The certificate's SHA-256 fingerprint, lowercase hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }
}

/// SHA-256 of a DER certificate, lowercase hex: what servers pin and scans show.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_and_kept() {
        let home = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(home.path(), "host-a").unwrap();
        let b = Identity::load_or_create(home.path(), "host-a").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        let other = tempfile::tempdir().unwrap();
        let c = Identity::load_or_create(other.path(), "host-a").unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join("identity/key.der"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }
}
