//! Vault bytes (being written).
