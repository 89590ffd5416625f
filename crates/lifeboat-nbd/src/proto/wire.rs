//! Bounds-checked big-endian reading shared by every decoder, and the
//! `code_enum!` macro that gives each numeric protocol code a typed name
//! while keeping unknown values representable (a server must be able to
//! receive codes it does not know and answer them, not choke on them).

use thiserror::Error;

/// A message on the wire did not follow the NBD protocol.
///
/// Decoders return this for every malformed input; they never panic and never
/// allocate more than the bounds named in [`super::limits`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    #[error("{what}: truncated, need {need} bytes but only {have} available")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what}: {extra} unexpected trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("{what}: bad magic {got:#x}, expected {expected:#x}")]
    BadMagic {
        what: &'static str,
        got: u64,
        expected: u64,
    },
    #[error("{what}: length {len} exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{what}: string is not valid UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl ProtoError {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        ProtoError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// Reject `len` if it is above `max`, before anything is allocated for it.
pub(crate) fn check_len(what: &'static str, len: u64, max: u64) -> Result<(), ProtoError> {
    if len > max {
        return Err(ProtoError::TooLong { what, len, max });
    }
    Ok(())
}

/// A read position in a borrowed buffer; every read is bounds-checked.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated {
                what: self.what,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtoError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A UTF-8 string of exactly `len` bytes, at most `max`.
    pub(crate) fn string(&mut self, len: usize, max: usize) -> Result<String, ProtoError> {
        check_len(self.what, len as u64, max as u64)?;
        let b = self.bytes(len)?;
        utf8(self.what, b)
    }

    /// A string prefixed by its u32 length, at most `max` bytes.
    pub(crate) fn string_u32(&mut self, max: usize) -> Result<String, ProtoError> {
        let len = self.u32()? as usize;
        self.string(len, max)
    }

    pub(crate) fn finish(self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes {
                what: self.what,
                extra: self.buf.len(),
            })
        }
    }
}

pub(crate) fn utf8(what: &'static str, b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::NotUtf8 { what })
}

/// Defines a protocol code as an enum with an `Unknown(raw)` fallback,
/// conversions both ways and the spec's name for each known value.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $raw:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr => $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this implementation does not know.
            Unknown($raw),
        }

        impl $name {
            /// The value on the wire.
            pub fn raw(self) -> $raw {
                match self {
                    $( $name::$variant => $value, )*
                    $name::Unknown(v) => v,
                }
            }

            /// The protocol document's name for this code.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )*
                    $name::Unknown(_) => "unknown",
                }
            }
        }

        impl From<$raw> for $name {
            fn from(v: $raw) -> Self {
                match v {
                    $( x if x == $value => $name::$variant, )*
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for $raw {
            fn from(v: $name) -> $raw {
                v.raw()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $name::Unknown(v) => write!(f, "unknown ({v:#x})"),
                    known => f.write_str(known.name()),
                }
            }
        }
    };
}
pub(crate) use code_enum;
