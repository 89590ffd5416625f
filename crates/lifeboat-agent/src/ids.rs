//! The ids the server gives the operations it asks for: syncs and recoveries. Each one
//! names a journal file (`HOME/agent/syncs/ID.json`, `HOME/agent/recoveries/ID.json`), so
//! an id from a request is checked before it comes near a path, and these constructors
//! are the only way to make one: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot.
//! No separator, no `..`, no hidden file. The server sends UUIDs, which fit.
//!
//! VM and disk names have their own types in `lifeboat_hypervisor::spec`, made the same way.

use std::fmt;

use serde::{Deserialize, Serialize};

const MAX_LEN: usize = 64;

/// An id from a request that is not one (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} {shown:?} is not valid: use 1 to {MAX_LEN} of A-Z a-z 0-9 . _ -, not starting with '.'"
)]
pub struct InvalidId {
    kind: &'static str,
    /// The start of what was given: enough to recognise, not a whole hostile body.
    shown: String,
}

fn check(kind: &'static str, text: &str) -> Result<(), InvalidId> {
    let ok = (1..=MAX_LEN).contains(&text.len())
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidId {
            kind,
            shown: text.chars().take(MAX_LEN + 8).collect(),
        })
    }
}

macro_rules! operation_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(text: &str) -> Result<Self, InvalidId> {
                check($kind, text)?;
                Ok($name(text.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                check($kind, &s)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

operation_id!(
    /// A sync, named by the server (`SyncRequest::sync_id`).
    SyncId,
    "sync id"
);
operation_id!(
    /// A recovery, named by the server (`RecoveryRequest::recovery_id`).
    RecoveryId,
    "recovery id"
);
operation_id!(
    /// A job (a final sync, a point applied), named by the server.
    JobId,
    "job id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_ids() {
        for good in [
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "s1",
            "a.b_c-D",
            "x..y",
            &"a".repeat(64),
        ] {
            assert_eq!(RecoveryId::new(good).unwrap().as_str(), good);
            assert!(SyncId::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../victim",
            "..%2Fvictim",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "a b",
            "a\0b",
            "a\\b",
            "é",
            &"a".repeat(65),
        ] {
            let err = RecoveryId::new(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("recovery id") && err.contains("not valid"),
                "{err}"
            );
            assert!(SyncId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_read_from_json_are_checked_too() {
        let id: RecoveryId = serde_json::from_str("\"r-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"r-1\"");
        assert!(serde_json::from_str::<RecoveryId>("\"../x\"").is_err());
    }

    #[test]
    fn a_long_hostile_id_is_not_echoed_whole() {
        let err = SyncId::new(&"/".repeat(10_000)).unwrap_err().to_string();
        assert!(err.len() < 300, "{}", err.len());
    }
}
