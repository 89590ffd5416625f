//! An index page: the plaintext decoder, the sealed opener, and re-encoding round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_vault::format::{open_page, IndexPage, MasterKey, PageId, VaultKeys};

fuzz_target!(|data: &[u8]| {
    let keys = VaultKeys::derive(&MasterKey::from_bytes([7; 32]));
    let _ = open_page(&keys, &PageId([3; 32]), data);
    if let Ok(page) = IndexPage::decode(data) {
        assert_eq!(page.encode().expect("re-encode"), data);
    }
});
