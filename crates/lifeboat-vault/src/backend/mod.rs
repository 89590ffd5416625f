//! Storage backends: the one small interface the vault uses to keep objects in a folder,
//! an S3 bucket or an Azure Blob container, named by a [`VaultUrl`]. [`Backend`] wraps an
//! `object_store` client with what the vault needs on every backend alike: keys checked
//! before any request (relative to the vault prefix, no way out of it), one retry loop
//! with exponential backoff and jitter for transient failures (bounded in attempts and
//! time, ending in "cannot reach the storage at …"), a per-request timeout, a bound on
//! requests in flight, and typed errors that name the vault.
//!
//! Guarantees the format relies on (`docs/vault-format.md`, "Writing a point"):
//! - `put` makes the whole object visible or nothing. Folder: `object_store` writes
//!   `<key>#<n>` and renames it over the key (atomic on POSIX), so a `kill -9` leaves the
//!   old object or the new one, plus at worst a stray `#<n>` file that listings skip.
//!   With [`BackendOptions::fsync`] (default on) file and directory are fsynced before the
//!   call returns, which also covers power loss on file systems that honour fsync. S3
//!   and Azure: a single PUT is atomic on the server.
//! - `put_if_absent` is a real conditional create wherever the storage offers one: the
//!   folder (hard link, which fails if the name exists), S3 (`If-None-Match: *`; AWS since
//!   2024, MinIO, R2, s3s-fs) and Azure/Azurite (`If-None-Match: *`). Only for an S3 server
//!   configured with `AWS_CONDITIONAL_PUT=disabled`, or one answering 501, does it fall
//!   back to head-then-put — see [`Backend::put_if_absent`] for the race that leaves.
//!
//! Append-only credentials (Azure): a host may be given a container SAS with permissions
//! `rcl` (read, create, list) and nothing else ([`AzureSettings::sas_token`]), so that a
//! compromised host can add recovery points but not overwrite or delete any. The backend
//! then signs with that SAS alone, never an account key. Azure refuses such a SAS with
//! 403 both for a create of an existing blob and for an overwrite or a delete; the backend
//! keeps its contract on top: `put_if_absent` of an existing key is `Ok(false)`, an
//! overwrite or a delete is [`BackendError::Denied`] saying what the SAS allows, and none
//! of these is retried.

mod error;
mod folder;
mod key;
mod retry;
mod settings;
mod stores;
mod url;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::Semaphore;

pub use error::BackendError;
pub use key::MAX_KEY_LEN;
pub use settings::{AzureSettings, S3Settings, Secret, EMULATOR_ACCOUNT, EMULATOR_KEY};
pub use url::VaultUrl;

use error::Refused;
use retry::{Failure, RetryPolicy};

/// How a backend retries, times out and shares the storage. `Default` suits a vault on a
/// WAN: 5 attempts with 1 s, 2 s, 4 s, 8 s backoff (±50% jitter), at most 120 s in all.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Attempts per operation, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No new attempt starts once this much time has passed since the first.
    pub max_elapsed: Duration,
    /// One attempt (request and response body) is abandoned after this long. Must cover
    /// a 64 MiB pack upload on the slowest link the vault is used over.
    pub request_timeout: Duration,
    /// Time allowed to open a TCP connection (cloud backends).
    pub connect_timeout: Duration,
    /// Requests in flight at once through this backend (at least 1).
    pub max_concurrency: usize,
    /// Folder backend: fsync each written file and its directory before returning.
    pub fsync: bool,
    /// S3 credentials and endpoint; `None` reads the `AWS_*` environment variables.
    pub s3: Option<S3Settings>,
    /// Azure credentials and endpoint; `None` reads the `AZURE_STORAGE_*` variables.
    pub azure: Option<AzureSettings>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(16),
            max_elapsed: Duration::from_secs(120),
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            max_concurrency: 16,
            fsync: true,
            s3: None,
            azure: None,
        }
    }
}

/// One stored object, as a listing or `head` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key, relative to the vault prefix.
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// A vault's storage. Cheap to clone; clones share the connection pool and the
/// concurrency bound.
#[derive(Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

struct Inner {
    url: VaultUrl,
    url_text: String,
    endpoint: String,
    store: Arc<dyn ObjectStore>,
    retry: RetryPolicy,
    permits: Semaphore,
    /// Cleared when the server turns out not to support conditional puts.
    conditional_put: AtomicBool,
    /// The permission letters of the SAS the store is reached with (Azure), if any.
    sas_permissions: Option<String>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("url", &self.inner.url_text)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Opens the storage a vault URL names. A folder is created if missing; cloud
    /// backends are not contacted until the first request.
    pub async fn open(url: &VaultUrl, opts: BackendOptions) -> Result<Backend, BackendError> {
        let url_text = url.to_string();
        if opts.max_attempts == 0 || opts.max_concurrency == 0 {
            return Err(BackendError::Config {
                url: url_text,
                reason: "max_attempts and max_concurrency must be at least 1".into(),
            });
        }
        let built = stores::build(url, &opts).await?;
        let conditional_put = opts.s3.as_ref().is_none_or(|s| s.conditional_put);
        Ok(Backend {
            inner: Arc::new(Inner {
                url: url.clone(),
                url_text,
                endpoint: built.endpoint,
                store: built.store,
                retry: RetryPolicy {
                    max_attempts: opts.max_attempts,
                    initial_backoff: opts.initial_backoff,
                    max_backoff: opts.max_backoff,
                    max_elapsed: opts.max_elapsed,
                    request_timeout: opts.request_timeout,
                },
                permits: Semaphore::new(opts.max_concurrency),
                conditional_put: AtomicBool::new(conditional_put),
                sas_permissions: built.sas_permissions,
            }),
        })
    }

    pub fn url(&self) -> &VaultUrl {
        &self.inner.url
    }

    /// Stores an object, replacing any object of that key. Readers see the old object or
    /// the whole new one, never a part.
    ///
    /// A credential that may create but not overwrite (an append-only SAS) gets
    /// [`BackendError::Denied`] for an existing key, and the object is left as it was.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BackendError> {
        self.put_parts(key, vec![bytes]).await
    }

    /// `put` of an object given as consecutive parts (a pack's blobs), sent without
    /// joining them into one buffer first.
    pub async fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let payload: PutPayload = parts.into_iter().collect();
        let store = &self.inner.store;
        match self
            .run("write", key, || store.put(&path, payload.clone()))
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Permanent(e @ object_store::Error::PermissionDenied { .. })) => {
                // One 403 answers both "may not create" and "may not overwrite" (an
                // append-only SAS is refused only for keys that exist). The operator needs
                // to know which, so look.
                let refused = match self.head(key).await {
                    Ok(Some(_)) => Some(Refused::Overwrite),
                    Ok(None) => Some(Refused::Create),
                    Err(_) => None,
                };
                Err(self.denied("write", key, refused, &e))
            }
            Err(f) => Err(self.fail("write", key, f)),
        }
    }

    /// Stores an object only if no object of that key exists: `true` if this call created
    /// it, `false` if one was there (and is left as it was).
    ///
    /// If an attempt failed in transit and a retry then finds the object, the earlier
    /// attempt may have landed: the stored bytes are read back and compared, and equal
    /// bytes count as created by this call.
    ///
    /// Fallback (S3 servers without conditional puts only): head, then put. Two writers
    /// racing between the head and the put both get `true` and the later put wins. The
    /// vault's manifests are named by a random point id, so such a race needs two writers
    /// choosing the same id — the format makes it practically impossible, not impossible.
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool, BackendError> {
        let path = self.path(key)?;
        if self.inner.conditional_put.load(Ordering::Relaxed) {
            let payload = PutPayload::from(bytes.clone());
            let store = &self.inner.store;
            let mut attempts = 0u32;
            let result = self
                .run("create", key, || {
                    attempts += 1;
                    let opts = PutOptions::from(PutMode::Create);
                    store.put_opts(&path, payload.clone(), opts)
                })
                .await;
            match result {
                Ok(_) => return Ok(true),
                Err(Failure::Permanent(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                )) => return self.created_by_us(key, &bytes, attempts).await,
                Err(Failure::Permanent(e @ object_store::Error::PermissionDenied { .. })) => {
                    // A credential that may create but not overwrite (Azure SAS `c`
                    // without `w`, what an append-only host holds) is refused with 403
                    // for an existing blob: Azure checks the SAS permission against the
                    // blob before it evaluates If-None-Match, so object_store never sees
                    // the 409/412 that means "already exists". The object's presence is
                    // what tells "already there" from "may not create at all".
                    return match self.head(key).await {
                        Ok(Some(_)) => self.created_by_us(key, &bytes, attempts).await,
                        Ok(None) => Err(self.denied("create", key, Some(Refused::Create), &e)),
                        // Cannot look either: the refused create is the answer to report.
                        Err(_) => Err(self.denied("create", key, None, &e)),
                    };
                }
                Err(Failure::Permanent(e)) if conditional_put_unsupported(&e) => {
                    tracing::warn!(
                        vault = %self.inner.url_text,
                        "the storage does not support conditional puts; \
                         falling back to head-then-put (racy)"
                    );
                    self.inner.conditional_put.store(false, Ordering::Relaxed);
                }
                Err(f) => return Err(self.fail("create", key, f)),
            }
        }
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        self.put(key, bytes).await?;
        Ok(true)
    }

    /// Reads a whole object; [`BackendError::NotFound`] if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let path = self.path(key)?;
        let store = &self.inner.store;
        self.run("read", key, || async {
            store.get(&path).await?.bytes().await
        })
        .await
        .map(|(b, _)| b)
        .map_err(|f| self.fail("read", key, f))
    }

    /// Reads `range` of an object. A range reaching past the end is an error
    /// ([`BackendError::BadRange`] naming the object's size), never a short read.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let path = self.path(key)?;
        let bad_range = |reason: String| BackendError::BadRange {
            url: self.inner.url_text.clone(),
            key: key.to_owned(),
            start: range.start,
            end: range.end,
            reason,
        };
        if range.start > range.end {
            return Err(bad_range("the start is after the end".into()));
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let store = &self.inner.store;
        let result = self
            .run("read", key, || store.get_range(&path, range.clone()))
            .await;
        let failure = match result {
            Ok((bytes, _)) if bytes.len() as u64 == range.end - range.start => return Ok(bytes),
            Ok((bytes, _)) => Failure::Permanent(object_store::Error::Generic {
                store: "vault",
                source: format!("the storage returned {} bytes", bytes.len()).into(),
            }),
            Err(f) => f,
        };
        if let Failure::Permanent(ref e) = failure {
            if !matches!(e, object_store::Error::NotFound { .. }) {
                // Most likely the range is past the end; say so with the real size.
                if let Some(info) = self.head(key).await? {
                    if range.end > info.size {
                        return Err(bad_range(format!(
                            "the object is only {} bytes long",
                            info.size
                        )));
                    }
                }
            }
        }
        Err(self.fail("read", key, failure))
    }

    /// Size and time of an object, or `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, BackendError> {
        let path = self.path(key)?;
        let store = &self.inner.store;
        match self.run("inspect", key, || store.head(&path)).await {
            Ok((meta, _)) => Ok(Some(object_info(meta))),
            Err(Failure::Permanent(object_store::Error::NotFound { .. })) => Ok(None),
            Err(f) => Err(self.fail("inspect", key, f)),
        }
    }

    /// Every object whose key starts with `prefix` (plain string prefix, like S3:
    /// `packs/a` finds `packs/ab/…`; `""` lists the whole vault), in no particular order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        key::check_prefix(prefix).map_err(|reason| self.bad_key(prefix, reason))?;
        // object_store lists whole path segments: list the deepest folder the prefix
        // names, then keep what matches the rest of it.
        let folder = prefix.rfind('/').map(|i| Path::from(&prefix[..i]));
        let store = &self.inner.store;
        let (metas, _) = self
            .run("list", prefix, || {
                store.list(folder.as_ref()).try_collect::<Vec<_>>()
            })
            .await
            .map_err(|f| self.fail("list", prefix, f))?;
        Ok(metas
            .into_iter()
            .map(object_info)
            .filter(|info| info.key.starts_with(prefix))
            .collect())
    }

    /// Removes an object. Removing an object that does not exist succeeds. A credential
    /// that may not delete (an append-only SAS) gets [`BackendError::Denied`], also for a
    /// key that does not exist: Azure checks the permission first.
    pub async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let store = &self.inner.store;
        match self.run("delete", key, || store.delete(&path)).await {
            Ok(_) | Err(Failure::Permanent(object_store::Error::NotFound { .. })) => Ok(()),
            Err(f) => Err(self.fail("delete", key, f)),
        }
    }

    /// The object a refused conditional create found: `true` if it holds our bytes and
    /// an earlier attempt of this call (one that failed in transit) may have written it.
    async fn created_by_us(
        &self,
        key: &str,
        bytes: &Bytes,
        attempts: u32,
    ) -> Result<bool, BackendError> {
        if attempts > 1 {
            let stored = self.get(key).await?;
            return Ok(stored == *bytes);
        }
        Ok(false)
    }

    async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<(T, u32), Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        tracing::trace!(op, key, vault = %self.inner.url_text, "storage request");
        self.inner.retry.run(&self.inner.permits, f).await
    }

    fn path(&self, key: &str) -> Result<Path, BackendError> {
        key::check(key).map_err(|reason| self.bad_key(key, reason))?;
        Path::parse(key).map_err(|_| self.bad_key(key, "not a valid object path"))
    }

    fn bad_key(&self, key: &str, reason: &'static str) -> BackendError {
        BackendError::BadKey {
            url: self.inner.url_text.clone(),
            key: key.chars().take(MAX_KEY_LEN).collect(),
            reason,
        }
    }

    fn fail(&self, op: &'static str, key: &str, failure: Failure) -> BackendError {
        let url = self.inner.url_text.clone();
        let key = key.to_owned();
        match failure {
            Failure::Exhausted {
                attempts,
                elapsed,
                cause,
            } => BackendError::Unreachable {
                url,
                endpoint: self.inner.endpoint.clone(),
                attempts,
                elapsed,
                cause,
            },
            Failure::Permanent(object_store::Error::NotFound { .. }) => {
                BackendError::NotFound { url, key }
            }
            Failure::Permanent(e) if error::is_refusal(&e) => {
                // object_store deletes through Blob Batch on Azure, and a sub-request
                // refused there comes back as a generic error, not PermissionDenied.
                let refused = (op == "delete").then_some(Refused::Delete);
                self.denied(op, &key, refused, &e)
            }
            Failure::Permanent(e) => BackendError::Storage {
                url,
                op,
                key,
                cause: short(&e),
            },
        }
    }

    /// A refusal (HTTP 401/403), saying what this credential may not do when that is
    /// known, and which SAS the vault was opened with.
    fn denied(
        &self,
        op: &'static str,
        key: &str,
        refused: Option<Refused>,
        e: &object_store::Error,
    ) -> BackendError {
        BackendError::Denied {
            url: self.inner.url_text.clone(),
            op,
            key: key.to_owned(),
            cause: error::refusal_cause(refused, self.inner.sas_permissions.as_deref(), &short(e)),
        }
    }
}

/// S3 says "not implemented" in two ways: object_store refuses `PutMode::Create` when
/// conditional puts are disabled, and a server may answer 501.
fn conditional_put_unsupported(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::NotImplemented { .. } => true,
        object_store::Error::Generic { .. } => e.to_string().contains("status code: 501"),
        _ => false,
    }
}

fn object_info(meta: object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: meta.location.to_string(),
        size: meta.size,
        last_modified: meta.last_modified,
    }
}

/// An object_store error in one readable line of bounded length (S3 error bodies are XML).
fn short(e: &object_store::Error) -> String {
    const MAX: usize = 400;
    let text = e.to_string().replace(['\n', '\r'], " ");
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
