//! An open vault: its storage, its settings and its keys. Everything else (writing,
//! reading, maintenance) starts from a `Vault`.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::Backend;
use crate::format::{
    self, manifest_key, manifest_prefix, parse_manifest_key, KdfParams, KeyFile, Manifest,
    MasterKey, Name, PointId, VaultConfig, VaultKey, VaultKeys, CONFIG_KEY,
};
use crate::store::error::{Result, VaultError};
use crate::store::keyring::KeyRing;

/// How to get the key: the master key from a passphrase, or whatever a key file holds
/// (the master key, or one VM's scope key).
pub enum Unlock {
    Passphrase(String),
    KeyFile(KeyFile),
}

#[derive(Clone)]
pub struct Vault {
    pub(crate) backend: Backend,
    pub(crate) config: Arc<VaultConfig>,
    pub(crate) keys: Arc<KeyRing>,
}

/// One recovery point as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PointRef {
    pub name: Name,
    pub point: PointId,
}

impl Vault {
    /// Creates a vault at `backend`'s URL. Refuses if one exists there already.
    /// The vault gets the current format (a key per VM).
    pub async fn init(
        backend: Backend,
        passphrase: &str,
        chunk_size: u32,
        kdf: KdfParams,
    ) -> Result<(Vault, MasterKey)> {
        Self::init_with(backend, passphrase, chunk_size, None, kdf).await
    }

    /// `init` with a pack size other than the default (smaller packs: more, smaller
    /// uploads; used by tests to get many packs from small images).
    pub async fn init_with(
        backend: Backend,
        passphrase: &str,
        chunk_size: u32,
        pack_target: Option<u32>,
        kdf: KdfParams,
    ) -> Result<(Vault, MasterKey)> {
        let version = format::config::CONFIG_VERSION;
        Self::init_version(backend, passphrase, chunk_size, pack_target, kdf, version).await
    }

    /// `init_with` in vault format `version` (1: one key shared by every VM, so a point
    /// of one VM may build on another VM's; 2: a key per VM).
    pub async fn init_version(
        backend: Backend,
        passphrase: &str,
        chunk_size: u32,
        pack_target: Option<u32>,
        kdf: KdfParams,
        version: u64,
    ) -> Result<(Vault, MasterKey)> {
        let (mut config, master) =
            VaultConfig::create_version(passphrase, chunk_size, kdf, version)?;
        if let Some(target) = pack_target {
            if !format::config::PACK_TARGET_RANGE.contains(&target) {
                return Err(VaultError::Usage(format!(
                    "pack size {target} is outside {:?}",
                    format::config::PACK_TARGET_RANGE
                )));
            }
            config.pack_target = target;
        }
        let bytes = Bytes::from(config.encode()?);
        if !backend.put_if_absent(CONFIG_KEY, bytes).await? {
            return Err(VaultError::AlreadyExists {
                url: backend.url().to_string(),
            });
        }
        let keys = KeyRing::new(VaultKey::Master(master.clone()), config.scoped());
        Ok((
            Vault {
                backend,
                config: Arc::new(config),
                keys: Arc::new(keys),
            },
            master,
        ))
    }

    pub async fn read_config(backend: &Backend) -> Result<VaultConfig> {
        let bytes = match backend.get(CONFIG_KEY).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Err(VaultError::NotAVault {
                    url: backend.url().to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        Ok(VaultConfig::decode(&bytes)?)
    }

    pub async fn open(backend: Backend, unlock: Unlock) -> Result<Vault> {
        let config = Self::read_config(&backend).await?;
        let key = match unlock {
            Unlock::Passphrase(p) => {
                // Argon2 is deliberately slow: keep it off the async threads.
                let config = config.clone();
                VaultKey::Master(
                    tokio::task::spawn_blocking(move || config.unlock(&p))
                        .await
                        .map_err(|e| VaultError::Usage(format!("unlocking: {e}")))??,
                )
            }
            Unlock::KeyFile(k) => k.unlock(&config)?,
        };
        Ok(Vault {
            keys: Arc::new(KeyRing::new(key, config.scoped())),
            backend,
            config: Arc::new(config),
        })
    }

    /// Opens the vault without a key: for the control plane, which lists points and
    /// leases, prunes by the time in point ids and removes expired leases, but can read
    /// no point (`VaultError::NoKey`).
    pub async fn open_keyless(backend: Backend) -> Result<Vault> {
        let config = Self::read_config(&backend).await?;
        Ok(Vault {
            keys: Arc::new(KeyRing::Keyless),
            backend,
            config: Arc::new(config),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }
    /// The sub-keys of `name`'s points; an error when this handle's key does not open
    /// them (another VM's scope key, or no key).
    pub fn keys_for(&self, name: &Name) -> Result<Arc<VaultKeys>> {
        self.keys.for_name(name, &self.url())
    }

    /// The master key, when the vault was opened with it (not with one VM's key).
    pub fn master_key(&self) -> Option<&MasterKey> {
        self.keys.master()
    }

    /// The one name this handle's scope key opens, if it was opened with one.
    pub fn scope(&self) -> Option<&Name> {
        self.keys.scope()
    }
    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }
    pub fn url(&self) -> String {
        self.backend.url().to_string()
    }

    /// Every point, or the points of one name, oldest first.
    pub async fn list_points(&self, name: Option<&Name>) -> Result<Vec<PointRef>> {
        let prefix = match name {
            Some(n) => manifest_prefix(n),
            None => "points/".to_string(),
        };
        let mut out: Vec<PointRef> = self
            .backend
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| parse_manifest_key(&o.key))
            .map(|(name, point)| PointRef { name, point })
            .collect();
        out.sort_by(|a, b| a.point.cmp(&b.point).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// The point with this id: of the name this handle's scope key opens when it holds
    /// one (anyone with create rights can put an object of the same id under another
    /// name, which must not be picked instead), else of whatever name.
    pub async fn find_point(&self, point: &PointId) -> Result<PointRef> {
        self.list_points(self.scope())
            .await?
            .into_iter()
            .find(|p| &p.point == point)
            .ok_or_else(|| VaultError::UnknownPoint {
                url: self.url(),
                name: None,
                point: *point,
            })
    }

    /// The newest point of `name`, if any.
    pub async fn latest_point(&self, name: &Name) -> Result<Option<PointRef>> {
        Ok(self.list_points(Some(name)).await?.pop())
    }

    /// Deletes a point's manifest: the point is gone; its data goes at the next `gc`.
    /// Deleting a point that is already gone is not an error.
    pub async fn delete_point(&self, point: &PointRef) -> Result<()> {
        Ok(self
            .backend
            .delete(&manifest_key(&point.name, &point.point))
            .await?)
    }

    pub async fn manifest(&self, point: &PointRef) -> Result<Manifest> {
        let key = manifest_key(&point.name, &point.point);
        let bytes = match self.backend.get(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Err(VaultError::UnknownPoint {
                    url: self.url(),
                    name: Some(point.name.clone()),
                    point: point.point,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let keys = self.keys_for(&point.name)?;
        Ok(format::open_manifest(
            &keys,
            &point.name,
            &point.point,
            &bytes,
        )?)
    }

    /// Rewrites `config` (after a key slot change). The master key and data are untouched.
    pub async fn save_config(&mut self, config: VaultConfig) -> Result<()> {
        self.backend
            .put(CONFIG_KEY, Bytes::from(config.encode()?))
            .await?;
        self.config = Arc::new(config);
        Ok(())
    }
}
