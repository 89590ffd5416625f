//! Enrollment: at first start the agent makes a one-time code and prints it; the operator
//! gives the code to the server, which presents it to the agent together with its own
//! certificate fingerprint. The agent then hands out a per-agent credential — once — and
//! from then on answers only requests that carry it. Only hashes of the code and the
//! credential are stored (`HOME/enrollment.json`, root-only).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Crockford's base32 alphabet: no I, L, O or U to misread.
const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 12 characters of 5 bits: 60 bits, far beyond guessing over a network.
const CODE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({reason}); start the agent with --reset-enrollment to make a new code"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("this agent is already enrolled with server {server}; start it with --reset-enrollment to enroll it again")]
    AlreadyEnrolled { server: String },
    #[error("wrong enrollment code")]
    WrongCode,
    #[error("no randomness from the operating system")]
    Random,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    /// SHA-256 of the code while the agent waits to be enrolled.
    code_sha256: Option<String>,
    enrolled: Option<Enrolled>,
}

/// Who enrolled this agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enrolled {
    /// The server's certificate fingerprint, pinned.
    pub server_fingerprint: String,
    credential_sha256: String,
}

pub struct Enrollment {
    path: PathBuf,
    state: Mutex<State>,
}

impl Enrollment {
    /// Loads the enrollment state from `home`. At first start (or with `reset`) a new code
    /// is made and returned, to be shown to the operator; it is never shown again.
    pub fn load(home: &Path, reset: bool) -> Result<(Enrollment, Option<String>), EnrollmentError> {
        let path = home.join("enrollment.json");
        let existing = match std::fs::read(&path) {
            Ok(bytes) if !reset => Some(serde_json::from_slice::<State>(&bytes).map_err(|e| {
                EnrollmentError::Damaged {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(EnrollmentError::Io {
                    what: "reading",
                    path,
                    source,
                })
            }
        };
        let (state, code) = match existing {
            Some(s) => (s, None),
            None => {
                let code = new_code()?;
                let state = State {
                    code_sha256: Some(sha256_hex(normalize_code(&code).as_bytes())),
                    enrolled: None,
                };
                save(&path, &state)?;
                (state, Some(code))
            }
        };
        Ok((
            Enrollment {
                path,
                state: Mutex::new(state),
            },
            code,
        ))
    }

    /// Who enrolled this agent, if anyone.
    pub fn enrolled(&self) -> Option<Enrolled> {
        self.lock().enrolled.clone()
    }

    /// Exchanges the code for the agent's credential, once. The code is spent even if
    /// saving fails afterwards (the caller then gets the error and must reset).
    pub fn enroll(&self, code: &str, server_fingerprint: &str) -> Result<String, EnrollmentError> {
        let mut state = self.lock();
        if let Some(e) = &state.enrolled {
            return Err(EnrollmentError::AlreadyEnrolled {
                server: e.server_fingerprint.clone(),
            });
        }
        let given = sha256_hex(normalize_code(code).as_bytes());
        let expected = state
            .code_sha256
            .clone()
            .ok_or(EnrollmentError::WrongCode)?;
        if !same_digest(&given, &expected) {
            return Err(EnrollmentError::WrongCode);
        }
        let credential = random_hex(32)?;
        let next = State {
            code_sha256: None,
            enrolled: Some(Enrolled {
                server_fingerprint: server_fingerprint.to_string(),
                credential_sha256: sha256_hex(credential.as_bytes()),
            }),
        };
        save(&self.path, &next)?;
        *state = next;
        Ok(credential)
    }

    /// Whether `credential` is this agent's (false before enrollment).
    pub fn check(&self, credential: &str) -> bool {
        let state = self.lock();
        let Some(e) = &state.enrolled else {
            return false;
        };
        let given = sha256_hex(credential.as_bytes());
        same_digest(&given, &e.credential_sha256)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Codes are shown as `XXXX-XXXX-XXXX`; dashes, spaces and case do not matter when typed.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn new_code() -> Result<String, EnrollmentError> {
    let mut raw = [0u8; CODE_LEN];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| EnrollmentError::Random)?;
    let chars: String = raw
        .iter()
        .map(|b| CODE_ALPHABET[(*b as usize) % CODE_ALPHABET.len()] as char)
        .collect();
    Ok(format!("{}-{}-{}", &chars[..4], &chars[4..8], &chars[8..]))
}

fn random_hex(bytes: usize) -> Result<String, EnrollmentError> {
    let mut raw = vec![0u8; bytes];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| EnrollmentError::Random)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares two hex digests without stopping at the first difference. (They are digests
/// of secrets, so even a timing leak would only tell which digest bytes match.)
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the state atomically: a root-only temporary file, fsynced, renamed over.
fn save(path: &Path, state: &State) -> Result<(), EnrollmentError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what| {
        let path = path.to_path_buf();
        move |source| EnrollmentError::Io { what, path, source }
    };
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("writing"))?;
    let body = serde_json::to_vec_pretty(state).expect("plain data serializes");
    f.write_all(&body).map_err(io("writing"))?;
    f.sync_all().map_err(io("syncing"))?;
    std::fs::rename(&tmp, path).map_err(io("replacing"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_yields_a_credential_that_checks() {
        let home = tempfile::tempdir().unwrap();
        let (e, code) = Enrollment::load(home.path(), false).unwrap();
        let code = code.expect("first start shows a code");
        assert_eq!(code.len(), 14);
        assert!(e.enrolled().is_none());
        assert!(!e.check("anything"));
        assert!(matches!(
            e.enroll("AAAA-AAAA-AAAA", "fp"),
            Err(EnrollmentError::WrongCode)
        ));
        let cred = e
            .enroll(&code.to_lowercase().replace('-', " "), "server-fp")
            .unwrap();
        assert!(e.check(&cred));
        assert!(!e.check("wrong"));
        assert!(matches!(
            e.enroll(&code, "other"),
            Err(EnrollmentError::AlreadyEnrolled { .. })
        ));
        // A restart keeps the enrollment and shows no code.
        let (again, code2) = Enrollment::load(home.path(), false).unwrap();
        assert!(code2.is_none());
        assert!(again.check(&cred));
        assert_eq!(again.enrolled().unwrap().server_fingerprint, "server-fp");
        // A reset forgets the server and makes a new code.
        let (reset, code3) = Enrollment::load(home.path(), true).unwrap();
        assert!(code3.is_some() && !reset.check(&cred));
    }

    #[test]
    fn a_damaged_state_file_is_a_clear_error() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("enrollment.json"), b"{not json").unwrap();
        let err = Enrollment::load(home.path(), false).err().unwrap();
        assert!(err.to_string().contains("--reset-enrollment"), "{err}");
    }
}
