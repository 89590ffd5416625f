//! The NBD wire format, both directions, with no I/O.
//!
//! [`handshake`] covers the fixed-newstyle negotiation, [`transmission`] the
//! request/reply phase. Each message has `encode` (append to a `BytesMut`) and
//! `decode` (from a byte slice); decoders treat their input as hostile and
//! return [`ProtoError`] rather than panic or allocate past [`limits`].
//! Extended headers (64-bit lengths) are not implemented.

pub mod handshake;
pub mod transmission;
mod wire;

pub use wire::ProtoError;

/// Bounds applied to every length field read from the peer.
pub mod limits {
    /// Largest option request or reply payload accepted.
    pub const MAX_OPTION_PAYLOAD: usize = 64 * 1024;
    /// Largest string (export name, context name, description); the protocol's own limit.
    pub const MAX_STRING: usize = 4096;
    /// Largest READ this implementation sends or serves in one request.
    pub const MAX_READ: u32 = 32 * 1024 * 1024;
    /// Most descriptors accepted in one BLOCK_STATUS chunk.
    pub const MAX_BLOCK_STATUS_DESCRIPTORS: usize = 1 << 20;
    /// Largest structured reply chunk payload accepted (an `OFFSET_DATA` of [`MAX_READ`]).
    pub const MAX_CHUNK_PAYLOAD: usize = MAX_READ as usize + 8;
}

#[cfg(test)]
mod tests;
