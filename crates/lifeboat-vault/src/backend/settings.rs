//! Credentials and endpoints for the cloud backends. Normally read from the usual
//! environment variables when a backend opens; tests (and anything else that must not
//! touch the process environment) pass them explicitly in [`super::BackendOptions`].

use std::fmt;

/// A secret string: usable, never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself, for handing to the storage client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How to reach an S3 (or S3-compatible) service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Settings {
    /// `AWS_ACCESS_KEY_ID`; when absent (with the secret), the AWS default chain
    /// (instance metadata, web identity) is used.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<Secret>,
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`), default `us-east-1`.
    pub region: String,
    /// `AWS_ENDPOINT_URL`: a non-AWS server such as MinIO or s3s-fs. Plain `http://`
    /// is allowed only when the endpoint says so.
    pub endpoint: Option<String>,
    /// Use `If-None-Match: *` for put-if-absent. Set `AWS_CONDITIONAL_PUT=disabled` for a
    /// server that rejects the header; put-if-absent then falls back to head-then-put.
    pub conditional_put: bool,
}

impl S3Settings {
    /// Settings with explicit static credentials (tests, S3-compatible servers).
    pub fn with_keys(access_key_id: &str, secret_access_key: &str) -> S3Settings {
        S3Settings {
            access_key_id: Some(access_key_id.to_owned()),
            secret_access_key: Some(Secret::new(secret_access_key)),
            session_token: None,
            region: "us-east-1".into(),
            endpoint: None,
            conditional_put: true,
        }
    }

    pub fn from_env() -> S3Settings {
        S3Settings {
            access_key_id: env("AWS_ACCESS_KEY_ID"),
            secret_access_key: env("AWS_SECRET_ACCESS_KEY").map(Secret),
            session_token: env("AWS_SESSION_TOKEN").map(Secret),
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            endpoint: env("AWS_ENDPOINT_URL"),
            conditional_put: !env("AWS_CONDITIONAL_PUT")
                .is_some_and(|v| v.eq_ignore_ascii_case("disabled")),
        }
    }
}

/// How to reach Azure Blob Storage (or Azurite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureSettings {
    /// `AZURE_STORAGE_ACCOUNT_NAME` (`devstoreaccount1` for the emulator).
    pub account: Option<String>,
    /// `AZURE_STORAGE_ACCOUNT_KEY` (the well-known key for the emulator). Ignored when
    /// `sas_token` is set.
    pub access_key: Option<Secret>,
    /// `AZURE_STORAGE_SAS_TOKEN` (the name the Azure CLI uses; `AZURE_STORAGE_SAS_KEY`,
    /// which `object_store` also reads, is accepted when the first is not set): a shared
    /// access signature, the query string `sv=…&sp=…&sig=…` with or without its `?`.
    ///
    /// When set, the vault is reached with this SAS and nothing else — not the account
    /// key, not a token found in the environment. That is what makes a restricted SAS
    /// mean something: a hypervisor host given a container SAS with permissions `rcl`
    /// (read, create, list) can add recovery points but never overwrite or delete one, so
    /// a compromised host cannot destroy what it already backed up.
    pub sas_token: Option<Secret>,
    /// `AZURE_STORAGE_ENDPOINT`: the account's blob endpoint. For Azurite it includes the
    /// account: `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Option<String>,
    /// `AZURE_STORAGE_USE_EMULATOR=true`: Azurite defaults for whatever is not set.
    pub use_emulator: bool,
}

/// Azurite's account and its published, well-known key (not a secret).
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
pub const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl AzureSettings {
    /// Settings for an Azurite listening on `endpoint` (e.g. `http://127.0.0.1:10000`).
    pub fn emulator(endpoint: &str) -> AzureSettings {
        AzureSettings {
            account: Some(EMULATOR_ACCOUNT.into()),
            access_key: Some(Secret::new(EMULATOR_KEY)),
            sas_token: None,
            endpoint: Some(format!(
                "{}/{EMULATOR_ACCOUNT}",
                endpoint.trim_end_matches('/')
            )),
            use_emulator: true,
        }
    }

    /// `emulator` reached with the shared access signature `sas` alone (no account key).
    pub fn emulator_with_sas(endpoint: &str, sas: &str) -> AzureSettings {
        AzureSettings {
            access_key: None,
            sas_token: Some(Secret::new(sas)),
            ..AzureSettings::emulator(endpoint)
        }
    }

    pub fn from_env() -> AzureSettings {
        let use_emulator = env("AZURE_STORAGE_USE_EMULATOR")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
        let mut settings = AzureSettings {
            account: env("AZURE_STORAGE_ACCOUNT_NAME"),
            access_key: env("AZURE_STORAGE_ACCOUNT_KEY").map(Secret),
            sas_token: env("AZURE_STORAGE_SAS_TOKEN")
                .or_else(|| env("AZURE_STORAGE_SAS_KEY"))
                .map(Secret),
            endpoint: env("AZURE_STORAGE_ENDPOINT"),
            use_emulator,
        };
        if use_emulator {
            let defaults = AzureSettings::emulator("http://127.0.0.1:10000");
            settings.account = settings.account.or(defaults.account);
            // The emulator's key is a default for a host given no credential, never an
            // addition to a SAS.
            if settings.sas_token.is_none() {
                settings.access_key = settings.access_key.or(defaults.access_key);
            }
            settings.endpoint = settings.endpoint.or(defaults.endpoint);
        }
        settings
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let s = S3Settings::with_keys("AKIAEXAMPLE", "wJalrXUtnFEMI");
        let shown = format!("{s:?}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        let a = AzureSettings::emulator("http://127.0.0.1:1");
        assert!(!format!("{a:?}").contains(EMULATOR_KEY));
        let a = AzureSettings::emulator_with_sas("http://127.0.0.1:1", "sv=x&sig=SIGNATURE");
        assert!(!format!("{a:?}").contains("SIGNATURE"));
        assert_eq!(a.access_key, None);
    }
}
