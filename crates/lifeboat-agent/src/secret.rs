//! A secret string (a vault passphrase, an agent's credential, an enrollment code): it
//! serializes as the plain string it is, but its `Debug` shows only that something is
//! there, so a `{:?}` in a log line or a panic message never prints it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it (a request, a key derivation).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(hidden)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret_and_json_does() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Holder {
            passphrase: Secret,
        }
        let h = Holder {
            passphrase: "correct horse".into(),
        };
        let debug = format!("{h:?} {h:#?}");
        assert!(!debug.contains("correct"), "{debug}");
        assert!(debug.contains("hidden"));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, r#"{"passphrase":"correct horse"}"#);
        let back: Holder = serde_json::from_str(&json).unwrap();
        assert_eq!(back.passphrase.expose(), "correct horse");
    }
}
