//! What can go wrong talking to storage, in words a DR operator can act on. Every message
//! starts with the vault URL. Credentials never appear: URLs carry none (a password put in
//! one is refused and masked), and causes are taken from `object_store` errors, which do
//! not print signed headers.

use std::time::Duration;

/// An error of a storage backend. Match on the variant; the text is for people.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("vault URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },

    #[error("vault {url}: {reason}")]
    Config { url: String, reason: String },

    #[error("vault {url}: invalid object key `{key}`: {reason}")]
    BadKey {
        url: String,
        key: String,
        reason: &'static str,
    },

    #[error("vault {url}: object `{key}` not found")]
    NotFound { url: String, key: String },

    #[error("vault {url}: cannot read bytes {start}..{end} of `{key}`: {reason}")]
    BadRange {
        url: String,
        key: String,
        start: u64,
        end: u64,
        reason: String,
    },

    #[error(
        "vault {url}: cannot reach the storage at {endpoint} after {attempts} attempt{} over {}: {cause}",
        if *.attempts == 1 { "" } else { "s" },
        seconds(.elapsed)
    )]
    Unreachable {
        url: String,
        endpoint: String,
        attempts: u32,
        elapsed: Duration,
        cause: String,
    },

    #[error("vault {url}: the storage refused to {op} `{key}` ({cause}); check the credentials and their permissions")]
    Denied {
        url: String,
        op: &'static str,
        key: String,
        cause: String,
    },

    #[error("vault {url}: {op} `{key}` failed: {cause}")]
    Storage {
        url: String,
        op: &'static str,
        key: String,
        cause: String,
    },
}

impl BackendError {
    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }

    /// True when the storage could not be reached (after retries): worth trying again later.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, BackendError::Unreachable { .. })
    }
}

/// "0.4 s", "12 s": precise when short, round when long.
pub(crate) fn seconds(d: &Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{} s", s.round() as u64)
    }
}

/// The innermost message of an error chain, which is where the useful words are
/// ("Connection refused (os error 111)"), without the errno suffix.
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    let text = current.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    };
    lowercase_first(&text)
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        // Keep acronyms ("HTTP error") as they are.
        Some(c) if c.is_uppercase() && !chars.next().is_some_and(char::is_uppercase) => {
            c.to_lowercase().chain(s[c.len_utf8()..].chars()).collect()
        }
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_reads_well() {
        let err = BackendError::Unreachable {
            url: "s3://b/p".into(),
            endpoint: "http://127.0.0.1:9000".into(),
            attempts: 5,
            elapsed: Duration::from_millis(12_300),
            cause: "connection refused".into(),
        };
        assert_eq!(
            err.to_string(),
            "vault s3://b/p: cannot reach the storage at http://127.0.0.1:9000 \
             after 5 attempts over 12 s: connection refused"
        );
    }

    #[test]
    fn root_cause_strips_errno() {
        let io = std::io::Error::from_raw_os_error(111);
        assert_eq!(root_cause(&io), "connection refused");
    }
}
