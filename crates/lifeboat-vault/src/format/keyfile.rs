//! Key files (vault-format.md, "Keys"): the master key exported as JSON, to unlock a vault
//! without a passphrase (automation) or to add a passphrase after every other is lost; or
//! one name's scope key (format 2), which opens the points of that name only — what a host
//! is given. Whoever holds a key file can read what it opens, so it is never printed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::config::{check_versions, VaultConfig};
use super::error::{FormatError, Result};
use super::ids::{Name, VaultId};
use super::keys::{MasterKey, ScopeKey};

/// Version 1 holds a master key, version 2 a scope key.
pub const KEY_FILE_VERSION: u64 = 2;
pub const MAX_KEY_FILE_LEN: usize = 4 << 10;

/// An exported key: the master key, or the scope key of one name.
pub struct KeyFile {
    pub vault_id: VaultId,
    pub key: VaultKey,
}

/// What a key file (or an unlocked vault) holds.
#[derive(Clone, PartialEq, Eq)]
pub enum VaultKey {
    /// Every name's points, and the vault's key slots.
    Master(MasterKey),
    /// The points of `name` only (format-2 vaults).
    Scope { name: Name, key: ScopeKey },
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultKey::Master(_) => f.write_str("master key <secret>"),
            VaultKey::Scope { name, .. } => write!(f, "scope key of {name} <secret>"),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    lifeboat_vault_key: u64,
    vault_id: VaultId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    master_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope_key: Option<String>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyFile {{ vault_id: {}, {:?} }}",
            self.vault_id, self.key
        )
    }
}

impl KeyFile {
    /// A key file of the master key for `config`'s vault; refuses a key that is not this
    /// vault's.
    pub fn new(config: &VaultConfig, master_key: MasterKey) -> Result<Self> {
        config.check_key(&master_key)?;
        Ok(KeyFile {
            vault_id: config.vault_id,
            key: VaultKey::Master(master_key),
        })
    }

    /// A key file that opens the points of `name` only. Refuses a format-1 vault, where
    /// every name shares the master key's sub-keys.
    pub fn scope(config: &VaultConfig, master_key: &MasterKey, name: &Name) -> Result<Self> {
        config.check_key(master_key)?;
        if !config.scoped() {
            return Err(FormatError::Invalid {
                what: "a key for one VM",
                value: format!("vault {} (format {})", config.vault_id, config.version),
                rule: "only a format-2 vault has a key per VM; \
                       in a format-1 vault every host holds the master key",
            });
        }
        Ok(KeyFile {
            vault_id: config.vault_id,
            key: VaultKey::Scope {
                name: name.clone(),
                key: master_key.scope_key(name),
            },
        })
    }

    /// The key file's bytes. The caller writes them with mode 0600.
    pub fn encode(&self) -> Vec<u8> {
        let mut json = match &self.key {
            VaultKey::Master(k) => KeyFileJson {
                lifeboat_vault_key: 1,
                vault_id: self.vault_id,
                master_key: Some(B64.encode(k.expose())),
                scope: None,
                scope_key: None,
            },
            VaultKey::Scope { name, key } => KeyFileJson {
                lifeboat_vault_key: 2,
                vault_id: self.vault_id,
                master_key: None,
                scope: Some(name.clone()),
                scope_key: Some(B64.encode(key.expose())),
            },
        };
        let mut out = serde_json::to_vec_pretty(&json).unwrap_or_default();
        out.push(b'\n');
        json.master_key.zeroize();
        json.scope_key.zeroize();
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let object = "key file";
        if bytes.len() > MAX_KEY_FILE_LEN {
            return Err(FormatError::damaged(
                object,
                format!("{} bytes is over 4 KiB", bytes.len()),
            ));
        }
        let version = check_versions(
            bytes,
            "lifeboat_vault_key",
            1..=KEY_FILE_VERSION,
            object,
            "key file",
        )?;
        let mut json: KeyFileJson = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::damaged(object, format!("bad key file: {e}")))?;
        let key = match (
            version,
            json.master_key.take(),
            json.scope.take(),
            json.scope_key.take(),
        ) {
            (1, Some(mut text), None, None) => {
                let key = key_bytes(&text);
                text.zeroize();
                VaultKey::Master(MasterKey::from_bytes(key.ok_or_else(|| {
                    FormatError::damaged(object, "master_key is not 32 bytes of base64")
                })?))
            }
            (2, None, Some(name), Some(mut text)) => {
                let key = key_bytes(&text);
                text.zeroize();
                VaultKey::Scope {
                    name,
                    key: ScopeKey::from_bytes(key.ok_or_else(|| {
                        FormatError::damaged(object, "scope_key is not 32 bytes of base64")
                    })?),
                }
            }
            (_, mut master, _, mut scope_key) => {
                master.zeroize();
                scope_key.zeroize();
                return Err(FormatError::damaged(
                    object,
                    "a key file holds either `master_key` (version 1) or `scope` and \
                     `scope_key` (version 2)",
                ));
            }
        };
        Ok(KeyFile {
            vault_id: json.vault_id,
            key,
        })
    }

    /// The key, once proven to be for `config`'s vault: a master key by the vault's key
    /// check. A scope key cannot be checked against `config` (it holds no check per name):
    /// a wrong one shows as points that do not open.
    pub fn unlock(&self, config: &VaultConfig) -> Result<VaultKey> {
        if self.vault_id != config.vault_id {
            return Err(FormatError::KeyFileForOtherVault {
                vault_id: config.vault_id.to_string(),
                key_file_vault: self.vault_id.to_string(),
            });
        }
        match &self.key {
            VaultKey::Master(k) => config.check_key(k)?,
            VaultKey::Scope { .. } if !config.scoped() => {
                return Err(FormatError::Invalid {
                    what: "a key for one VM",
                    value: format!("vault {} (format {})", config.vault_id, config.version),
                    rule: "a format-1 vault has no key per VM; use its master key",
                })
            }
            VaultKey::Scope { .. } => {}
        }
        Ok(self.key.clone())
    }
}

/// 32 bytes of base64, or nothing.
fn key_bytes(text: &str) -> Option<[u8; 32]> {
    let mut raw = B64.decode(text.as_bytes()).unwrap_or_default();
    let key = <[u8; 32]>::try_from(raw.as_slice()).ok();
    raw.zeroize();
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::config::{KdfParams, DEFAULT_CHUNK_SIZE};

    const FAST: KdfParams = KdfParams::INSECURE_FAST;

    #[test]
    fn key_files_round_trip_and_refuse_other_vaults() {
        let (c, key) = VaultConfig::create("p", DEFAULT_CHUNK_SIZE, FAST).unwrap();
        let kf = KeyFile::new(&c, key.clone()).unwrap();
        let text = kf.encode();
        let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(json["lifeboat_vault_key"], 1);
        assert_eq!(json["vault_id"], c.vault_id.to_string());
        assert!(!format!("{kf:?}").contains(json["master_key"].as_str().unwrap()));
        assert_eq!(
            KeyFile::decode(&text).unwrap().unlock(&c).unwrap(),
            VaultKey::Master(key.clone())
        );

        let (other, other_key) = VaultConfig::create("p", DEFAULT_CHUNK_SIZE, FAST).unwrap();
        assert!(KeyFile::new(&c, other_key.clone()).is_err());
        assert!(matches!(
            KeyFile::decode(&text).unwrap().unlock(&other),
            Err(FormatError::KeyFileForOtherVault { .. })
        ));
        // Right vault id, wrong key: the key check tells it apart from damage.
        let forged = KeyFile {
            vault_id: c.vault_id,
            key: VaultKey::Master(other_key),
        };
        let e = KeyFile::decode(&forged.encode())
            .unwrap()
            .unlock(&c)
            .unwrap_err();
        assert!(matches!(e, FormatError::WrongKey { .. }), "{e}");

        let newer = String::from_utf8(text.clone())
            .unwrap()
            .replace("\"lifeboat_vault_key\": 1", "\"lifeboat_vault_key\": 7");
        assert!(matches!(
            KeyFile::decode(newer.as_bytes()),
            Err(FormatError::NewerFormat { .. })
        ));
        let short = String::from_utf8(text)
            .unwrap()
            .replace(json["master_key"].as_str().unwrap(), "AAAA");
        assert!(KeyFile::decode(short.as_bytes()).is_err());
        assert!(KeyFile::decode(&[b' '; MAX_KEY_FILE_LEN + 1]).is_err());
    }

    #[test]
    fn scope_key_files_hold_one_name_and_never_the_master_key() {
        let (c, key) = VaultConfig::create("p", DEFAULT_CHUNK_SIZE, FAST).unwrap();
        let web: Name = "web1".parse().unwrap();
        let kf = KeyFile::scope(&c, &key, &web).unwrap();
        let text = kf.encode();
        let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(json["lifeboat_vault_key"], 2);
        assert_eq!(json["scope"], "web1");
        assert!(json.get("master_key").is_none());
        let master_b64 = B64.encode(key.expose());
        assert!(!String::from_utf8_lossy(&text).contains(&master_b64));
        assert_eq!(
            KeyFile::decode(&text).unwrap().unlock(&c).unwrap(),
            VaultKey::Scope {
                name: web.clone(),
                key: key.scope_key(&web)
            }
        );
        // Both keys in one file, or a scope without its key, is not a key file.
        let both = String::from_utf8(text.clone()).unwrap().replacen(
            "\"scope\"",
            &format!("\"master_key\": \"{master_b64}\",\n  \"scope\""),
            1,
        );
        assert!(KeyFile::decode(both.as_bytes()).is_err(), "{both}");
        // A format-1 vault has no scope keys to give.
        let (v1, v1_key) = VaultConfig::create_version("p", DEFAULT_CHUNK_SIZE, FAST, 1).unwrap();
        assert!(KeyFile::scope(&v1, &v1_key, &web).is_err());
        let mut foreign = KeyFile::decode(&text).unwrap();
        foreign.vault_id = v1.vault_id;
        assert!(foreign.unlock(&v1).is_err());
    }
}
