//! The one error type of the vault format. Every decoder returns it instead of panicking,
//! whatever the bytes; each message names the object and says what to do next.

/// What went wrong reading or writing vault bytes.
///
/// The variants are what a caller decides on: a wrong secret (ask again), a newer format
/// (upgrade), damage (run verify, name the point), or a programming limit (a bug or a
/// misuse by the caller).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// No key slot opens with this passphrase.
    #[error(
        "wrong passphrase for this vault; try again, or unlock with a key file \
         (`lifeboat vault key export` made one)"
    )]
    WrongPassphrase,

    /// The master key (from a key file) does not match the vault's `key_check`.
    #[error(
        "this key does not unlock vault {vault_id}: its key check differs; use a key file \
         exported from this vault"
    )]
    WrongKey { vault_id: String },

    /// A key file made for another vault.
    #[error(
        "the key file is for vault {key_file_vault}, not vault {vault_id}; use the key file \
         exported from this vault"
    )]
    KeyFileForOtherVault {
        vault_id: String,
        key_file_vault: String,
    },

    /// A version number this Lifeboat does not know.
    #[error("{object}: {what} format {version} is newer than this Lifeboat (knows {known}); upgrade Lifeboat")]
    NewerFormat {
        object: String,
        what: &'static str,
        version: u64,
        known: u64,
    },

    /// The bytes of an object are not what the format allows (bad magic, length, field...).
    #[error(
        "{object}: damaged: {reason}; run `lifeboat vault verify` to see which points it affects"
    )]
    Damaged { object: String, reason: String },

    /// AES-GCM rejected the tag: changed bytes, a blob moved from elsewhere, or another key.
    #[error(
        "{object}: authentication failed (the bytes were changed, or belong to another \
         object or vault); run `lifeboat vault verify` to see which points it affects"
    )]
    TagMismatch { object: String },

    /// A chunk or page decrypted, but its plaintext hashes to another id than expected.
    #[error(
        "{object}: decrypts but holds the data of id {found}; run `lifeboat vault verify` \
         to see which points it affects"
    )]
    IdMismatch { object: String, found: String },

    /// A name, point id, pack id or object key that does not follow the format's rules.
    #[error("invalid {what} {value:?}: {rule}")]
    Invalid {
        what: &'static str,
        value: String,
        rule: &'static str,
    },

    /// The caller asked to write something over a format limit (a bug or a bad setting).
    #[error("{object}: {len} bytes is over the format's limit of {limit} bytes")]
    TooLarge {
        object: String,
        len: u64,
        limit: u64,
    },

    /// The pack cannot take this blob; upload it and start a new one.
    #[error("pack {pack}: full ({blobs} blobs, {bytes} bytes); finish it and start a new pack")]
    PackFull {
        pack: String,
        blobs: u32,
        bytes: u64,
    },

    /// Key slot management refused.
    #[error("vault {vault_id}: {reason}")]
    KeySlot { vault_id: String, reason: String },

    /// The operating system gave no randomness (nothing can be sealed safely without it).
    #[error("no randomness from the operating system: {0}")]
    Random(getrandom::Error),

    /// Argon2 refused its parameters.
    #[error("key derivation (argon2id) failed: {0}")]
    Kdf(String),
}

impl FormatError {
    pub(crate) fn damaged(object: impl Into<String>, reason: impl Into<String>) -> Self {
        FormatError::Damaged {
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// True when the error means "the stored bytes are bad" rather than "wrong secret",
    /// "upgrade" or "caller bug": what verify counts as damage.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            FormatError::Damaged { .. }
                | FormatError::TagMismatch { .. }
                | FormatError::IdMismatch { .. }
        )
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
