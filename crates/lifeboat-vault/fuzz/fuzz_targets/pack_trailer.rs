//! A pack's tail (trailer blob + footer) and a trailer plaintext from a hostile provider.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_vault::format::pack::{decode_trailer, read_trailer, trailer_len_from_footer};
use lifeboat_vault::format::{MasterKey, PackId, VaultKeys};

fuzz_target!(|data: &[u8]| {
    let keys = VaultKeys::derive(&MasterKey::from_bytes([7; 32]));
    let id = PackId([2; 16]);
    if data.len() >= 8 {
        let _ = trailer_len_from_footer(&id, &data[data.len() - 8..]);
    }
    let _ = read_trailer(&keys, &id, data.len() as u64 + 4096, data);
    // The plaintext decoder, as if the tag had passed; the first 4 bytes pick where the
    // trailer starts.
    if let Some((start, plain)) = data.split_first_chunk::<4>() {
        let _ = decode_trailer(&id, plain, u64::from(u32::from_le_bytes(*start)));
    }
});
