//! Transmission phase messages: request headers, simple replies, structured
//! reply chunks, and the codes they carry.
//!
//! Data payloads (the bytes of a WRITE request or of an `OFFSET_DATA` chunk) are
//! not buffered by the header decoders: the receiver checks the length in the
//! header against what it asked for and then reads the data straight into its
//! destination. [`ReplyChunk::decode`] exists for everything else and for tests.

use bytes::{BufMut, Bytes, BytesMut};

use super::limits;
use super::wire::{check_len, code_enum, Cursor, ProtoError};

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Transmission flags (`NBD_FLAG_*`), sent by the server with the export size.
pub mod transmission_flags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_RESIZE: u16 = 1 << 9;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
    pub const BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod command_flags {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured reply flag: this is the last chunk for the cookie.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;

code_enum! {
    /// `NBD_CMD_*`: what a transmission request asks for.
    pub enum Command: u16 {
        Read = 0 => "NBD_CMD_READ",
        Write = 1 => "NBD_CMD_WRITE",
        Disconnect = 2 => "NBD_CMD_DISC",
        Flush = 3 => "NBD_CMD_FLUSH",
        Trim = 4 => "NBD_CMD_TRIM",
        Cache = 5 => "NBD_CMD_CACHE",
        WriteZeroes = 6 => "NBD_CMD_WRITE_ZEROES",
        BlockStatus = 7 => "NBD_CMD_BLOCK_STATUS",
        Resize = 8 => "NBD_CMD_RESIZE",
    }
}

const CHUNK_ERR: u16 = 1 << 15;

code_enum! {
    /// `NBD_REPLY_TYPE_*`: the kind of a structured reply chunk.
    pub enum ChunkType: u16 {
        None = 0 => "NBD_REPLY_TYPE_NONE",
        OffsetData = 1 => "NBD_REPLY_TYPE_OFFSET_DATA",
        OffsetHole = 2 => "NBD_REPLY_TYPE_OFFSET_HOLE",
        BlockStatus = 5 => "NBD_REPLY_TYPE_BLOCK_STATUS",
        BlockStatusExt = 6 => "NBD_REPLY_TYPE_BLOCK_STATUS_EXT",
        Error = CHUNK_ERR | 1 => "NBD_REPLY_TYPE_ERROR",
        ErrorOffset = CHUNK_ERR | 2 => "NBD_REPLY_TYPE_ERROR_OFFSET",
    }
}

impl ChunkType {
    /// Chunk types with bit 15 set are errors, even ones we do not know.
    pub fn is_error(self) -> bool {
        self.raw() & CHUNK_ERR != 0
    }
}

code_enum! {
    /// The errno values NBD puts on the wire (Linux numbering).
    pub enum Errno: u32 {
        Perm = 1 => "EPERM",
        Io = 5 => "EIO",
        NoMem = 12 => "ENOMEM",
        Inval = 22 => "EINVAL",
        NoSpc = 28 => "ENOSPC",
        Overflow = 75 => "EOVERFLOW",
        NotSup = 95 => "ENOTSUP",
        Shutdown = 108 => "ESHUTDOWN",
    }
}

/// A transmission request header (28 bytes, compact form). A WRITE's data follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    pub const LEN: usize = 28;

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(REQUEST_MAGIC);
        buf.put_u16(self.flags);
        buf.put_u16(self.command.raw());
        buf.put_u64(self.cookie);
        buf.put_u64(self.offset);
        buf.put_u32(self.length);
    }

    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(b, "request header");
        let magic = c.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "request header",
                got: magic.into(),
                expected: REQUEST_MAGIC.into(),
            });
        }
        let r = RequestHeader {
            flags: c.u16()?,
            command: Command::from(c.u16()?),
            cookie: c.u64()?,
            offset: c.u64()?,
            length: c.u32()?,
        };
        c.finish()?;
        Ok(r)
    }
}

/// Which kind of reply a 4-byte magic announces, and how long its header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Simple,
    Structured,
}

impl ReplyKind {
    pub fn from_magic(magic: u32) -> Result<Self, ProtoError> {
        match magic {
            SIMPLE_REPLY_MAGIC => Ok(ReplyKind::Simple),
            STRUCTURED_REPLY_MAGIC => Ok(ReplyKind::Structured),
            other => Err(ProtoError::BadMagic {
                what: "reply header",
                got: other.into(),
                expected: STRUCTURED_REPLY_MAGIC.into(),
            }),
        }
    }

    /// Full header length, magic included.
    pub fn header_len(self) -> usize {
        match self {
            ReplyKind::Simple => SimpleReplyHeader::LEN,
            ReplyKind::Structured => StructuredReplyHeader::LEN,
        }
    }
}

/// A simple reply header (16 bytes). For a successful READ the data follows;
/// its length is the request's, which only the requester knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReplyHeader {
    /// 0 on success, else an [`Errno`].
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReplyHeader {
    pub const LEN: usize = 16;

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(SIMPLE_REPLY_MAGIC);
        buf.put_u32(self.error);
        buf.put_u64(self.cookie);
    }

    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(b, "simple reply header");
        let magic = c.u32()?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "simple reply header",
                got: magic.into(),
                expected: SIMPLE_REPLY_MAGIC.into(),
            });
        }
        let r = SimpleReplyHeader {
            error: c.u32()?,
            cookie: c.u64()?,
        };
        c.finish()?;
        Ok(r)
    }
}

/// A structured reply chunk header (20 bytes); `length` payload bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StructuredReplyHeader {
    pub flags: u16,
    pub chunk_type: ChunkType,
    pub cookie: u64,
    pub length: u32,
}

impl StructuredReplyHeader {
    pub const LEN: usize = 20;

    pub fn is_done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(STRUCTURED_REPLY_MAGIC);
        buf.put_u16(self.flags);
        buf.put_u16(self.chunk_type.raw());
        buf.put_u64(self.cookie);
        buf.put_u32(self.length);
    }

    /// Decodes the header and applies the absolute chunk size bound; the
    /// receiver must still check `length` against the request it belongs to.
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(b, "structured reply header");
        let magic = c.u32()?;
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "structured reply header",
                got: magic.into(),
                expected: STRUCTURED_REPLY_MAGIC.into(),
            });
        }
        let r = StructuredReplyHeader {
            flags: c.u16()?,
            chunk_type: ChunkType::from(c.u16()?),
            cookie: c.u64()?,
            length: c.u32()?,
        };
        c.finish()?;
        check_len(
            "structured reply chunk",
            r.length.into(),
            limits::MAX_CHUNK_PAYLOAD as u64,
        )?;
        Ok(r)
    }
}

/// One `NBD_REPLY_TYPE_BLOCK_STATUS` descriptor: `length` bytes with `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDescriptor {
    pub length: u32,
    pub flags: u32,
}

/// The payload of a structured reply chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyChunk {
    None,
    OffsetData {
        offset: u64,
        data: Bytes,
    },
    OffsetHole {
        offset: u64,
        length: u32,
    },
    BlockStatus {
        context_id: u32,
        descriptors: Vec<BlockDescriptor>,
    },
    Error {
        error: u32,
        message: String,
    },
    ErrorOffset {
        error: u32,
        message: String,
        offset: u64,
    },
    Unknown {
        chunk_type: u16,
        data: Bytes,
    },
}

impl ReplyChunk {
    pub fn chunk_type(&self) -> ChunkType {
        match self {
            ReplyChunk::None => ChunkType::None,
            ReplyChunk::OffsetData { .. } => ChunkType::OffsetData,
            ReplyChunk::OffsetHole { .. } => ChunkType::OffsetHole,
            ReplyChunk::BlockStatus { .. } => ChunkType::BlockStatus,
            ReplyChunk::Error { .. } => ChunkType::Error,
            ReplyChunk::ErrorOffset { .. } => ChunkType::ErrorOffset,
            ReplyChunk::Unknown { chunk_type, .. } => ChunkType::from(*chunk_type),
        }
    }

    /// Appends header and payload as a chunk of the reply to `cookie`.
    pub fn encode(&self, cookie: u64, done: bool, buf: &mut BytesMut) {
        let mut p = BytesMut::new();
        match self {
            ReplyChunk::None => {}
            ReplyChunk::OffsetData { offset, data } => {
                p.put_u64(*offset);
                p.put_slice(data);
            }
            ReplyChunk::OffsetHole { offset, length } => {
                p.put_u64(*offset);
                p.put_u32(*length);
            }
            ReplyChunk::BlockStatus {
                context_id,
                descriptors,
            } => {
                p.put_u32(*context_id);
                for d in descriptors {
                    p.put_u32(d.length);
                    p.put_u32(d.flags);
                }
            }
            ReplyChunk::Error { error, message } => {
                p.put_u32(*error);
                put_message(&mut p, message);
            }
            ReplyChunk::ErrorOffset {
                error,
                message,
                offset,
            } => {
                p.put_u32(*error);
                put_message(&mut p, message);
                p.put_u64(*offset);
            }
            ReplyChunk::Unknown { data, .. } => p.put_slice(data),
        }
        StructuredReplyHeader {
            flags: if done { REPLY_FLAG_DONE } else { 0 },
            chunk_type: self.chunk_type(),
            cookie,
            length: p.len() as u32,
        }
        .encode(buf);
        buf.put_slice(&p);
    }

    /// Decodes a chunk payload whose header was already read.
    pub fn decode(chunk_type: ChunkType, payload: &[u8]) -> Result<Self, ProtoError> {
        check_len(
            "structured reply chunk",
            payload.len() as u64,
            limits::MAX_CHUNK_PAYLOAD as u64,
        )?;
        let mut c = Cursor::new(payload, chunk_type.name());
        let chunk = match chunk_type {
            ChunkType::None => ReplyChunk::None,
            ChunkType::OffsetData => {
                let offset = c.u64()?;
                if c.remaining() == 0 {
                    return Err(ProtoError::invalid(chunk_type.name(), "no data"));
                }
                ReplyChunk::OffsetData {
                    offset,
                    data: Bytes::copy_from_slice(c.rest()),
                }
            }
            ChunkType::OffsetHole => {
                let offset = c.u64()?;
                let length = c.u32()?;
                if length == 0 {
                    return Err(ProtoError::invalid(chunk_type.name(), "zero-length hole"));
                }
                ReplyChunk::OffsetHole { offset, length }
            }
            ChunkType::BlockStatus => {
                let context_id = c.u32()?;
                ReplyChunk::BlockStatus {
                    context_id,
                    descriptors: decode_descriptors(c.rest())?,
                }
            }
            ChunkType::Error => {
                let error = c.u32()?;
                let message = take_message(&mut c)?;
                ReplyChunk::Error { error, message }
            }
            ChunkType::ErrorOffset => {
                let error = c.u32()?;
                let message = take_message(&mut c)?;
                let offset = c.u64()?;
                ReplyChunk::ErrorOffset {
                    error,
                    message,
                    offset,
                }
            }
            ChunkType::BlockStatusExt | ChunkType::Unknown(_) => ReplyChunk::Unknown {
                chunk_type: chunk_type.raw(),
                data: Bytes::copy_from_slice(c.rest()),
            },
        };
        c.finish()?;
        if let ReplyChunk::Error { error, .. } | ReplyChunk::ErrorOffset { error, .. } = &chunk {
            if *error == 0 {
                return Err(ProtoError::invalid(chunk_type.name(), "error value is 0"));
            }
        }
        Ok(chunk)
    }
}

/// Decodes the descriptor list of a BLOCK_STATUS chunk (after the context id).
pub fn decode_descriptors(b: &[u8]) -> Result<Vec<BlockDescriptor>, ProtoError> {
    const WHAT: &str = "block status descriptors";
    if b.is_empty() || !b.len().is_multiple_of(8) {
        return Err(ProtoError::invalid(
            WHAT,
            format!("{} bytes is not a nonzero multiple of 8", b.len()),
        ));
    }
    check_len(
        WHAT,
        (b.len() / 8) as u64,
        limits::MAX_BLOCK_STATUS_DESCRIPTORS as u64,
    )?;
    let mut out = Vec::with_capacity(b.len() / 8);
    for d in b.chunks_exact(8) {
        let length = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let flags = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        if length == 0 {
            return Err(ProtoError::invalid(WHAT, "zero-length extent"));
        }
        out.push(BlockDescriptor { length, flags });
    }
    Ok(out)
}

/// Decodes the (error, message) prefix shared by the error chunk types.
pub fn decode_error_prefix(b: &[u8]) -> Result<(u32, String), ProtoError> {
    let mut c = Cursor::new(b, "error chunk");
    let error = c.u32()?;
    let message = take_message(&mut c)?;
    Ok((error, message))
}

fn put_message(buf: &mut BytesMut, message: &str) {
    let m = &message.as_bytes()[..message.len().min(u16::MAX as usize)];
    buf.put_u16(m.len() as u16);
    buf.put_slice(m);
}

fn take_message(c: &mut Cursor<'_>) -> Result<String, ProtoError> {
    let len = c.u16()? as usize;
    Ok(String::from_utf8_lossy(c.bytes(len)?).into_owned())
}
