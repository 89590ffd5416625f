//! The `config` object: decoder and re-encoding round trip (no unlock: argon2 is slow by
//! design, and a hostile config's parameters are bounded by the decoder, which is tested).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_vault::format::VaultConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = VaultConfig::decode(data) {
        let again = VaultConfig::decode(&c.encode().expect("re-encode")).expect("re-decode");
        assert_eq!(again, c);
    }
});
