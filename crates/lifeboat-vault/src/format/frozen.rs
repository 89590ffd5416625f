//! Bytes an earlier Lifeboat wrote, read by this one. The constants were made by the
//! release that built on ring 0.17, argon2 0.5 and zstd 0.13, and are never regenerated:
//! a dependency upgrade (the AES-GCM provider, argon2, zstd) that changes what a vault on
//! disk means fails here, not in an operator's restore.

use super::blob::MAX_CHUNK_PLAIN;
use super::config::KdfParams;
use super::tests::keys;
use super::*;

const PASSPHRASE: &str = "correct horse battery staple";
const SALT: [u8; 16] = [7; 16];

/// Argon2id with fixed inputs gives the key it gave before: the production parameters
/// and the cheapest accepted ones.
#[test]
fn argon2id_derives_the_same_key_from_the_same_inputs() {
    for (params, kek) in [
        (
            KdfParams::DEFAULT,
            "6ad10af97f1744119bd7135c85121dc589794f9c5d646200b8ad4d6becf15084",
        ),
        (
            KdfParams::INSECURE_FAST,
            "6d9d4cd2bf048c1f142287a80b105d85f868b75b4e15f51ba23c513f1ffb4cb1",
        ),
    ] {
        assert_eq!(
            hex::encode(params.kek(PASSPHRASE, &SALT).unwrap()),
            kek,
            "{params:?}"
        );
    }
}

/// A `config` written before (Argon2id key slot, AES-256-GCM wrapped master key) unlocks
/// to the same master key.
#[test]
fn a_config_written_before_unlocks() {
    let config = r#"{
  "lifeboat_vault": 2,
  "vault_id": "267cad8b-6e47-45c9-b01f-c2bcba1206d7",
  "created": "2026-12-05T14:24:21Z",
  "chunk_size": 131072,
  "pack_target": 16777216,
  "key_check": "a996ba31528d05beabffe64bb17e950ab10456134b57f6465a29abedd21a6564",
  "key_slots": [
    {
      "kdf": "argon2id",
      "m_kib": 8,
      "t": 1,
      "p": 1,
      "salt": "L4HyF7SPp31a5jHldF6NTQ==",
      "wrapped": "Gmiidy5dj64EkCG4/zZyc0DM3yV240abr1Qz4OhVux20X8/tnaGAqrND7X91vmoPIu0CRHy/nNAPqnHB"
    }
  ]
}"#;
    let c = VaultConfig::decode(config.as_bytes()).unwrap();
    let master = c.unlock("correct horse").unwrap();
    assert_eq!(
        hex::encode(master.expose()),
        "bb0bf28b08a0cb2b67b3876ff53898491dc83abe8a72540099d22e17a3c19bcf"
    );
    assert!(matches!(
        c.unlock("wrong"),
        Err(FormatError::WrongPassphrase)
    ));
}

/// A compressed chunk sealed before opens to its plaintext under its id.
#[test]
fn a_compressed_chunk_sealed_before_opens() {
    let plain = b"lifeboat vault chunk ".repeat(40);
    let id: ChunkId = "55e67bf1d74706e336e6d4df695135404cbfa7c97c9259ea5bdd54eb1b4f5f2e"
        .parse()
        .unwrap();
    let sealed = hex::decode(
        "4c42423101010000480300005050e1ad22e046f48ac23d8953d6ee7b07436c39fbeb40d32e4fef387d2f44\
         5eb869f1829a7be5ff31c92e3433b1168459d155d6b7a43d5cca214af91643b61e5103",
    )
    .unwrap();
    assert_eq!(keys().chunk_id(&plain), id);
    assert_eq!(
        open_chunk(&keys(), &id, &sealed, MAX_CHUNK_PLAIN).unwrap(),
        plain
    );
}

/// A chunk stored as is seals to exactly the bytes it sealed to before (its nonce comes
/// from its id alone), so the same block written again is deduplicated byte for byte.
#[test]
fn an_uncompressed_chunk_seals_byte_identical_to_before() {
    let plain: Vec<u8> = (0u32..64).map(|i| (i * 37 + 11) as u8).collect();
    let (id, sealed) = seal_chunk(&keys(), &plain).unwrap();
    assert_eq!(
        id.to_string(),
        "8ebd3154100f2080e0c2aff2dc0a770ba842f87540c7c21d287e6c99f645d2eb"
    );
    assert_eq!(
        hex::encode(&sealed),
        "4c4242310100000040000000ed4bd472a6b9a4f490eb1837f7664e4362645da44d1eb3595e38500f87d2f9\
         9523e7687bb9717666b3f5572649f96072a9f2ef6a66287ed21984202cabced6456c51647ef1714e67fe7f\
         94d9fbb72a3bd233b42cc50c919b9b5b1f63"
    );
    assert_eq!(
        open_chunk(&keys(), &id, &sealed, MAX_CHUNK_PLAIN).unwrap(),
        plain
    );
}
