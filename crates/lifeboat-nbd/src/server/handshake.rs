//! Server side of the fixed-newstyle handshake: greet, read the client's
//! flags, then answer options until the client picks the export
//! (`NBD_OPT_EXPORT_NAME` or `NBD_OPT_GO`) or leaves (`NBD_OPT_ABORT`).
//!
//! Only simple replies are offered: structured replies, meta contexts,
//! extended headers and TLS are refused with `NBD_REP_ERR_UNSUP`, after
//! which clients (QEMU included) carry on without them.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ServeError, ServerOptions, TRANSMISSION_FLAGS};
use crate::proto::handshake::{
    BlockSize, ClientFlags, ExportNameReply, Info, InfoRequest, InfoType, OptionCode, OptionReply,
    OptionRequest, OptionRequestHeader, ReplyType, ServerGreeting, FLAG_C_FIXED_NEWSTYLE,
    FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
};
use crate::proto::limits;

/// Most options one connection may send before choosing an export; real
/// clients send fewer than ten.
pub(super) const MAX_OPTIONS: usize = 64;

/// `NBD_INFO_BLOCK_SIZE`: any alignment works; requests up to `MAX_READ`.
const BLOCK_SIZE: BlockSize = BlockSize {
    minimum: 1,
    preferred: 64 * 1024,
    maximum: limits::MAX_READ,
};

/// How the handshake ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Negotiated {
    /// The export was chosen: transmission starts.
    Transmission,
    /// The client sent `NBD_OPT_ABORT`.
    Aborted,
}

struct Handshake<'a, IO> {
    io: &'a mut IO,
    options: &'a ServerOptions,
    size: u64,
    buf: BytesMut,
}

pub(super) async fn negotiate<IO>(
    io: &mut IO,
    size: u64,
    options: &ServerOptions,
) -> Result<Negotiated, ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut h = Handshake {
        io,
        options,
        size,
        buf: BytesMut::new(),
    };
    ServerGreeting {
        flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
    }
    .encode(&mut h.buf);
    h.send().await?;

    let mut flags = [0u8; ClientFlags::LEN];
    h.read_exact(&mut flags, "before sending its flags").await?;
    let ClientFlags(flags) = ClientFlags::decode(&flags).map_err(|e| h.protocol(e))?;
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        // The protocol requires closing on flags we do not know.
        return Err(ServeError::UnknownClientFlags {
            export: options.export_name.clone(),
            flags,
        });
    }
    let no_zeroes = flags & FLAG_C_NO_ZEROES != 0;

    for _ in 0..MAX_OPTIONS {
        if let Some(done) = h.option(no_zeroes).await? {
            return Ok(done);
        }
    }
    Err(ServeError::TooManyOptions {
        export: options.export_name.clone(),
        max: MAX_OPTIONS,
    })
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Handshake<'_, IO> {
    fn export(&self) -> &str {
        &self.options.export_name
    }

    fn protocol(&self, e: crate::proto::ProtoError) -> ServeError {
        ServeError::protocol(self.export(), e)
    }

    /// The empty name asks for the default export, which is the only one.
    fn serves(&self, name: &str) -> bool {
        name.is_empty() || name == self.export()
    }

    async fn read_exact(&mut self, buf: &mut [u8], during: &'static str) -> Result<(), ServeError> {
        match self.io.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) => Err(ServeError::from_io(self.export(), during, e)),
        }
    }

    /// Writes and clears `self.buf`.
    async fn send(&mut self) -> Result<(), ServeError> {
        let r = async {
            self.io.write_all(&self.buf).await?;
            self.io.flush().await
        }
        .await;
        self.buf.clear();
        r.map_err(|e| ServeError::from_io(self.export(), "during the handshake", e))
    }

    fn reply(&mut self, option: OptionCode, reply: OptionReply) {
        reply.encode(option, &mut self.buf);
    }

    fn error(&mut self, option: OptionCode, reply_type: ReplyType, message: String) {
        tracing::debug!(export = self.export(), %option, %reply_type, message, "nbd option refused");
        self.reply(
            option,
            OptionReply::Error {
                reply_type,
                message,
            },
        );
    }

    /// Reads and answers one option; `Some` when the handshake is over.
    async fn option(&mut self, no_zeroes: bool) -> Result<Option<Negotiated>, ServeError> {
        let mut hdr = [0u8; OptionRequestHeader::LEN];
        self.read_exact(&mut hdr, "during the handshake").await?;
        // Bounds the payload length, so the allocation below is at most 64 KiB.
        let hdr = OptionRequestHeader::decode(&hdr).map_err(|e| self.protocol(e))?;
        let mut payload = vec![0u8; hdr.length as usize];
        self.read_exact(&mut payload, "in the middle of an option")
            .await?;
        let option = hdr.option;
        let request = match OptionRequest::decode(option, &payload) {
            Ok(r) => r,
            // No reply exists for a bad NBD_OPT_EXPORT_NAME; anything else
            // can be refused, and the stream is still in step.
            Err(e) if option == OptionCode::ExportName => return Err(self.protocol(e)),
            Err(e) => {
                self.error(option, ReplyType::ErrInvalid, e.to_string());
                self.send().await?;
                return Ok(None);
            }
        };
        let done = match request {
            OptionRequest::ExportName(name) => {
                if !self.serves(&name) {
                    return Err(ServeError::UnknownExport {
                        export: self.export().to_owned(),
                        requested: name,
                    });
                }
                ExportNameReply {
                    size: self.size,
                    transmission_flags: TRANSMISSION_FLAGS,
                }
                .encode(no_zeroes, &mut self.buf);
                Some(Negotiated::Transmission)
            }
            OptionRequest::Go(r) => self.info(option, r).then_some(Negotiated::Transmission),
            OptionRequest::Info(r) => {
                self.info(option, r);
                None
            }
            OptionRequest::List => {
                self.reply(
                    option,
                    OptionReply::Server {
                        name: self.export().to_owned(),
                        description: String::new(),
                    },
                );
                self.reply(option, OptionReply::Ack);
                None
            }
            OptionRequest::Abort => {
                self.reply(option, OptionReply::Ack);
                // The client may already be gone; it asked to leave anyway.
                let _ = self.send().await;
                return Ok(Some(Negotiated::Aborted));
            }
            OptionRequest::StartTls
            | OptionRequest::StructuredReply
            | OptionRequest::ListMetaContext(_)
            | OptionRequest::SetMetaContext(_)
            | OptionRequest::ExtendedHeaders
            | OptionRequest::Unknown { .. } => {
                let message = format!("{option} is not supported by this read-only server");
                self.error(option, ReplyType::ErrUnsup, message);
                None
            }
        };
        self.send().await?;
        Ok(done)
    }

    /// Answers `NBD_OPT_INFO` / `NBD_OPT_GO`; true if the export exists.
    fn info(&mut self, option: OptionCode, r: InfoRequest) -> bool {
        if !self.serves(&r.export_name) {
            let message = format!(
                "no export {:?}; this server serves {:?}",
                r.export_name,
                self.export()
            );
            self.error(option, ReplyType::ErrUnknown, message);
            return false;
        }
        self.reply(
            option,
            OptionReply::Info(Info::Export {
                size: self.size,
                transmission_flags: TRANSMISSION_FLAGS,
            }),
        );
        if r.info_requests.contains(&InfoType::BlockSize) {
            self.reply(option, OptionReply::Info(Info::BlockSize(BLOCK_SIZE)));
        }
        if r.info_requests.contains(&InfoType::Name) {
            let name = Info::Name(self.export().to_owned());
            self.reply(option, OptionReply::Info(name));
        }
        self.reply(option, OptionReply::Ack);
        true
    }
}
