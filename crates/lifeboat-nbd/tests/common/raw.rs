//! A hand-driven NBD client for the server tests: it sends exactly the bytes
//! a test asks for, including ones a well-behaved client never would.

use std::time::Duration;

use bytes::BytesMut;
use lifeboat_nbd::proto::handshake::*;
use lifeboat_nbd::proto::transmission::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Long enough for a busy machine; a server that hangs still fails the test.
pub const RAW_LIMIT: Duration = Duration::from_secs(30);

pub struct RawClient<IO> {
    pub io: IO,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> RawClient<IO> {
    pub fn new(io: IO) -> Self {
        RawClient { io }
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.io.write_all(b).await.unwrap();
    }

    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        tokio::time::timeout(RAW_LIMIT, self.io.read_exact(&mut b))
            .await
            .expect("the server went silent")
            .unwrap();
        b
    }

    /// True once the server has closed the connection (EOF or reset),
    /// after discarding whatever it still sent.
    pub async fn closed_by_server(&mut self) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match tokio::time::timeout(RAW_LIMIT, self.io.read(&mut sink)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// True if the server closes the connection without sending another byte.
    pub async fn eof_next(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(RAW_LIMIT, self.io.read(&mut b)).await,
            Ok(Ok(0))
        )
    }

    /// Reads the greeting and answers with `flags`.
    pub async fn greet(&mut self, flags: u32) -> ServerGreeting {
        let g = self.read_exact(ServerGreeting::LEN).await;
        let g = ServerGreeting::decode(&g).unwrap();
        let mut b = BytesMut::new();
        ClientFlags(flags).encode(&mut b);
        self.send(&b).await;
        g
    }

    pub async fn send_option(&mut self, req: &OptionRequest) {
        let mut b = BytesMut::new();
        req.encode(&mut b);
        self.send(&b).await;
    }

    pub async fn option_reply(&mut self) -> (OptionReplyHeader, OptionReply) {
        let h = self.read_exact(OptionReplyHeader::LEN).await;
        let h = OptionReplyHeader::decode(&h).unwrap();
        let p = self.read_exact(h.length as usize).await;
        (h, OptionReply::decode(h.reply_type, &p).unwrap())
    }

    /// Option replies up to and including the final one (ACK or an error).
    pub async fn option_replies(&mut self) -> Vec<OptionReply> {
        let mut out = Vec::new();
        loop {
            let (h, r) = self.option_reply().await;
            let last = h.reply_type == ReplyType::Ack || h.reply_type.is_error();
            out.push(r);
            if last {
                return out;
            }
        }
    }

    /// Greets and opens `export` with `NBD_OPT_EXPORT_NAME`, without zeroes;
    /// returns (size, transmission flags).
    pub async fn open(&mut self, export: &str) -> (u64, u16) {
        self.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        self.send_option(&OptionRequest::ExportName(export.into()))
            .await;
        let r = self.read_exact(ExportNameReply::LEN).await;
        let r = ExportNameReply::decode(&r).unwrap();
        (r.size, r.transmission_flags)
    }

    pub async fn request(&mut self, command: Command, cookie: u64, offset: u64, length: u32) {
        let mut b = BytesMut::new();
        RequestHeader {
            flags: 0,
            command,
            cookie,
            offset,
            length,
        }
        .encode(&mut b);
        self.send(&b).await;
    }

    /// A simple reply header: (error, cookie).
    pub async fn reply(&mut self) -> (u32, u64) {
        let h = self.read_exact(SimpleReplyHeader::LEN).await;
        let h = SimpleReplyHeader::decode(&h).unwrap();
        (h.error, h.cookie)
    }

    /// Sends a READ and returns its data, checking the reply belongs to it.
    pub async fn read(&mut self, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
        self.request(Command::Read, cookie, offset, length).await;
        assert_eq!(self.reply().await, (0, cookie));
        self.read_exact(length as usize).await
    }

    /// Sends a request and returns the error of its (data-less) reply.
    pub async fn errno(&mut self, command: Command, cookie: u64, offset: u64, length: u32) -> u32 {
        self.request(command, cookie, offset, length).await;
        let (error, got) = self.reply().await;
        assert_eq!(got, cookie);
        error
    }
}
