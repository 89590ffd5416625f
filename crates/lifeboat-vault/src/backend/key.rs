//! Object keys: what the vault may name, checked before any request.
//!
//! Keys are relative to the vault's prefix and use only `A-Z a-z 0-9 . _ -` and `/`
//! between non-empty segments. That keeps them the same on every backend: no `..` that
//! could leave the vault folder, no `#` (the folder backend names its half-written
//! temporary files `<key>#<n>`), no characters a store would percent-encode.

/// Longest key accepted, in bytes (S3 allows 1,024 including the vault prefix).
pub const MAX_KEY_LEN: usize = 512;

/// Checks a key; the error says what is wrong with it.
pub(crate) fn check(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("a key may not be empty");
    }
    if key.len() > MAX_KEY_LEN {
        return Err("a key may be at most 512 bytes long");
    }
    if key.starts_with('/') {
        return Err("a key may not start with `/`");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err("a key may only hold A-Z a-z 0-9 . _ - and /");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("a key may not hold an empty segment (`//` or a trailing `/`)"),
            "." | ".." => return Err("a key may not hold `.` or `..` segments"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a listing prefix: empty (everything), or a key, optionally ending in `/`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    match prefix.strip_suffix('/') {
        _ if prefix.is_empty() => Ok(()),
        Some(dir) => check(dir),
        None => check(prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_vault_keys() {
        for key in [
            "config",
            "packs/ab/ab0123456789abcdef0123456789abcd",
            "points/web1/1764136800000-1a2b3c4d",
            "leases/8c0e2a4e-1b2c-4d5e-8f90-123456789abc",
            "points/.hidden-is-fine-for-the-backend",
        ] {
            check(key).unwrap();
        }
    }

    #[test]
    fn refuses_escapes_and_odd_names() {
        for key in [
            "", "../x", "a/../b", "/abs", "a//b", "a/", "./a", "a#1", "a b", "a\\b", "ü",
        ] {
            assert!(check(key).is_err(), "{key:?} was accepted");
        }
        assert!(check(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
        check(&"a".repeat(MAX_KEY_LEN)).unwrap();
    }

    #[test]
    fn prefixes() {
        check_prefix("").unwrap();
        check_prefix("packs/").unwrap();
        check_prefix("packs/a").unwrap();
        assert!(check_prefix("../").is_err());
        assert!(check_prefix("/").is_err());
    }
}
