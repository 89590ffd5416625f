//! Key files (vault-format.md, "Keys"): the master key exported as JSON, to unlock a vault
//! without a passphrase (automation) or to add a passphrase after every other is lost.
//! Whoever holds one can read every point, so it is never printed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::config::{check_version, VaultConfig};
use super::error::{FormatError, Result};
use super::ids::VaultId;
use super::keys::MasterKey;

pub const KEY_FILE_VERSION: u64 = 1;
pub const MAX_KEY_FILE_LEN: usize = 4 << 10;

/// An exported master key: unlocks the vault without a passphrase.
pub struct KeyFile {
    pub vault_id: VaultId,
    pub master_key: MasterKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    lifeboat_vault_key: u64,
    vault_id: VaultId,
    master_key: String,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyFile {{ vault_id: {}, master_key: <secret> }}",
            self.vault_id
        )
    }
}

impl KeyFile {
    /// A key file for `config`'s vault; refuses a key that is not this vault's.
    pub fn new(config: &VaultConfig, master_key: MasterKey) -> Result<Self> {
        config.check_key(&master_key)?;
        Ok(KeyFile {
            vault_id: config.vault_id,
            master_key,
        })
    }

    /// The key file's bytes. The caller writes them with mode 0600.
    pub fn encode(&self) -> Vec<u8> {
        let mut json = KeyFileJson {
            lifeboat_vault_key: KEY_FILE_VERSION,
            vault_id: self.vault_id,
            master_key: B64.encode(self.master_key.expose()),
        };
        let mut out = serde_json::to_vec_pretty(&json).unwrap_or_default();
        out.push(b'\n');
        json.master_key.zeroize();
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
        check_version(
            bytes,
            "lifeboat_vault_key",
            KEY_FILE_VERSION,
            object,
            "key file",
        )?;
        let mut json: KeyFileJson = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::damaged(object, format!("bad key file: {e}")))?;
        let mut raw = B64.decode(json.master_key.as_bytes()).unwrap_or_default();
        json.master_key.zeroize();
        let key = <[u8; 32]>::try_from(raw.as_slice()).map(MasterKey::from_bytes);
        raw.zeroize();
        let master_key =
            key.map_err(|_| FormatError::damaged(object, "master_key is not 32 bytes of base64"))?;
        Ok(KeyFile {
            vault_id: json.vault_id,
            master_key,
        })
    }

    /// The master key, once proven to be `config`'s.
    pub fn unlock(&self, config: &VaultConfig) -> Result<MasterKey> {
        if self.vault_id != config.vault_id {
            return Err(FormatError::KeyFileForOtherVault {
                vault_id: config.vault_id.to_string(),
                key_file_vault: self.vault_id.to_string(),
            });
        }
        config.check_key(&self.master_key)?;
        Ok(self.master_key.clone())
    }
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
        assert_eq!(KeyFile::decode(&text).unwrap().unlock(&c).unwrap(), key);

        let (other, other_key) = VaultConfig::create("p", DEFAULT_CHUNK_SIZE, FAST).unwrap();
        assert!(KeyFile::new(&c, other_key.clone()).is_err());
        assert!(matches!(
            KeyFile::decode(&text).unwrap().unlock(&other),
            Err(FormatError::KeyFileForOtherVault { .. })
        ));
        // Right vault id, wrong key: the key check tells it apart from damage.
        let forged = KeyFile {
            vault_id: c.vault_id,
            master_key: other_key,
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
}
