//! Handshake phase messages (fixed newstyle): the server greeting, the client
//! flags, option requests and option replies, with the `NBD_INFO_*` payloads.
//!
//! Every type encodes and decodes so that both the client and a future server
//! share one definition. Decoders take the payload after the fixed header has
//! been read and its length bounded with [`limits::MAX_OPTION_PAYLOAD`].

use bytes::{BufMut, Bytes, BytesMut};

use super::limits;
use super::wire::{check_len, code_enum, Cursor, ProtoError};

/// "NBDMAGIC": first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": follows [`NBD_MAGIC`] in the greeting, and starts every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Server handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: the 124 zero bytes after NBD_OPT_EXPORT_NAME may be omitted.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

code_enum! {
    /// `NBD_OPT_*`: the option a client asks for.
    pub enum OptionCode: u32 {
        ExportName = 1 => "NBD_OPT_EXPORT_NAME",
        Abort = 2 => "NBD_OPT_ABORT",
        List = 3 => "NBD_OPT_LIST",
        StartTls = 5 => "NBD_OPT_STARTTLS",
        Info = 6 => "NBD_OPT_INFO",
        Go = 7 => "NBD_OPT_GO",
        StructuredReply = 8 => "NBD_OPT_STRUCTURED_REPLY",
        ListMetaContext = 9 => "NBD_OPT_LIST_META_CONTEXT",
        SetMetaContext = 10 => "NBD_OPT_SET_META_CONTEXT",
        ExtendedHeaders = 11 => "NBD_OPT_EXTENDED_HEADERS",
    }
}

const REP_ERR: u32 = 1 << 31;

code_enum! {
    /// `NBD_REP_*`: the type of an option reply. Types with bit 31 set are errors.
    pub enum ReplyType: u32 {
        Ack = 1 => "NBD_REP_ACK",
        Server = 2 => "NBD_REP_SERVER",
        Info = 3 => "NBD_REP_INFO",
        MetaContext = 4 => "NBD_REP_META_CONTEXT",
        ErrUnsup = REP_ERR | 1 => "NBD_REP_ERR_UNSUP",
        ErrPolicy = REP_ERR | 2 => "NBD_REP_ERR_POLICY",
        ErrInvalid = REP_ERR | 3 => "NBD_REP_ERR_INVALID",
        ErrPlatform = REP_ERR | 4 => "NBD_REP_ERR_PLATFORM",
        ErrTlsReqd = REP_ERR | 5 => "NBD_REP_ERR_TLS_REQD",
        ErrUnknown = REP_ERR | 6 => "NBD_REP_ERR_UNKNOWN",
        ErrShutdown = REP_ERR | 7 => "NBD_REP_ERR_SHUTDOWN",
        ErrBlockSizeReqd = REP_ERR | 8 => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        ErrTooBig = REP_ERR | 9 => "NBD_REP_ERR_TOO_BIG",
        ErrExtHeaderReqd = REP_ERR | 10 => "NBD_REP_ERR_EXT_HEADER_REQD",
    }
}

impl ReplyType {
    pub fn is_error(self) -> bool {
        self.raw() & REP_ERR != 0
    }
}

code_enum! {
    /// `NBD_INFO_*`: what an `NBD_REP_INFO` reply describes.
    pub enum InfoType: u16 {
        Export = 0 => "NBD_INFO_EXPORT",
        Name = 1 => "NBD_INFO_NAME",
        Description = 2 => "NBD_INFO_DESCRIPTION",
        BlockSize = 3 => "NBD_INFO_BLOCK_SIZE",
    }
}

/// The 18 bytes the server sends first: both magics and its handshake flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerGreeting {
    pub flags: u16,
}

impl ServerGreeting {
    pub const LEN: usize = 18;

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(NBD_MAGIC);
        buf.put_u64(IHAVEOPT);
        buf.put_u16(self.flags);
    }

    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(b, "server greeting");
        let magic = c.u64()?;
        if magic != NBD_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "server greeting",
                got: magic,
                expected: NBD_MAGIC,
            });
        }
        let opt = c.u64()?;
        if opt != IHAVEOPT {
            // 0x00420281861253 is the oldstyle magic; we only speak newstyle.
            return Err(ProtoError::BadMagic {
                what: "server greeting (oldstyle server?)",
                got: opt,
                expected: IHAVEOPT,
            });
        }
        let flags = c.u16()?;
        c.finish()?;
        Ok(ServerGreeting { flags })
    }
}

/// The client's 4-byte answer to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags(pub u32);

impl ClientFlags {
    pub const LEN: usize = 4;

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.0);
    }

    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(b, "client flags");
        let v = c.u32()?;
        c.finish()?;
        Ok(ClientFlags(v))
    }
}

/// Header of an option request: magic, option code, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionRequestHeader {
    pub option: OptionCode,
    pub length: u32,
}

impl OptionRequestHeader {
    pub const LEN: usize = 16;

    /// Decodes the header and bounds the payload length.
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(b, "option request header");
        let magic = c.u64()?;
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic {
                what: "option request header",
                got: magic,
                expected: IHAVEOPT,
            });
        }
        let option = OptionCode::from(c.u32()?);
        let length = c.u32()?;
        c.finish()?;
        check_len(
            "option request payload",
            length.into(),
            limits::MAX_OPTION_PAYLOAD as u64,
        )?;
        Ok(OptionRequestHeader { option, length })
    }
}

/// Payload of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub export_name: String,
    pub info_requests: Vec<InfoType>,
}

/// Payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export_name: String,
    pub queries: Vec<String>,
}

/// An option request, header included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionRequest {
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    ListMetaContext(MetaContextRequest),
    SetMetaContext(MetaContextRequest),
    ExtendedHeaders,
    /// An option this implementation does not know; a server answers `NBD_REP_ERR_UNSUP`.
    Unknown {
        option: u32,
        data: Bytes,
    },
}

impl OptionRequest {
    pub fn code(&self) -> OptionCode {
        match self {
            OptionRequest::ExportName(_) => OptionCode::ExportName,
            OptionRequest::Abort => OptionCode::Abort,
            OptionRequest::List => OptionCode::List,
            OptionRequest::StartTls => OptionCode::StartTls,
            OptionRequest::Info(_) => OptionCode::Info,
            OptionRequest::Go(_) => OptionCode::Go,
            OptionRequest::StructuredReply => OptionCode::StructuredReply,
            OptionRequest::ListMetaContext(_) => OptionCode::ListMetaContext,
            OptionRequest::SetMetaContext(_) => OptionCode::SetMetaContext,
            OptionRequest::ExtendedHeaders => OptionCode::ExtendedHeaders,
            OptionRequest::Unknown { option, .. } => OptionCode::from(*option),
        }
    }

    /// Appends header and payload.
    pub fn encode(&self, buf: &mut BytesMut) {
        let mut payload = BytesMut::new();
        match self {
            OptionRequest::ExportName(name) => payload.put_slice(name.as_bytes()),
            OptionRequest::Info(r) | OptionRequest::Go(r) => {
                put_string_u32(&mut payload, &r.export_name);
                payload.put_u16(r.info_requests.len() as u16);
                for t in &r.info_requests {
                    payload.put_u16(t.raw());
                }
            }
            OptionRequest::ListMetaContext(r) | OptionRequest::SetMetaContext(r) => {
                put_string_u32(&mut payload, &r.export_name);
                payload.put_u32(r.queries.len() as u32);
                for q in &r.queries {
                    put_string_u32(&mut payload, q);
                }
            }
            OptionRequest::Unknown { data, .. } => payload.put_slice(data),
            OptionRequest::Abort
            | OptionRequest::List
            | OptionRequest::StartTls
            | OptionRequest::StructuredReply
            | OptionRequest::ExtendedHeaders => {}
        }
        buf.put_u64(IHAVEOPT);
        buf.put_u32(self.code().raw());
        buf.put_u32(payload.len() as u32);
        buf.put_slice(&payload);
    }

    /// Decodes the payload of an option whose header was already read.
    pub fn decode(option: OptionCode, payload: &[u8]) -> Result<Self, ProtoError> {
        check_len(
            "option request payload",
            payload.len() as u64,
            limits::MAX_OPTION_PAYLOAD as u64,
        )?;
        let mut c = Cursor::new(payload, option.name());
        let req = match option {
            OptionCode::ExportName => {
                let n = c.remaining();
                OptionRequest::ExportName(c.string(n, limits::MAX_STRING)?)
            }
            OptionCode::Abort => OptionRequest::Abort,
            OptionCode::List => OptionRequest::List,
            OptionCode::StartTls => OptionRequest::StartTls,
            OptionCode::StructuredReply => OptionRequest::StructuredReply,
            OptionCode::ExtendedHeaders => OptionRequest::ExtendedHeaders,
            OptionCode::Info | OptionCode::Go => {
                let export_name = c.string_u32(limits::MAX_STRING)?;
                let count = c.u16()? as usize;
                // Each entry is 2 bytes, so the payload bound also bounds the Vec.
                let raw = c.bytes(count * 2)?;
                let info_requests = raw
                    .chunks_exact(2)
                    .map(|p| InfoType::from(u16::from_be_bytes([p[0], p[1]])))
                    .collect();
                let r = InfoRequest {
                    export_name,
                    info_requests,
                };
                if option == OptionCode::Go {
                    OptionRequest::Go(r)
                } else {
                    OptionRequest::Info(r)
                }
            }
            OptionCode::ListMetaContext | OptionCode::SetMetaContext => {
                let export_name = c.string_u32(limits::MAX_STRING)?;
                let count = c.u32()? as usize;
                // Each query takes at least its 4-byte length.
                if count > c.remaining() / 4 {
                    return Err(ProtoError::invalid(
                        option.name(),
                        format!("{count} queries cannot fit in {} bytes", c.remaining()),
                    ));
                }
                let mut queries = Vec::with_capacity(count);
                for _ in 0..count {
                    queries.push(c.string_u32(limits::MAX_STRING)?);
                }
                let r = MetaContextRequest {
                    export_name,
                    queries,
                };
                if option == OptionCode::SetMetaContext {
                    OptionRequest::SetMetaContext(r)
                } else {
                    OptionRequest::ListMetaContext(r)
                }
            }
            OptionCode::Unknown(code) => OptionRequest::Unknown {
                option: code,
                data: Bytes::copy_from_slice(c.rest()),
            },
        };
        c.finish()?;
        Ok(req)
    }
}

/// Header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: OptionCode,
    pub reply_type: ReplyType,
    pub length: u32,
}

impl OptionReplyHeader {
    pub const LEN: usize = 20;

    /// Decodes the header and bounds the payload length.
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(b, "option reply header");
        let magic = c.u64()?;
        if magic != OPTION_REPLY_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "option reply header",
                got: magic,
                expected: OPTION_REPLY_MAGIC,
            });
        }
        let option = OptionCode::from(c.u32()?);
        let reply_type = ReplyType::from(c.u32()?);
        let length = c.u32()?;
        c.finish()?;
        check_len(
            "option reply payload",
            length.into(),
            limits::MAX_OPTION_PAYLOAD as u64,
        )?;
        Ok(OptionReplyHeader {
            option,
            reply_type,
            length,
        })
    }
}

/// Payload of an `NBD_REP_INFO` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, transmission_flags: u16 },
    Name(String),
    Description(String),
    BlockSize(BlockSize),
    Unknown { info_type: u16, data: Bytes },
}

/// The server's block size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// An option reply, header included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionReply {
    Ack,
    Server {
        name: String,
        description: String,
    },
    Info(Info),
    MetaContext {
        id: u32,
        name: String,
    },
    /// Any `NBD_REP_ERR_*`; the message is for humans and decoded lossily.
    Error {
        reply_type: ReplyType,
        message: String,
    },
    Unknown {
        reply_type: u32,
        data: Bytes,
    },
}

impl OptionReply {
    pub fn reply_type(&self) -> ReplyType {
        match self {
            OptionReply::Ack => ReplyType::Ack,
            OptionReply::Server { .. } => ReplyType::Server,
            OptionReply::Info(_) => ReplyType::Info,
            OptionReply::MetaContext { .. } => ReplyType::MetaContext,
            OptionReply::Error { reply_type, .. } => *reply_type,
            OptionReply::Unknown { reply_type, .. } => ReplyType::from(*reply_type),
        }
    }

    /// Appends header and payload, as an answer to `option`.
    pub fn encode(&self, option: OptionCode, buf: &mut BytesMut) {
        let mut p = BytesMut::new();
        match self {
            OptionReply::Ack => {}
            OptionReply::Server { name, description } => {
                put_string_u32(&mut p, name);
                p.put_slice(description.as_bytes());
            }
            OptionReply::Info(info) => match info {
                Info::Export {
                    size,
                    transmission_flags,
                } => {
                    p.put_u16(InfoType::Export.raw());
                    p.put_u64(*size);
                    p.put_u16(*transmission_flags);
                }
                Info::Name(s) => {
                    p.put_u16(InfoType::Name.raw());
                    p.put_slice(s.as_bytes());
                }
                Info::Description(s) => {
                    p.put_u16(InfoType::Description.raw());
                    p.put_slice(s.as_bytes());
                }
                Info::BlockSize(b) => {
                    p.put_u16(InfoType::BlockSize.raw());
                    p.put_u32(b.minimum);
                    p.put_u32(b.preferred);
                    p.put_u32(b.maximum);
                }
                Info::Unknown { info_type, data } => {
                    p.put_u16(*info_type);
                    p.put_slice(data);
                }
            },
            OptionReply::MetaContext { id, name } => {
                p.put_u32(*id);
                p.put_slice(name.as_bytes());
            }
            OptionReply::Error { message, .. } => p.put_slice(message.as_bytes()),
            OptionReply::Unknown { data, .. } => p.put_slice(data),
        }
        buf.put_u64(OPTION_REPLY_MAGIC);
        buf.put_u32(option.raw());
        buf.put_u32(self.reply_type().raw());
        buf.put_u32(p.len() as u32);
        buf.put_slice(&p);
    }

    /// Decodes the payload of a reply whose header was already read.
    pub fn decode(reply_type: ReplyType, payload: &[u8]) -> Result<Self, ProtoError> {
        check_len(
            "option reply payload",
            payload.len() as u64,
            limits::MAX_OPTION_PAYLOAD as u64,
        )?;
        let mut c = Cursor::new(payload, reply_type.name());
        let reply = match reply_type {
            ReplyType::Ack => OptionReply::Ack,
            ReplyType::Server => {
                let name = c.string_u32(limits::MAX_STRING)?;
                let n = c.remaining();
                let description = c.string(n, limits::MAX_STRING)?;
                OptionReply::Server { name, description }
            }
            ReplyType::Info => OptionReply::Info(decode_info(&mut c)?),
            ReplyType::MetaContext => {
                let id = c.u32()?;
                let n = c.remaining();
                let name = c.string(n, limits::MAX_STRING)?;
                OptionReply::MetaContext { id, name }
            }
            t if t.is_error() => OptionReply::Error {
                reply_type: t,
                message: String::from_utf8_lossy(c.rest()).into_owned(),
            },
            t => OptionReply::Unknown {
                reply_type: t.raw(),
                data: Bytes::copy_from_slice(c.rest()),
            },
        };
        c.finish()?;
        Ok(reply)
    }
}

fn decode_info(c: &mut Cursor<'_>) -> Result<Info, ProtoError> {
    let info = match InfoType::from(c.u16()?) {
        InfoType::Export => Info::Export {
            size: c.u64()?,
            transmission_flags: c.u16()?,
        },
        InfoType::Name => {
            let n = c.remaining();
            Info::Name(c.string(n, limits::MAX_STRING)?)
        }
        InfoType::Description => {
            let n = c.remaining();
            Info::Description(c.string(n, limits::MAX_STRING)?)
        }
        InfoType::BlockSize => {
            let b = BlockSize {
                minimum: c.u32()?,
                preferred: c.u32()?,
                maximum: c.u32()?,
            };
            validate_block_size(&b)?;
            Info::BlockSize(b)
        }
        InfoType::Unknown(info_type) => Info::Unknown {
            info_type,
            data: Bytes::copy_from_slice(c.rest()),
        },
    };
    Ok(info)
}

/// The constraints the protocol puts on `NBD_INFO_BLOCK_SIZE`; a client sizes
/// its requests from these numbers, so nonsense here must not get through.
fn validate_block_size(b: &BlockSize) -> Result<(), ProtoError> {
    let ok = b.minimum.is_power_of_two()
        && b.minimum <= 64 * 1024
        && b.preferred.is_power_of_two()
        && b.preferred >= b.minimum
        && b.maximum >= b.minimum
        && (b.maximum == u32::MAX || b.maximum.is_multiple_of(b.minimum));
    if ok {
        Ok(())
    } else {
        Err(ProtoError::invalid(
            "NBD_INFO_BLOCK_SIZE",
            format!(
                "inconsistent sizes min={} preferred={} max={}",
                b.minimum, b.preferred, b.maximum
            ),
        ))
    }
}

/// What the server sends after `NBD_OPT_EXPORT_NAME` (no option reply header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    pub size: u64,
    pub transmission_flags: u16,
}

impl ExportNameReply {
    /// Length without the trailing zeroes.
    pub const LEN: usize = 10;
    pub const ZEROES: usize = 124;

    pub fn encode(&self, no_zeroes: bool, buf: &mut BytesMut) {
        buf.put_u64(self.size);
        buf.put_u16(self.transmission_flags);
        if !no_zeroes {
            buf.put_bytes(0, Self::ZEROES);
        }
    }

    /// Decodes the first [`Self::LEN`] bytes; the caller skips any zeroes.
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(b, "NBD_OPT_EXPORT_NAME reply");
        let r = ExportNameReply {
            size: c.u64()?,
            transmission_flags: c.u16()?,
        };
        c.finish()?;
        Ok(r)
    }
}

fn put_string_u32(buf: &mut BytesMut, s: &str) {
    buf.put_u32(s.len() as u32);
    buf.put_slice(s.as_bytes());
}
