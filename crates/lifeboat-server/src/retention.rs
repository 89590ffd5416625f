//! Retention by the control plane (docs/security.md, "Append-only agents"). Agents only
//! add points; the server deletes the points a policy no longer keeps, and all of a VM's
//! points when its protection is removed with `delete_points`. It holds no vault key: it
//! opens the vault without one, with its own storage credentials (which may delete, unlike
//! the agents'), and decides from the time in each point id, never reading a manifest.
//! It also removes lease objects that ended or died, which agents cannot delete.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use chrono::Utc;
use lifeboat_agent::sync::Retention;
use lifeboat_vault::backend::{Backend, BackendOptions, VaultUrl};
use lifeboat_vault::format::Name;
use lifeboat_vault::store::lease::stale_lease_objects;
use lifeboat_vault::store::{execute_prune, plan_prune_of};
use lifeboat_vault::{Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("vault URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("point name {name}: {reason}")]
    BadName { name: String, reason: String },
    #[error("the server cannot reach vault {url} with its own storage credentials (it prunes old points there; agents only add): {source}")]
    Open {
        url: String,
        #[source]
        source: VaultError,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Opened vaults by URL: a cloud backend keeps its connections between prunes.
fn opened() -> &'static Mutex<HashMap<String, Vault>> {
    static OPENED: OnceLock<Mutex<HashMap<String, Vault>>> = OnceLock::new();
    OPENED.get_or_init(Default::default)
}

/// The vault at `url`, opened without a key.
async fn keyless(url: &str) -> Result<Vault, RetentionError> {
    if let Some(v) = opened().lock().unwrap_or_else(|e| e.into_inner()).get(url) {
        return Ok(v.clone());
    }
    let parsed = VaultUrl::parse(url).map_err(|e| RetentionError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let open = |source: VaultError| RetentionError::Open {
        url: url.to_string(),
        source,
    };
    let backend = Backend::open(&parsed, BackendOptions::default())
        .await
        .map_err(|e| open(e.into()))?;
    let vault = Vault::open_keyless(backend).await.map_err(open)?;
    opened()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(url.to_string(), vault.clone());
    Ok(vault)
}

fn name(point_name: &str) -> Result<Name, RetentionError> {
    point_name.parse().map_err(
        |e: lifeboat_vault::format::FormatError| RetentionError::BadName {
            name: point_name.to_string(),
            reason: e.to_string(),
        },
    )
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Points deleted by the policy.
    pub deleted: usize,
    /// The points of the name left, oldest first.
    pub points: Vec<String>,
}

/// Deletes the points of `point_name` that `retention` no longer keeps (never the newest,
/// nor the parent of a writer at work), and lease objects of writers long gone. Only the
/// points in `reported` (those the VM's syncs reported to the server) are planned: any
/// other point under the name — one created by another host with create rights, or one
/// the server never heard of — is neither deleted nor allowed to take a real point's place.
pub async fn prune(
    vault_url: &str,
    point_name: &str,
    retention: Retention,
    reported: &[String],
) -> Result<Pruned, RetentionError> {
    let vault = keyless(vault_url).await?;
    let name = name(point_name)?;
    let policy = retention.policy();
    // One listing: what the plan sees, and (less what it deletes) what is left.
    let listed = vault.list_points(Some(&name)).await?;
    let mut deleted = Vec::new();
    if !policy.is_empty() {
        let reported: std::collections::HashSet<&str> =
            reported.iter().map(String::as_str).collect();
        let planned = listed
            .iter()
            .filter(|p| reported.contains(p.point.to_string().as_str()))
            .cloned()
            .collect();
        let names = std::slice::from_ref(&name);
        let plan = plan_prune_of(&vault, &policy, names, planned, Utc::now()).await?;
        deleted = execute_prune(&vault, &plan).await?.deleted;
    }
    remove_stale_leases(&vault).await;
    measure_size(&vault).await;
    let points = listed
        .into_iter()
        .filter(|p| !deleted.contains(p))
        .map(|p| p.point.to_string())
        .collect();
    Ok(Pruned {
        deleted: deleted.len(),
        points,
    })
}

/// Deletes every point of `point_name` (protection removed with `delete_points`); their
/// data goes at the next `vault gc`.
pub async fn delete_all(vault_url: &str, point_name: &str) -> Result<u64, RetentionError> {
    let vault = keyless(vault_url).await?;
    let name = name(point_name)?;
    let mut n = 0;
    for p in vault.list_points(Some(&name)).await? {
        vault.delete_point(&p).await?;
        n += 1;
    }
    Ok(n)
}

/// Lease objects are created by agents and never deleted by them: a failure here only
/// leaves a few small objects for the next pass.
async fn remove_stale_leases(vault: &Vault) {
    let stale = match stale_lease_objects(vault, Utc::now()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(vault = %vault.url(), error = %e, "listing old lease objects");
            return;
        }
    };
    for o in stale {
        if let Err(e) = vault.backend().delete(&o.key).await {
            tracing::warn!(vault = %vault.url(), key = %o.key, error = %e, "removing an old lease object");
            return;
        }
    }
}

/// How often a vault's size is measured: a listing of every object, which on S3 or Azure
/// is a request per thousand objects.
const SIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// What a vault holds: every object, packs of deleted points not yet collected by
/// `vault gc` included (what its storage bills).
#[derive(Clone, Debug)]
pub struct VaultSize {
    /// The vault's URL, without credentials.
    pub url: String,
    pub bytes: u64,
    pub objects: u64,
    measured: std::time::Instant,
}

fn sizes() -> &'static Mutex<HashMap<String, VaultSize>> {
    static SIZES: OnceLock<Mutex<HashMap<String, VaultSize>>> = OnceLock::new();
    SIZES.get_or_init(Default::default)
}

/// The size of every vault measured since the server started (`/metrics`).
pub fn vault_sizes() -> Vec<VaultSize> {
    let mut all: Vec<VaultSize> = sizes()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    all.sort_by(|a, b| a.url.cmp(&b.url));
    all
}

/// Measures `vault`'s size unless it was measured within [`SIZE_EVERY`]. A failure keeps
/// the last measure: a size is only ever what was really listed.
async fn measure_size(vault: &Vault) {
    let url = vault.url();
    let fresh = sizes()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&url)
        .is_some_and(|s| s.measured.elapsed() < SIZE_EVERY);
    if fresh {
        return;
    }
    match vault.backend().list("").await {
        Ok(objects) => {
            let size = VaultSize {
                url: url.clone(),
                bytes: objects.iter().map(|o| o.size).sum(),
                objects: objects.len() as u64,
                measured: std::time::Instant::now(),
            };
            sizes()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(url, size);
        }
        Err(e) => tracing::warn!(vault = %url, error = %e, "measuring the vault's size"),
    }
}
