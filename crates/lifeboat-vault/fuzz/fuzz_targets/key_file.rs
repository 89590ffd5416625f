//! A key file: decoder, and the checks against a vault's config.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lifeboat_vault::format::{KdfParams, KeyFile, VaultConfig};

fuzz_target!(|data: &[u8]| {
    static CONFIG: OnceLock<VaultConfig> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        VaultConfig::create("fuzz", 1 << 17, KdfParams::INSECURE_FAST)
            .expect("config")
            .0
    });
    if let Ok(kf) = KeyFile::decode(data) {
        let _ = kf.unlock(config);
        let again = KeyFile::decode(&kf.encode()).expect("re-decode");
        assert_eq!(again.vault_id, kf.vault_id);
        assert!(again.key == kf.key, "a key file re-encodes to the same key");
    }
});
