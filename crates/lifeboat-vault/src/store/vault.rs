//! An open vault: its storage, its settings and its keys. Everything else (writing,
//! reading, maintenance) starts from a `Vault`.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::Backend;
use crate::format::{
    self, manifest_key, manifest_prefix, parse_manifest_key, KdfParams, KeyFile, Manifest,
    MasterKey, Name, PointId, VaultConfig, VaultKeys, CONFIG_KEY,
};
use crate::store::error::{Result, VaultError};

/// How to get the master key.
pub enum Unlock {
    Passphrase(String),
    KeyFile(KeyFile),
}

#[derive(Clone)]
pub struct Vault {
    pub(crate) backend: Backend,
    pub(crate) config: Arc<VaultConfig>,
    pub(crate) keys: Arc<VaultKeys>,
}

/// One recovery point as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PointRef {
    pub name: Name,
    pub point: PointId,
}

impl Vault {
    /// Creates a vault at `backend`'s URL. Refuses if one exists there already.
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
        let (mut config, master) = VaultConfig::create(passphrase, chunk_size, kdf)?;
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
        let keys = VaultKeys::derive(&master);
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
        let master = match unlock {
            Unlock::Passphrase(p) => {
                // Argon2 is deliberately slow: keep it off the async threads.
                let config = config.clone();
                tokio::task::spawn_blocking(move || config.unlock(&p))
                    .await
                    .map_err(|e| VaultError::Usage(format!("unlocking: {e}")))??
            }
            Unlock::KeyFile(k) => {
                config.check_key(&k.master_key)?;
                k.master_key
            }
        };
        Ok(Vault {
            keys: Arc::new(VaultKeys::derive(&master)),
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
    pub fn keys(&self) -> &VaultKeys {
        &self.keys
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

    /// The point with this id, whatever its name.
    pub async fn find_point(&self, point: &PointId) -> Result<PointRef> {
        self.list_points(None)
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
        Ok(format::open_manifest(
            &self.keys,
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
