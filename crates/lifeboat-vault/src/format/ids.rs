//! Typed ids and the object keys built from them. A `ChunkId` is not a `PageId`, so a page
//! can never be looked up as a chunk; every id parses strictly (lowercase hex, exact length)
//! so one object has exactly one key.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{FormatError, Result};

/// The object holding the vault's settings and wrapped master key.
pub const CONFIG_KEY: &str = "config";
const PACKS: &str = "packs/";
const POINTS: &str = "points/";
const LEASES: &str = "leases/";

/// Parses exactly `2 * N` lowercase hex digits. Uppercase is refused so that a listed key
/// and a computed key can never differ only in case.
pub(crate) fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = FormatError;
            fn from_str(s: &str) -> Result<Self> {
                parse_hex::<$len>(s).map($name).ok_or_else(|| FormatError::Invalid {
                    what: $what,
                    value: s.chars().take(80).collect(),
                    rule: concat!("expected ", stringify!($len), " bytes as lowercase hex"),
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// Keyed BLAKE3 of a chunk's plaintext. Only `blob::seal_chunk` and `keys` make one
    /// from data, so a sealed chunk always carries the id of its own plaintext.
    ChunkId, 32, "chunk id"
);
hex_id!(
    /// Keyed BLAKE3 (page key) of an index page's plaintext.
    PageId, 32, "page id"
);
hex_id!(
    /// 16 random bytes naming a pack.
    PackId, 16, "pack id"
);

impl PackId {
    /// A fresh random pack id.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(FormatError::Random)?;
        Ok(PackId(b))
    }
}

/// The largest unix time in milliseconds that fits 13 digits (year 2286).
const MAX_POINT_MS: u64 = 9_999_999_999_999;

/// A recovery point's id: `<unix ms, 13 digits>-<8 hex random>`. Ordering is time order
/// (then the random part), the same as the string order of a listing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PointId {
    unix_ms: u64,
    random: u32,
}

impl PointId {
    /// A new point id for a point taken at `now`. Times before 1970 clamp to 0.
    pub fn new(now: DateTime<Utc>) -> Result<Self> {
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).map_err(FormatError::Random)?;
        let ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        Ok(PointId {
            unix_ms: ms.min(MAX_POINT_MS),
            random: u32::from_be_bytes(r),
        })
    }

    /// Builds an id from its parts (tests, tools); `unix_ms` must fit 13 digits.
    pub fn from_parts(unix_ms: u64, random: u32) -> Result<Self> {
        if unix_ms > MAX_POINT_MS {
            return Err(FormatError::Invalid {
                what: "point id",
                value: unix_ms.to_string(),
                rule: "the time must fit 13 digits of unix milliseconds",
            });
        }
        Ok(PointId { unix_ms, random })
    }

    pub fn unix_ms(&self) -> u64 {
        self.unix_ms
    }

    /// When the point was taken, to the millisecond.
    pub fn time(&self) -> DateTime<Utc> {
        // Always in range: 13 digits of ms is far inside chrono's range.
        DateTime::from_timestamp_millis(self.unix_ms as i64).unwrap_or_default()
    }
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:013}-{:08x}", self.unix_ms, self.random)
    }
}

impl fmt::Debug for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PointId({self})")
    }
}

impl FromStr for PointId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || FormatError::Invalid {
            what: "point id",
            value: s.chars().take(80).collect(),
            rule: "expected <13 digits of unix milliseconds>-<8 lowercase hex>",
        };
        let (ms, rnd) = s.split_once('-').ok_or_else(bad)?;
        if ms.len() != 13 || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let random = parse_hex::<4>(rnd).ok_or_else(bad)?;
        Ok(PointId {
            unix_ms: ms.parse().map_err(|_| bad())?,
            random: u32::from_be_bytes(random),
        })
    }
}

/// What a point is a point of: a VM or an image. Also used for disk names in manifests.
/// 1–64 of `a-z 0-9 - _ .`, not starting with `.`, so it is safe as a path segment.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn new(s: &str) -> Result<Self> {
        s.parse()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.0)
    }
}

impl FromStr for Name {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        let ok = (1..=64).contains(&s.len())
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'));
        if !ok {
            return Err(FormatError::Invalid {
                what: "name",
                value: s.chars().take(80).collect(),
                rule: "1 to 64 of a-z 0-9 - _ . not starting with '.'",
            });
        }
        Ok(Name(s.to_owned()))
    }
}

/// A writer session, naming its lease object: a UUID in lowercase hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SessionId(pub uuid::Uuid);

impl SessionId {
    pub fn random() -> Self {
        SessionId(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for SessionId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        parse_canonical_uuid(s)
            .map(SessionId)
            .ok_or_else(|| FormatError::Invalid {
                what: "session id",
                value: s.chars().take(80).collect(),
                rule: "expected a lowercase hyphenated UUID",
            })
    }
}

/// The vault's id, a UUID in lowercase hyphenated form. Its string is the AAD of every key
/// slot, so it has exactly one accepted spelling.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct VaultId(pub uuid::Uuid);

impl VaultId {
    pub fn random() -> Self {
        VaultId(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for VaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for VaultId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        parse_canonical_uuid(s)
            .map(VaultId)
            .ok_or_else(|| FormatError::Invalid {
                what: "vault id",
                value: s.chars().take(80).collect(),
                rule: "expected a lowercase hyphenated UUID",
            })
    }
}

/// Serde as the Display/FromStr string, for the string-shaped ids.
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_via_str!(PointId, Name, SessionId, VaultId);

/// A UUID only in the one spelling we write, so the string form (used as AAD and in keys)
/// is unique.
pub(crate) fn parse_canonical_uuid(s: &str) -> Option<uuid::Uuid> {
    let u = uuid::Uuid::parse_str(s).ok()?;
    (u.hyphenated().to_string() == s).then_some(u)
}

/// `packs/<pp>/<32 hex>`: the two-hex prefix spreads packs over folders and S3 partitions.
pub fn pack_key(id: &PackId) -> String {
    let h = id.to_string();
    format!("{PACKS}{}/{h}", &h[..2])
}

/// `points/<name>/<point id>`.
pub fn manifest_key(name: &Name, point: &PointId) -> String {
    format!("{POINTS}{name}/{point}")
}

/// `points/<name>/`: list this to find a name's points.
pub fn manifest_prefix(name: &Name) -> String {
    format!("{POINTS}{name}/")
}

/// One object of a writer's lease. Writers only ever create objects (an append-only
/// credential can hold a lease): a renewal is a new object, and the end is one more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseObject {
    /// `leases/<session id>`: a lease of an earlier version, rewritten to renew it and
    /// deleted at its end. Still read; no longer written.
    Whole,
    /// `leases/<session id>/<n>`: the writer's n-th renewal (0 when it starts).
    Renewal(u32),
    /// `leases/<session id>/end`: the writer is done.
    End,
}

/// The key of one object of `session`'s lease.
pub fn lease_object_key(session: &SessionId, object: LeaseObject) -> String {
    match object {
        LeaseObject::Whole => format!("{LEASES}{session}"),
        LeaseObject::Renewal(n) => format!("{LEASES}{session}/{n}"),
        LeaseObject::End => format!("{LEASES}{session}/end"),
    }
}

/// The pack id of a listed key, or None for anything that is not exactly a pack key
/// (temporary files, foreign objects, a prefix that does not match the id).
pub fn parse_pack_key(key: &str) -> Option<PackId> {
    let rest = key.strip_prefix(PACKS)?;
    let (pp, id) = rest.split_once('/')?;
    let id: PackId = id.parse().ok()?;
    (pack_key(&id) == key && pp.len() == 2).then_some(id)
}

/// The name and point id of a listed manifest key, or None for foreign keys.
pub fn parse_manifest_key(key: &str) -> Option<(Name, PointId)> {
    let rest = key.strip_prefix(POINTS)?;
    let (name, point) = rest.split_once('/')?;
    Some((name.parse().ok()?, point.parse().ok()?))
}

/// The session and object of a listed lease key, or None for foreign keys.
pub fn parse_lease_key(key: &str) -> Option<(SessionId, LeaseObject)> {
    let rest = key.strip_prefix(LEASES)?;
    let (session, object) = match rest.split_once('/') {
        None => (rest, LeaseObject::Whole),
        Some((s, "end")) => (s, LeaseObject::End),
        Some((s, n)) => {
            // One spelling per number, so one renewal has one key.
            let n: u32 = n.parse().ok()?;
            (s, LeaseObject::Renewal(n))
        }
    };
    let session: SessionId = session.parse().ok()?;
    (lease_object_key(&session, object) == key).then_some((session, object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_id_round_trips_and_sorts_by_time() {
        let a = PointId::from_parts(1_764_136_770_000, 0xffff_ffff).unwrap();
        let b = PointId::from_parts(1_764_136_800_000, 0x1a2b_3c4d).unwrap();
        assert_eq!(b.to_string(), "1764136800000-1a2b3c4d");
        assert_eq!("1764136800000-1a2b3c4d".parse::<PointId>().unwrap(), b);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        let early = PointId::from_parts(5, 1).unwrap();
        assert_eq!(early.to_string(), "0000000000005-00000001");
        assert!(PointId::from_parts(MAX_POINT_MS + 1, 0).is_err());
        let now = PointId::new(Utc::now()).unwrap();
        assert_eq!(now.to_string().parse::<PointId>().unwrap(), now);
    }

    #[test]
    fn point_id_rejects_other_spellings() {
        for s in [
            "",
            "-",
            "176413680000-1a2b3c4d",
            "17641368000000-1a2b3c4d",
            "1764136800000-1A2B3C4D",
            "1764136800000-1a2b3c4",
            "1764136800000_1a2b3c4d",
            "+764136800000-1a2b3c4d",
            "1764136800000-1a2b3c4d-",
            "１764136800000-1a2b3c4d",
        ] {
            assert!(s.parse::<PointId>().is_err(), "{s}");
        }
    }

    #[test]
    fn names_follow_the_rule() {
        for ok in ["web1", "a", "vm_2.prod-x", &"a".repeat(64), "0"] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "Web",
            "a/b",
            "a b",
            &"a".repeat(65),
            "é",
        ] {
            assert!(Name::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_ids_are_strict() {
        let id = PackId([0xab; 16]);
        assert_eq!(id.to_string().parse::<PackId>().unwrap(), id);
        assert!("AB".repeat(16).parse::<PackId>().is_err());
        assert!("ab".repeat(15).parse::<PackId>().is_err());
        assert!("ab".repeat(32).parse::<PackId>().is_err());
        let c = ChunkId([7; 32]);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, format!("\"{}\"", "07".repeat(32)));
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), c);
        assert!(serde_json::from_str::<ChunkId>("\"00\"").is_err());
    }

    #[test]
    fn object_keys_round_trip_and_foreign_keys_are_none() {
        let p = PackId([0x1c; 16]);
        let k = pack_key(&p);
        assert_eq!(k, format!("packs/1c/{}", "1c".repeat(16)));
        assert_eq!(parse_pack_key(&k), Some(p));
        assert_eq!(
            parse_pack_key(&format!("packs/00/{}", "1c".repeat(16))),
            None
        );
        assert_eq!(
            parse_pack_key(&format!("packs/1c/{}.tmp", "1c".repeat(16))),
            None
        );
        assert_eq!(
            parse_pack_key(&format!("packs/1c/x/{}", "1c".repeat(16))),
            None
        );
        assert_eq!(parse_pack_key("config"), None);

        let n = Name::new("web1").unwrap();
        let pt = PointId::from_parts(1_764_136_800_000, 0x1a2b_3c4d).unwrap();
        let mk = manifest_key(&n, &pt);
        assert_eq!(mk, "points/web1/1764136800000-1a2b3c4d");
        assert_eq!(parse_manifest_key(&mk), Some((n.clone(), pt)));
        assert!(mk.starts_with(&manifest_prefix(&n)));
        assert_eq!(
            parse_manifest_key("points/web1/1764136800000-1a2b3c4d.tmp"),
            None
        );
        assert_eq!(parse_manifest_key("points/.x/1764136800000-1a2b3c4d"), None);
        assert_eq!(parse_manifest_key("points/web1"), None);

        let s = SessionId::random();
        for o in [
            LeaseObject::Whole,
            LeaseObject::Renewal(0),
            LeaseObject::Renewal(17),
            LeaseObject::End,
        ] {
            let key = lease_object_key(&s, o);
            assert_eq!(parse_lease_key(&key), Some((s, o)));
            assert_eq!(parse_lease_key(&key.to_uppercase()), None);
        }
        assert_eq!(parse_lease_key(&format!("leases/{s}/007")), None);
        assert_eq!(parse_lease_key(&format!("leases/{s}/-1")), None);
        assert_eq!(parse_lease_key(&format!("leases/{s}/x")), None);
        assert_eq!(parse_lease_key("leases/x"), None);
    }
}
