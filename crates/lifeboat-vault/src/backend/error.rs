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

/// What a refused request was not allowed to do, when the backend could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Create,
    Overwrite,
    Delete,
}

/// Did the storage refuse the credential (HTTP 401/403)? object_store says so with
/// `PermissionDenied`/`Unauthenticated` for single requests, but an Azure delete goes
/// through Blob Batch and a refused sub-request comes back as a generic error whose
/// message is the only trace ("… (code: 403)").
pub(crate) fn is_refusal(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => true,
        E::Generic { .. } => {
            let text = e.to_string();
            [
                "status code: 401",
                "status code: 403",
                "(code: 401)",
                "(code: 403)",
            ]
            .iter()
            .any(|marker| text.contains(marker))
        }
        _ => false,
    }
}

/// The cause of a [`BackendError::Denied`]: what the credential may not do, when known,
/// and for a SAS which permissions it carries, since that is what the operator chose.
/// `server` is what the storage answered.
pub(crate) fn refusal_cause(
    refused: Option<Refused>,
    sas_permissions: Option<&str>,
    server: &str,
) -> String {
    let Some(refused) = refused else {
        return match sas_permissions {
            Some(sp) => format!("{server}; the vault is opened with a SAS allowing `{sp}`"),
            None => server.to_owned(),
        };
    };
    let what = match refused {
        Refused::Create => "create",
        Refused::Overwrite => "overwrite",
        Refused::Delete => "delete",
    };
    let Some(sp) = sas_permissions else {
        return format!("this credential may not {what} objects: {server}");
    };
    let append_only = sp.contains('c') && !sp.contains('w') && !sp.contains('d');
    let why = match refused {
        Refused::Overwrite | Refused::Delete if append_only => {
            ", an append-only SAS: it adds objects but never changes or removes one".to_owned()
        }
        Refused::Create => "; creating needs `c` (or `w`)".to_owned(),
        Refused::Overwrite => "; overwriting needs `w`".to_owned(),
        Refused::Delete => "; deleting needs `d`".to_owned(),
    };
    format!(
        "this credential may not {what} objects: the vault is opened with a SAS allowing \
         `{sp}` only{why}"
    )
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

    /// The message object_store 0.14 gives a delete that Azure refused inside a Blob
    /// Batch (seen against Azurite with an `rcl` SAS): a generic error, no status type.
    fn batch_refusal() -> object_store::Error {
        object_store::Error::Generic {
            store: "MicrosoftAzure",
            source: "Bulk delete request failed for key vault/x: This request is not \
                     authorized to perform this operation using this permission. (code: 403)"
                .into(),
        }
    }

    #[test]
    fn a_refused_batch_delete_is_a_refusal_and_never_retried() {
        assert!(is_refusal(&batch_refusal()));
        assert_eq!(super::super::retry::transient_cause(&batch_refusal()), None);
        let unavailable = object_store::Error::Generic {
            store: "MicrosoftAzure",
            source: "Server returned non-2xx status code: 503 Service Unavailable: ".into(),
        };
        assert!(!is_refusal(&unavailable));
    }

    #[test]
    fn refusals_say_what_the_sas_allows() {
        let delete = refusal_cause(Some(Refused::Delete), Some("rcl"), "403");
        assert_eq!(
            delete,
            "this credential may not delete objects: the vault is opened with a SAS \
             allowing `rcl` only, an append-only SAS: it adds objects but never changes or \
             removes one"
        );
        let create = refusal_cause(Some(Refused::Create), Some("rl"), "403");
        assert!(create.contains("creating needs `c`"), "{create}");
        let delete = refusal_cause(Some(Refused::Delete), Some("racwl"), "403");
        assert!(delete.ends_with("deleting needs `d`"), "{delete}");
        // Without a SAS the server's words are all there is to add.
        let key = refusal_cause(
            Some(Refused::Delete),
            None,
            "HTTP 403: AuthorizationFailure",
        );
        assert_eq!(
            key,
            "this credential may not delete objects: HTTP 403: AuthorizationFailure"
        );
        assert_eq!(refusal_cause(None, None, "HTTP 401"), "HTTP 401");
    }

    #[test]
    fn root_cause_strips_errno() {
        let io = std::io::Error::from_raw_os_error(111);
        assert_eq!(root_cause(&io), "connection refused");
    }
}
