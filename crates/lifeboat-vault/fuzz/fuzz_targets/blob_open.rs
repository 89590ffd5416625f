//! Sealed chunk bytes from a hostile provider: must fail cleanly. A GCM tag cannot be
//! forged by a fuzzer, so the input is also sealed as a compressed payload (through the
//! `fuzzing` hook) to reach decompression, and round-tripped as a plaintext.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_vault::format::blob::{
    fuzzing_seal_payload, open_chunk, seal_chunk, BlobKind, FLAG_ZSTD,
};
use lifeboat_vault::format::{ChunkId, MasterKey, VaultKeys};

fuzz_target!(|data: &[u8]| {
    let keys = VaultKeys::derive(&MasterKey::from_bytes([7; 32]));
    let id = ChunkId([1; 32]);
    let _ = open_chunk(&keys, &id, data, 4 << 20);

    // Arbitrary zstd frames behind a valid tag: must fail or give exactly plain_len bytes.
    if let Some((len, payload)) = data.split_first_chunk::<2>() {
        let plain_len = u32::from(u16::from_le_bytes(*len));
        if let Ok(sealed) =
            fuzzing_seal_payload(&keys, BlobKind::Chunk, FLAG_ZSTD, plain_len, &id.0, payload)
        {
            // The id check fails unless the frame decompresses to the id's plaintext.
            assert!(open_chunk(&keys, &id, &sealed, 4 << 20).is_err());
        }
    }

    let Ok((id, sealed)) = seal_chunk(&keys, data) else {
        return; // over the 4 MiB chunk limit
    };
    assert_eq!(
        open_chunk(&keys, &id, &sealed, 4 << 20).expect("round trip"),
        data
    );
});
