//! Building the `object_store` client for a vault URL. Nothing here talks to the network:
//! clients connect on first use, so a wrong endpoint shows up as "cannot reach" on the
//! first request, with the retry count and the endpoint in the message.

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::azure::{split_sas, AzureCredential, MicrosoftAzureBuilder};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, RetryConfig, StaticCredentialProvider};

use super::error::BackendError;
use super::folder::FolderStore;
use super::settings::{AzureSettings, S3Settings, Secret};
use super::url::VaultUrl;
use super::BackendOptions;

pub(crate) struct Built {
    pub store: Arc<dyn ObjectStore>,
    /// Where the requests go, for error messages: a folder path or an HTTP endpoint.
    pub endpoint: String,
    /// When the store is reached with a SAS that names its permissions: the letters
    /// (`sp`, `rcl` for an append-only host), for messages that say why a request was
    /// refused.
    pub sas_permissions: Option<String>,
}

pub(crate) async fn build(url: &VaultUrl, opts: &BackendOptions) -> Result<Built, BackendError> {
    let config = |reason: String| BackendError::Config {
        url: url.to_string(),
        reason,
    };
    match url {
        VaultUrl::Folder { path } => {
            let dir = path.clone();
            tokio::task::spawn_blocking(move || super::folder::prepare(&dir))
                .await
                .map_err(|e| config(format!("creating the folder: {e}")))?
                .map_err(|e| config(format!("cannot create the folder {}: {e}", path.display())))?;
            let local = LocalFileSystem::new_with_prefix(path)
                .map_err(|e| config(format!("cannot open the folder {}: {e}", path.display())))?;
            let store = FolderStore::new(local, path.clone(), opts.fsync);
            Ok(Built {
                store: Arc::new(store),
                endpoint: path.display().to_string(),
                sas_permissions: None,
            })
        }
        VaultUrl::S3 { bucket, prefix } => {
            let settings = opts.s3.clone();
            let explicit = settings.is_some();
            let s = settings.unwrap_or_else(S3Settings::from_env);
            // From the environment, start from object_store's own env reading so its other
            // AWS_* options (web identity, container credentials, …) keep working.
            let mut builder = if explicit {
                AmazonS3Builder::new()
            } else {
                AmazonS3Builder::from_env()
            };
            builder = builder
                .with_bucket_name(bucket)
                .with_region(&s.region)
                .with_retry(no_retries())
                .with_client_options(client_options(opts, s.endpoint.as_deref()));
            match (&s.access_key_id, &s.secret_access_key) {
                (Some(id), Some(secret)) => {
                    builder = builder
                        .with_access_key_id(id)
                        .with_secret_access_key(secret.expose());
                    if let Some(token) = &s.session_token {
                        builder = builder.with_token(token.expose());
                    }
                }
                (Some(_), None) => {
                    return Err(config(
                        "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                    ))
                }
                (None, Some(_)) => {
                    return Err(config(
                        "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
                    ))
                }
                (None, None) => {}
            }
            let endpoint = match &s.endpoint {
                Some(e) => {
                    builder = builder.with_endpoint(e);
                    e.clone()
                }
                None => format!("https://s3.{}.amazonaws.com", s.region),
            };
            if !s.conditional_put {
                builder = builder.with_conditional_put(S3ConditionalPut::Disabled);
            }
            let store = builder
                .build()
                .map_err(|e| config(format!("S3 settings: {e}")))?;
            Ok(Built {
                store: with_prefix(store, prefix),
                endpoint,
                sas_permissions: None,
            })
        }
        VaultUrl::Azure { container, prefix } => {
            let settings = opts.azure.clone();
            let explicit = settings.is_some();
            let s = settings.unwrap_or_else(AzureSettings::from_env);
            let mut builder = if explicit {
                MicrosoftAzureBuilder::new()
            } else {
                MicrosoftAzureBuilder::from_env()
            };
            let Some(account) = &s.account else {
                return Err(config(
                    "no storage account: set AZURE_STORAGE_ACCOUNT_NAME \
                     (or AZURE_STORAGE_USE_EMULATOR=true for Azurite)"
                        .into(),
                ));
            };
            // Azurite is reached like any account with an explicit endpoint: object_store's
            // emulator mode takes its address from a process-wide variable instead, and
            // signs with an account key whenever it has one, ignoring a SAS and even
            // `with_credentials`. `from_env()` turns that mode on for
            // AZURE_STORAGE_USE_EMULATOR, so it is switched off explicitly.
            builder = builder
                .with_account(account)
                .with_container_name(container)
                .with_use_emulator(false)
                .with_retry(no_retries())
                .with_client_options(client_options(opts, s.endpoint.as_deref()));
            let endpoint = match &s.endpoint {
                Some(e) => {
                    builder = builder.with_endpoint(e.clone());
                    e.clone()
                }
                None => format!("https://{account}.blob.core.windows.net"),
            };
            let mut sas_permissions = None;
            if let Some(sas) = &s.sas_token {
                let pairs = sas_pairs(sas).map_err(config)?;
                // A SAS tied to a stored access policy (`si=`) may carry no `sp`: its
                // permissions are then on the server, and messages cannot name them.
                sas_permissions = pair(&pairs, "sp")
                    .filter(|sp| !sp.is_empty())
                    .map(str::to_owned);
                tracing::info!(
                    vault = %url,
                    %endpoint,
                    permissions = sas_permissions.as_deref().unwrap_or("(its access policy's)"),
                    expires = pair(&pairs, "se").unwrap_or("(its access policy's)"),
                    "opening the vault with a shared access signature (SAS) only; \
                     an account key, if one is set, is not used"
                );
                // The SAS alone, as a fixed credential: left to itself the builder would
                // prefer a bearer token or an account key found in the environment
                // (`from_env()` reads AZURE_STORAGE_ACCOUNT_KEY) over the SAS, and a host
                // given an append-only SAS would quietly hold full rights again.
                let sas = AzureCredential::SASToken(pairs);
                builder = builder.with_credentials(Arc::new(StaticCredentialProvider::new(sas)));
            } else if let Some(key) = &s.access_key {
                builder = builder.with_access_key(key.expose());
            }
            let store = builder
                .build()
                .map_err(|e| config(format!("Azure settings: {e}")))?;
            Ok(Built {
                store: with_prefix(store, prefix),
                endpoint,
                sas_permissions,
            })
        }
    }
}

/// The SAS's query pairs, checked enough to tell an operator who pasted the wrong thing.
/// Messages never quote the token: it is a credential.
fn sas_pairs(sas: &Secret) -> Result<Vec<(String, String)>, String> {
    let pairs = split_sas(sas.expose().trim()).map_err(|e| {
        format!("AZURE_STORAGE_SAS_TOKEN is not a SAS query string (`sv=…&sp=…&sig=…`): {e}")
    })?;
    if pair(&pairs, "sig").is_none_or(str::is_empty) {
        return Err("AZURE_STORAGE_SAS_TOKEN has no signature (`sig=`): \
                    paste the whole SAS query string"
            .into());
    }
    Ok(pairs)
}

fn pair<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn with_prefix<S: ObjectStore>(store: S, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// Our retry loop does the retrying (see `retry.rs`).
fn no_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    }
}

fn client_options(opts: &BackendOptions, endpoint: Option<&str>) -> ClientOptions {
    let plain_http = endpoint.is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
    ClientOptions::new()
        .with_timeout(opts.request_timeout)
        .with_connect_timeout(opts.connect_timeout)
        .with_allow_http(plain_http)
}
