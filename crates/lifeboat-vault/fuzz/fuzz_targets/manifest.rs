//! A manifest: the JSON decoder, the sealed opener, and re-encoding round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_vault::format::{open_manifest, Manifest, MasterKey, Name, PointId, VaultKeys};

fuzz_target!(|data: &[u8]| {
    let keys = VaultKeys::derive(&MasterKey::from_bytes([7; 32]));
    let name = Name::new("web1").expect("name");
    let point = PointId::from_parts(1_764_136_800_000, 1).expect("point");
    let _ = open_manifest(&keys, &name, &point, data);
    if let Ok(m) = Manifest::decode(data, "fuzz") {
        let again = Manifest::decode(&m.encode().expect("re-encode"), "fuzz").expect("re-decode");
        assert_eq!(again, m);
    }
});
