//! The `config` object and key files (vault-format.md, "Keys"). `config` is plaintext JSON:
//! settings, a key check, and up to 16 key slots, each the master key wrapped under a
//! passphrase. Changing a passphrase rewrites only this object, never data.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::aead::Cipher;
use super::error::{FormatError, Result};
use super::ids::{VaultId, CONFIG_KEY};
use super::keys::{MasterKey, VaultKeys};
use super::manifest::check_chunk_size;

/// The format new vaults get: 2, a key per name (scope). Format 1 (one set of keys for
/// every name) is still read and written, and made on request (`vault init --shared-key`).
pub const CONFIG_VERSION: u64 = 2;
/// The oldest format this version reads.
pub const OLDEST_CONFIG_VERSION: u64 = 1;
pub const MAX_CONFIG_LEN: usize = 64 << 10;
pub const MAX_KEY_SLOTS: usize = 16;
pub const DEFAULT_CHUNK_SIZE: u32 = 128 << 10;
pub const DEFAULT_PACK_TARGET: u32 = 16 << 20;
/// `pack_target` bounds: a full pack plus its last blob and largest trailer stays < 64 MiB.
pub const PACK_TARGET_RANGE: std::ops::RangeInclusive<u32> = (1 << 20)..=(32 << 20);
const WRAPPED_LEN: usize = 12 + 32 + 16;
const KDF_NAME: &str = "argon2id";

/// Argon2id cost parameters, stored in each slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane: the production default.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 << 10,
        t: 3,
        p: 1,
    };
    /// The cheapest parameters a reader accepts. For tests only: it makes guessing cheap.
    pub const INSECURE_FAST: KdfParams = KdfParams {
        m_kib: 8,
        t: 1,
        p: 1,
    };

    /// Bounds a reader enforces, so a hostile `config` cannot make unlock use 4 TiB of
    /// memory or run for days.
    fn check(&self) -> bool {
        (8..=(1 << 20)).contains(&self.m_kib)
            && (1..=16).contains(&self.t)
            && (1..=16).contains(&self.p)
            && self.m_kib >= 8 * self.p
    }

    pub(super) fn kek(&self, passphrase: &str, salt: &[u8; 16]) -> Result<[u8; 32]> {
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| FormatError::Kdf(e.to_string()))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut kek = [0u8; 32];
        a.hash_password_into(passphrase.as_bytes(), salt, &mut kek)
            .map_err(|e| FormatError::Kdf(e.to_string()))?;
        Ok(kek)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One passphrase's copy of the master key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySlot {
    pub kdf: String,
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    /// `nonce (12) | AES-256-GCM(KEK, master key) | tag (16)`, AAD = vault id.
    #[serde(with = "b64")]
    pub wrapped: Vec<u8>,
}

impl KeySlot {
    fn params(&self) -> KdfParams {
        KdfParams {
            m_kib: self.m_kib,
            t: self.t,
            p: self.p,
        }
    }

    fn wrap(
        vault_id: &VaultId,
        master: &MasterKey,
        passphrase: &str,
        params: KdfParams,
    ) -> Result<Self> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut salt).map_err(FormatError::Random)?;
        getrandom::fill(&mut nonce).map_err(FormatError::Random)?;
        let mut kek = params.kek(passphrase, &salt)?;
        let cipher = Cipher::new(&kek);
        kek.zeroize();
        let aad = vault_id.to_string();
        let ct = cipher
            .seal(&nonce, aad.as_bytes(), master.expose())
            .map_err(|_| FormatError::Kdf("wrapping the master key failed".into()))?;
        Ok(KeySlot {
            kdf: KDF_NAME.into(),
            m_kib: params.m_kib,
            t: params.t,
            p: params.p,
            salt: salt.to_vec(),
            wrapped: [&nonce[..], &ct].concat(),
        })
    }

    /// The master key if `passphrase` opens this slot; None on a wrong passphrase.
    fn unwrap_key(&self, vault_id: &VaultId, passphrase: &str) -> Result<Option<MasterKey>> {
        let salt: &[u8; 16] = self
            .salt
            .as_slice()
            .try_into()
            .map_err(|_| bad_config("key slot salt is not 16 bytes"))?;
        let mut kek = self.params().kek(passphrase, salt)?;
        let cipher = Cipher::new(&kek);
        kek.zeroize();
        let (nonce, ct) = self.wrapped.split_at(12);
        let nonce: &[u8; 12] = nonce.try_into().expect("split at 12");
        let aad = vault_id.to_string();
        let Ok(mut plain) = cipher.open(nonce, aad.as_bytes(), ct) else {
            return Ok(None);
        };
        let key = <[u8; 32]>::try_from(plain.as_slice()).map(MasterKey::from_bytes);
        plain.zeroize();
        key.map(Some)
            .map_err(|_| bad_config("a key slot holds a key that is not 32 bytes"))
    }

    fn check(&self) -> Result<()> {
        if self.kdf != KDF_NAME {
            return Err(bad_config(format!(
                "key slot kdf {:?} is not argon2id",
                self.kdf
            )));
        }
        if !self.params().check() {
            return Err(bad_config(format!(
                "key slot argon2 parameters m={} KiB t={} p={} are outside the accepted bounds",
                self.m_kib, self.t, self.p
            )));
        }
        if self.salt.len() != 16 || self.wrapped.len() != WRAPPED_LEN {
            return Err(bad_config(
                "key slot salt or wrapped key has the wrong length",
            ));
        }
        Ok(())
    }
}

/// `key_check` as exactly 64 lowercase hex digits.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::super::ids::parse_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

fn bad_config(reason: impl Into<String>) -> FormatError {
    FormatError::damaged(CONFIG_KEY, reason)
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// The vault's `config` object.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    #[serde(rename = "lifeboat_vault")]
    pub version: u64,
    pub vault_id: VaultId,
    pub created: DateTime<Utc>,
    pub chunk_size: u32,
    pub pack_target: u32,
    #[serde(with = "hex32")]
    pub key_check: [u8; 32],
    pub key_slots: Vec<KeySlot>,
}

/// Reads `field` as the format version first, so a newer object says "upgrade" rather than
/// failing on a field this version does not know. Returns the version found.
pub(crate) fn check_versions(
    json: &[u8],
    field: &str,
    known: std::ops::RangeInclusive<u64>,
    object: &str,
    what: &'static str,
) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| FormatError::damaged(object, format!("not JSON: {e}")))?;
    let version = v.get(field).and_then(|v| v.as_u64());
    match version {
        Some(n) if known.contains(&n) => Ok(n),
        Some(n) if n > *known.end() => Err(FormatError::NewerFormat {
            object: object.into(),
            what,
            version: n,
            known: *known.end(),
        }),
        _ => Err(FormatError::damaged(
            object,
            format!("no known `{field}` version"),
        )),
    }
}

impl VaultConfig {
    /// A new vault's config (format 2: a key per name) and its fresh master key, with one
    /// slot for `passphrase`.
    pub fn create(
        passphrase: &str,
        chunk_size: u32,
        kdf: KdfParams,
    ) -> Result<(VaultConfig, MasterKey)> {
        Self::create_version(passphrase, chunk_size, kdf, CONFIG_VERSION)
    }

    /// `create` in format `version`: 1 shares one set of keys among every name, so a point
    /// of one VM may build on another VM's (equal chunks in the same slot are then not
    /// stored again), and any host that holds the key reads every VM; 2 gives each name
    /// its own.
    pub fn create_version(
        passphrase: &str,
        chunk_size: u32,
        kdf: KdfParams,
        version: u64,
    ) -> Result<(VaultConfig, MasterKey)> {
        if !(OLDEST_CONFIG_VERSION..=CONFIG_VERSION).contains(&version) {
            return Err(FormatError::Invalid {
                what: "vault format",
                value: version.to_string(),
                rule: "1 (one key for every VM) or 2 (a key per VM)",
            });
        }
        if !check_chunk_size(chunk_size) {
            return Err(FormatError::Invalid {
                what: "chunk size",
                value: chunk_size.to_string(),
                rule: "a power of two from 64 KiB to 4 MiB",
            });
        }
        if !kdf.check() {
            return Err(FormatError::Invalid {
                what: "argon2 parameters",
                value: format!("{kdf:?}"),
                rule: "m from 8 KiB to 1 GiB and at least 8 x p, t and p from 1 to 16",
            });
        }
        let master = MasterKey::random()?;
        let vault_id = VaultId::random();
        let slot = KeySlot::wrap(&vault_id, &master, passphrase, kdf)?;
        let config = VaultConfig {
            version,
            vault_id,
            // Whole seconds, as in the spec's example.
            created: DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_default(),
            chunk_size,
            pack_target: DEFAULT_PACK_TARGET,
            key_check: VaultKeys::derive(&master).key_check(),
            key_slots: vec![slot],
        };
        Ok((config, master))
    }

    /// Whether each name has its own keys (format 2).
    pub fn scoped(&self) -> bool {
        self.version >= 2
    }

    /// The master key, from whichever slot `passphrase` opens.
    pub fn unlock(&self, passphrase: &str) -> Result<MasterKey> {
        self.unlock_slot(passphrase).map(|(_, k)| k)
    }

    /// The index of the slot `passphrase` opens, and the master key.
    pub fn unlock_slot(&self, passphrase: &str) -> Result<(usize, MasterKey)> {
        for (i, slot) in self.key_slots.iter().enumerate() {
            if let Some(key) = slot.unwrap_key(&self.vault_id, passphrase)? {
                // A slot that opens but holds another key is damage, not a wrong passphrase.
                self.check_key(&key).map_err(|_| {
                    bad_config(format!("key slot {i} holds a key that fails the key check"))
                })?;
                return Ok((i, key));
            }
        }
        Err(FormatError::WrongPassphrase)
    }

    /// Proves `key` is this vault's master key (e.g. from a key file).
    pub fn check_key(&self, key: &MasterKey) -> Result<()> {
        if VaultKeys::derive(key).key_check() != self.key_check {
            return Err(FormatError::WrongKey {
                vault_id: self.vault_id.to_string(),
            });
        }
        Ok(())
    }

    /// Adds a slot for `passphrase`; returns its index.
    pub fn add_slot(&mut self, key: &MasterKey, passphrase: &str, kdf: KdfParams) -> Result<usize> {
        self.check_key(key)?;
        if self.key_slots.len() >= MAX_KEY_SLOTS {
            return Err(self.slot_error(format!(
                "already has {MAX_KEY_SLOTS} key slots; remove one first"
            )));
        }
        if !kdf.check() {
            return Err(self.slot_error(format!(
                "argon2 parameters {kdf:?} are outside the accepted bounds"
            )));
        }
        self.key_slots
            .push(KeySlot::wrap(&self.vault_id, key, passphrase, kdf)?);
        Ok(self.key_slots.len() - 1)
    }

    /// Removes slot `index`. The last slot cannot go: the vault would be left without a
    /// passphrase, one lost key file away from losing every point.
    pub fn remove_slot(&mut self, index: usize) -> Result<()> {
        if index >= self.key_slots.len() {
            return Err(self.slot_error(format!("has no key slot {index}")));
        }
        if self.key_slots.len() == 1 {
            return Err(self.slot_error(
                "cannot remove the last key slot; add another passphrase first".into(),
            ));
        }
        self.key_slots.remove(index);
        Ok(())
    }

    /// Replaces the slot `old` opens with one for `new`. The master key, and so every
    /// blob, stays as it is.
    pub fn change_passphrase(&mut self, old: &str, new: &str, kdf: KdfParams) -> Result<()> {
        let (i, key) = self.unlock_slot(old)?;
        self.add_slot(&key, new, kdf)?;
        self.key_slots.remove(i);
        Ok(())
    }

    fn slot_error(&self, reason: String) -> FormatError {
        FormatError::KeySlot {
            vault_id: self.vault_id.to_string(),
            reason,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(OLDEST_CONFIG_VERSION..=CONFIG_VERSION).contains(&self.version) {
            return Err(bad_config(format!("format version {}", self.version)));
        }
        if !check_chunk_size(self.chunk_size) {
            return Err(bad_config(format!(
                "chunk_size {} is not a power of two from 64 KiB to 4 MiB",
                self.chunk_size
            )));
        }
        if !PACK_TARGET_RANGE.contains(&self.pack_target) {
            return Err(bad_config(format!(
                "pack_target {} is not from 1 MiB to 32 MiB",
                self.pack_target
            )));
        }
        if self.key_slots.is_empty() || self.key_slots.len() > MAX_KEY_SLOTS {
            return Err(bad_config(format!(
                "{} key slots (1 to {MAX_KEY_SLOTS})",
                self.key_slots.len()
            )));
        }
        self.key_slots.iter().try_for_each(KeySlot::check)
    }

    /// The `config` object's bytes (pretty JSON, it is read by people too).
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| bad_config(e.to_string()))?;
        if json.len() > MAX_CONFIG_LEN {
            return Err(FormatError::TooLarge {
                object: CONFIG_KEY.into(),
                len: json.len() as u64,
                limit: MAX_CONFIG_LEN as u64,
            });
        }
        Ok(json)
    }

    /// Parses and checks a `config` object.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_CONFIG_LEN {
            return Err(bad_config(format!(
                "{} bytes is over the 64 KiB limit",
                bytes.len()
            )));
        }
        check_versions(
            bytes,
            "lifeboat_vault",
            OLDEST_CONFIG_VERSION..=CONFIG_VERSION,
            CONFIG_KEY,
            "vault",
        )?;
        let c: VaultConfig =
            serde_json::from_slice(bytes).map_err(|e| bad_config(format!("bad config: {e}")))?;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams::INSECURE_FAST;

    #[test]
    fn create_unlock_and_wrong_passphrase() {
        let (c, key) = VaultConfig::create("correct horse", DEFAULT_CHUNK_SIZE, FAST).unwrap();
        let c = VaultConfig::decode(&c.encode().unwrap()).unwrap();
        assert_eq!(c.unlock("correct horse").unwrap(), key);
        assert!(matches!(
            c.unlock("wrong"),
            Err(FormatError::WrongPassphrase)
        ));
        c.check_key(&key).unwrap();
        assert!(matches!(
            c.check_key(&MasterKey::from_bytes([0; 32])),
            Err(FormatError::WrongKey { .. })
        ));
        assert!(VaultConfig::create("x", 100_000, FAST).is_err());
        assert!(VaultConfig::create(
            "x",
            DEFAULT_CHUNK_SIZE,
            KdfParams {
                m_kib: 4,
                t: 1,
                p: 1
            }
        )
        .is_err());
    }

    #[test]
    fn slots_add_remove_and_passphrase_change() {
        let (mut c, key) = VaultConfig::create("one", DEFAULT_CHUNK_SIZE, FAST).unwrap();
        assert_eq!(c.add_slot(&key, "two", FAST).unwrap(), 1);
        assert_eq!(c.unlock_slot("two").unwrap().0, 1);
        assert_eq!(c.unlock("one").unwrap(), key, "tried against every slot");
        assert!(c
            .add_slot(&MasterKey::from_bytes([1; 32]), "evil", FAST)
            .is_err());
        c.remove_slot(0).unwrap();
        assert!(matches!(c.unlock("one"), Err(FormatError::WrongPassphrase)));
        assert!(
            matches!(c.remove_slot(0), Err(FormatError::KeySlot { .. })),
            "the last slot stays"
        );
        assert!(c.remove_slot(5).is_err());
        c.change_passphrase("two", "three", FAST).unwrap();
        assert_eq!(c.key_slots.len(), 1);
        assert!(c.unlock("two").is_err());
        assert_eq!(c.unlock("three").unwrap(), key, "same master key");
        assert!(c.change_passphrase("nope", "x", FAST).is_err());
        while c.key_slots.len() < MAX_KEY_SLOTS {
            c.add_slot(&key, "more", FAST).unwrap();
        }
        assert!(c.add_slot(&key, "one too many", FAST).is_err());
        assert_eq!(VaultConfig::decode(&c.encode().unwrap()).unwrap(), c);
    }

    fn config_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let (c, _) = VaultConfig::create("p", DEFAULT_CHUNK_SIZE, FAST).unwrap();
        let mut v = serde_json::to_value(&c).unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn newer_and_bad_configs_are_refused() {
        let e = VaultConfig::decode(&config_json(|v| {
            v["lifeboat_vault"] = 3.into();
            v["future"] = true.into();
        }))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config: vault format 3 is newer than this Lifeboat (knows 2); upgrade Lifeboat"
        );
        // Both known formats are read, and say whether each VM has its own key.
        let v1 = VaultConfig::decode(&config_json(|v| v["lifeboat_vault"] = 1.into())).unwrap();
        assert!(!v1.scoped());
        assert!(VaultConfig::decode(&config_json(|_| {})).unwrap().scoped());
        for bad in [
            config_json(|v| v["lifeboat_vault"] = 0.into()),
            config_json(|v| v["extra"] = 1.into()),
            config_json(|v| v["chunk_size"] = 1000.into()),
            config_json(|v| v["pack_target"] = (64 << 20).into()),
            config_json(|v| v["key_check"] = "AB".repeat(32).into()),
            config_json(|v| v["vault_id"] = v["vault_id"].as_str().unwrap().to_uppercase().into()),
            config_json(|v| v["key_slots"] = serde_json::json!([])),
            config_json(|v| v["key_slots"][0]["kdf"] = "scrypt".into()),
            config_json(|v| v["key_slots"][0]["m_kib"] = (4u64 << 30).into()),
            config_json(|v| v["key_slots"][0]["m_kib"] = (2 << 20).into()),
            config_json(|v| v["key_slots"][0]["t"] = 1000.into()),
            config_json(|v| v["key_slots"][0]["p"] = 0.into()),
            config_json(|v| v["key_slots"][0]["salt"] = "AAAA".into()),
            config_json(|v| v["key_slots"][0]["wrapped"] = "AAAA".into()),
            config_json(|v| v["key_slots"][0]["extra"] = 1.into()),
        ] {
            let e = VaultConfig::decode(&bad).unwrap_err();
            assert!(matches!(e, FormatError::Damaged { .. }), "{e}");
        }
        let mut big = config_json(|_| {});
        big.resize(MAX_CONFIG_LEN + 1, b' ');
        assert!(VaultConfig::decode(&big).is_err());
    }

    #[test]
    fn a_slot_is_bound_to_its_vault_id() {
        let (mut c, _) = VaultConfig::create("p", DEFAULT_CHUNK_SIZE, FAST).unwrap();
        c.vault_id = VaultId::random();
        assert!(matches!(c.unlock("p"), Err(FormatError::WrongPassphrase)));
    }
}
