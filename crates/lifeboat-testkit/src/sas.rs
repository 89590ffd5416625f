//! Shared access signatures (SAS) for Azurite, so tests can hand a backend the same
//! restricted credential an operator gives a hypervisor host (e.g. `rcl`: read, create,
//! list — append-only). A container-level *service* SAS is an HMAC-SHA256, keyed with the
//! account key, over a newline-joined "string to sign"; Azure (and Azurite, which checks
//! it the same way) recomputes it from the query parameters and the request's container.
//!
//! Reference: "Create a service SAS", version 2020-12-06 and later
//! (<https://learn.microsoft.com/en-us/rest/api/storageservices/create-service-sas>), and
//! Azurite's `generateBlobSASSignature20201206` in
//! `src/blob/authentication/IBlobSASSignatureValues.ts`.

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::servers::{AZURITE_ACCOUNT, AZURITE_KEY};

/// The signed version (`sv`). Any version from 2020-12-06 on uses the string to sign
/// below (with the encryption-scope line); Azurite 3.35 accepts it, and it is the
/// `x-ms-version` the testkit already uses to create containers.
pub const SAS_VERSION: &str = "2021-08-06";

/// A container SAS for `container` in Azurite's account, as the query string a user would
/// paste (`sv=…&sr=c&sp=…&se=…&sig=…`, no leading `?`). `permissions` are Azure's letters
/// in Azure's order (`racwdl…`; e.g. `rcl`), `expiry` is when it stops working.
pub fn azurite_container_sas(container: &str, permissions: &str, expiry: DateTime<Utc>) -> String {
    container_sas(AZURITE_ACCOUNT, AZURITE_KEY, container, permissions, expiry)
}

/// A container SAS for any account whose key is known (base64, as Azure shows it).
///
/// # Panics
/// If `account_key` is not base64 — a bug in the test that calls it.
pub fn container_sas(
    account: &str,
    account_key: &str,
    container: &str,
    permissions: &str,
    expiry: DateTime<Utc>,
) -> String {
    // Azure wants seconds precision and a `Z` ("2026-01-01T00:00:00Z").
    let expiry = expiry.to_rfc3339_opts(SecondsFormat::Secs, true);
    let string_to_sign = [
        permissions,                             // signedPermissions
        "",                                      // signedStart
        &expiry,                                 // signedExpiry
        &format!("/blob/{account}/{container}"), // canonicalizedResource
        "",                                      // signedIdentifier
        "",                                      // signedIP
        "",                                      // signedProtocol
        SAS_VERSION,                             // signedVersion
        "c",                                     // signedResource: container
        "",                                      // signedSnapshotTime
        "",                                      // signedEncryptionScope
        "",                                      // rscc
        "",                                      // rscd
        "",                                      // rsce
        "",                                      // rscl
        "",                                      // rsct
    ]
    .join("\n");
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(account_key).expect("the account key is base64");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let signature = b64.encode(aws_lc_rs::hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    format!(
        "sv={SAS_VERSION}&sr=c&sp={permissions}&se={}&sig={}",
        escape(&expiry),
        escape(&signature)
    )
}

/// Percent-encodes what a timestamp or a base64 signature can contain.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature must cover exactly the documented fields: pinned against a value
    /// computed independently (Python's hmac over the same string to sign).
    #[test]
    fn signs_the_documented_string() {
        let expiry = DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let sas = azurite_container_sas("lifeboat-test", "rcl", expiry);
        assert!(
            sas.starts_with("sv=2021-08-06&sr=c&sp=rcl&se=2030-01-02T03%3A04%3A05Z&sig="),
            "{sas}"
        );
        let sig = sas.rsplit("sig=").next().unwrap();
        assert_eq!(sig, PINNED_SIG, "{sas}");
    }

    const PINNED_SIG: &str = "caUN%2BCv6YYpS3dhVZASOLYNOyJfBdYJ4EGVKtTtMwwk%3D";
}
