//! Client side of the fixed-newstyle handshake: structured replies, meta
//! contexts, then `NBD_OPT_GO` (falling back to `NBD_OPT_EXPORT_NAME` on an
//! old server when no meta context is needed). Extended headers are not asked for.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{DisconnectReason, NbdError};
use crate::proto::handshake::{
    BlockSize, ClientFlags, ExportNameReply, Info, InfoRequest, InfoType, MetaContextRequest,
    OptionCode, OptionReply, OptionReplyHeader, OptionRequest, ReplyType, ServerGreeting,
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
};
use crate::proto::ProtoError;

use super::ConnectOptions;

/// A meta context the server granted, with the id it assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContext {
    pub name: String,
    pub id: u32,
}

/// What the handshake established about the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub transmission_flags: u16,
    /// Present when the server sent `NBD_INFO_BLOCK_SIZE`.
    pub block_size: Option<BlockSize>,
    pub structured_replies: bool,
}

pub(crate) struct Negotiated {
    pub info: ExportInfo,
    pub contexts: Vec<MetaContext>,
}

/// Most `NBD_REP_META_CONTEXT` replies accepted for one request.
const MAX_CONTEXT_REPLIES: usize = 1024;

struct Handshake<'a, S> {
    stream: &'a mut S,
    endpoint: &'a str,
}

pub(crate) async fn negotiate<S>(
    stream: &mut S,
    endpoint: &str,
    opts: &ConnectOptions,
) -> Result<Negotiated, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut h = Handshake { stream, endpoint };
    let mut greeting = [0u8; ServerGreeting::LEN];
    h.read_exact(&mut greeting).await?;
    let greeting = ServerGreeting::decode(&greeting).map_err(|e| h.protocol(e))?;
    if greeting.flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Unsupported {
            endpoint: endpoint.to_owned(),
            what: "fixed newstyle negotiation".into(),
        });
    }
    let no_zeroes = greeting.flags & FLAG_NO_ZEROES != 0;
    let mut flags = FLAG_C_FIXED_NEWSTYLE;
    if no_zeroes {
        flags |= FLAG_C_NO_ZEROES;
    }
    let mut buf = BytesMut::new();
    ClientFlags(flags).encode(&mut buf);
    h.write(&buf).await?;

    let structured_replies = h.structured_replies().await?;
    let mut contexts = Vec::new();
    if !opts.meta_contexts.is_empty() {
        if !structured_replies {
            return Err(NbdError::Unsupported {
                endpoint: endpoint.to_owned(),
                what: "structured replies, needed for meta contexts".into(),
            });
        }
        contexts = h.set_meta_contexts(opts).await?;
    }
    let info = match h.go(&opts.export_name, structured_replies).await? {
        Some(info) => info,
        None if opts.meta_contexts.is_empty() => {
            h.export_name(&opts.export_name, no_zeroes, structured_replies)
                .await?
        }
        None => {
            return Err(NbdError::Unsupported {
                endpoint: endpoint.to_owned(),
                what: "NBD_OPT_GO, needed for meta contexts".into(),
            })
        }
    };
    Ok(Negotiated { info, contexts })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Handshake<'_, S> {
    fn protocol(&self, e: ProtoError) -> NbdError {
        NbdError::Disconnected {
            endpoint: self.endpoint.to_owned(),
            reason: DisconnectReason::Protocol(e),
        }
    }

    fn io(&self, e: std::io::Error) -> NbdError {
        NbdError::Disconnected {
            endpoint: self.endpoint.to_owned(),
            reason: DisconnectReason::from_io(&e),
        }
    }

    fn refused(&self, option: OptionCode, reply: ReplyType, message: String) -> NbdError {
        NbdError::OptionRefused {
            endpoint: self.endpoint.to_owned(),
            option,
            reply,
            message,
        }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NbdError> {
        match self.stream.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    async fn write(&mut self, buf: &[u8]) -> Result<(), NbdError> {
        let r = async {
            self.stream.write_all(buf).await?;
            self.stream.flush().await
        }
        .await;
        r.map_err(|e| self.io(e))
    }

    async fn send_option(&mut self, req: &OptionRequest) -> Result<(), NbdError> {
        let mut buf = BytesMut::new();
        req.encode(&mut buf);
        self.write(&buf).await
    }

    /// Reads one option reply, which must answer `option`.
    async fn read_reply(&mut self, option: OptionCode) -> Result<OptionReply, NbdError> {
        let mut hdr = [0u8; OptionReplyHeader::LEN];
        self.read_exact(&mut hdr).await?;
        let hdr = OptionReplyHeader::decode(&hdr).map_err(|e| self.protocol(e))?;
        if hdr.option != option {
            return Err(self.protocol(ProtoError::invalid(
                "option reply",
                format!("answers {} while {} was asked", hdr.option, option),
            )));
        }
        // Bounded by OptionReplyHeader::decode (64 KiB).
        let mut payload = vec![0u8; hdr.length as usize];
        self.read_exact(&mut payload).await?;
        OptionReply::decode(hdr.reply_type, &payload).map_err(|e| self.protocol(e))
    }

    fn unexpected(&self, option: OptionCode, reply: &OptionReply) -> NbdError {
        self.protocol(ProtoError::invalid(
            "option reply",
            format!("unexpected {} in answer to {}", reply.reply_type(), option),
        ))
    }

    async fn structured_replies(&mut self) -> Result<bool, NbdError> {
        let opt = OptionCode::StructuredReply;
        self.send_option(&OptionRequest::StructuredReply).await?;
        match self.read_reply(opt).await? {
            OptionReply::Ack => Ok(true),
            OptionReply::Error {
                reply_type: ReplyType::ErrUnsup,
                ..
            } => Ok(false),
            OptionReply::Error {
                reply_type,
                message,
            } => Err(self.refused(opt, reply_type, message)),
            other => Err(self.unexpected(opt, &other)),
        }
    }

    async fn set_meta_contexts(
        &mut self,
        opts: &ConnectOptions,
    ) -> Result<Vec<MetaContext>, NbdError> {
        let opt = OptionCode::SetMetaContext;
        self.send_option(&OptionRequest::SetMetaContext(MetaContextRequest {
            export_name: opts.export_name.clone(),
            queries: opts.meta_contexts.clone(),
        }))
        .await?;
        let mut granted: Vec<MetaContext> = Vec::new();
        loop {
            match self.read_reply(opt).await? {
                OptionReply::Ack => break,
                OptionReply::MetaContext { id, name } => {
                    if granted.len() >= MAX_CONTEXT_REPLIES {
                        return Err(self.protocol(ProtoError::TooLong {
                            what: "meta context replies",
                            len: granted.len() as u64 + 1,
                            max: MAX_CONTEXT_REPLIES as u64,
                        }));
                    }
                    if granted.iter().any(|c| c.id == id) {
                        return Err(self.protocol(ProtoError::invalid(
                            "NBD_REP_META_CONTEXT",
                            format!("context id {id} assigned twice"),
                        )));
                    }
                    granted.push(MetaContext { name, id });
                }
                OptionReply::Error {
                    reply_type: ReplyType::ErrUnknown,
                    message,
                } => return Err(self.export_not_found(&opts.export_name, message)),
                OptionReply::Error {
                    reply_type,
                    message,
                } => return Err(self.refused(opt, reply_type, message)),
                other => return Err(self.unexpected(opt, &other)),
            }
        }
        // Keep only what was asked for, in the order asked; the server may
        // not grant something we asked for, and must not invent extras.
        let mut out = Vec::with_capacity(opts.meta_contexts.len());
        for want in &opts.meta_contexts {
            match granted.iter().find(|c| &c.name == want) {
                Some(c) => out.push(c.clone()),
                None => {
                    return Err(NbdError::MetaContextNotGranted {
                        endpoint: self.endpoint.to_owned(),
                        context: want.clone(),
                    })
                }
            }
        }
        Ok(out)
    }

    fn export_not_found(&self, export: &str, message: String) -> NbdError {
        NbdError::ExportNotFound {
            endpoint: self.endpoint.to_owned(),
            export: export.to_owned(),
            message,
        }
    }

    /// `NBD_OPT_GO`; `None` if the server does not know the option.
    async fn go(
        &mut self,
        export: &str,
        structured_replies: bool,
    ) -> Result<Option<ExportInfo>, NbdError> {
        let opt = OptionCode::Go;
        self.send_option(&OptionRequest::Go(InfoRequest {
            export_name: export.to_owned(),
            info_requests: vec![InfoType::BlockSize],
        }))
        .await?;
        let mut export_info = None;
        let mut block_size = None;
        loop {
            match self.read_reply(opt).await? {
                OptionReply::Ack => break,
                OptionReply::Info(Info::Export {
                    size,
                    transmission_flags,
                }) => export_info = Some((size, transmission_flags)),
                OptionReply::Info(Info::BlockSize(b)) => block_size = Some(b),
                OptionReply::Info(_) => {}
                OptionReply::Error {
                    reply_type: ReplyType::ErrUnsup,
                    ..
                } => return Ok(None),
                OptionReply::Error {
                    reply_type: ReplyType::ErrUnknown,
                    message,
                } => return Err(self.export_not_found(export, message)),
                OptionReply::Error {
                    reply_type,
                    message,
                } => return Err(self.refused(opt, reply_type, message)),
                other => return Err(self.unexpected(opt, &other)),
            }
        }
        let Some((size, transmission_flags)) = export_info else {
            return Err(self.protocol(ProtoError::invalid(
                "NBD_OPT_GO",
                "acknowledged without NBD_INFO_EXPORT",
            )));
        };
        Ok(Some(ExportInfo {
            size,
            transmission_flags,
            block_size,
            structured_replies,
        }))
    }

    async fn export_name(
        &mut self,
        export: &str,
        no_zeroes: bool,
        structured_replies: bool,
    ) -> Result<ExportInfo, NbdError> {
        self.send_option(&OptionRequest::ExportName(export.to_owned()))
            .await?;
        let mut b = [0u8; ExportNameReply::LEN + ExportNameReply::ZEROES];
        let n = if no_zeroes {
            ExportNameReply::LEN
        } else {
            b.len()
        };
        self.read_exact(&mut b[..n]).await?;
        let r =
            ExportNameReply::decode(&b[..ExportNameReply::LEN]).map_err(|e| self.protocol(e))?;
        Ok(ExportInfo {
            size: r.size,
            transmission_flags: r.transmission_flags,
            block_size: None,
            structured_replies,
        })
    }
}
