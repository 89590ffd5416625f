//! A scriptable NBD server on a Unix socket, built from the crate's own
//! encoders, for the misbehaviours no real server shows on demand.

use std::future::Future;
use std::path::PathBuf;

use bytes::BytesMut;
use lifeboat_nbd::proto::handshake::*;
use lifeboat_nbd::proto::transmission::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

pub const FAKE_SIZE: u64 = 1 << 20;
pub const FAKE_CONTEXT: &str = "base:allocation";
pub const FAKE_CONTEXT_ID: u32 = 5;

pub struct FakeServer {
    pub _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub task: tokio::task::JoinHandle<()>,
}

/// Listens on a fresh socket and runs `script` on the first connection.
pub fn fake_server<F, Fut>(script: F) -> FakeServer
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        script(stream).await;
    });
    FakeServer {
        _dir: dir,
        socket,
        task,
    }
}

pub async fn send(s: &mut UnixStream, b: &BytesMut) {
    s.write_all(b).await.unwrap();
}

/// Server side of a fixed-newstyle handshake offering one export of
/// [`FAKE_SIZE`] bytes and the context [`FAKE_CONTEXT`].
pub async fn serve_handshake(s: &mut UnixStream) {
    let mut b = BytesMut::new();
    ServerGreeting {
        flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
    }
    .encode(&mut b);
    send(s, &b).await;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).await.unwrap();
    ClientFlags::decode(&flags).unwrap();
    loop {
        let mut h = [0u8; OptionRequestHeader::LEN];
        s.read_exact(&mut h).await.unwrap();
        let h = OptionRequestHeader::decode(&h).unwrap();
        let mut p = vec![0u8; h.length as usize];
        s.read_exact(&mut p).await.unwrap();
        let req = OptionRequest::decode(h.option, &p).unwrap();
        let mut b = BytesMut::new();
        match req {
            OptionRequest::StructuredReply => OptionReply::Ack.encode(h.option, &mut b),
            OptionRequest::SetMetaContext(m) => {
                for q in m.queries.iter().filter(|q| *q == FAKE_CONTEXT) {
                    OptionReply::MetaContext {
                        id: FAKE_CONTEXT_ID,
                        name: q.clone(),
                    }
                    .encode(h.option, &mut b);
                }
                OptionReply::Ack.encode(h.option, &mut b);
            }
            OptionRequest::Go(_) => {
                OptionReply::Info(Info::Export {
                    size: FAKE_SIZE,
                    transmission_flags: transmission_flags::HAS_FLAGS
                        | transmission_flags::READ_ONLY,
                })
                .encode(h.option, &mut b);
                OptionReply::Ack.encode(h.option, &mut b);
                send(s, &b).await;
                return;
            }
            _ => OptionReply::Error {
                reply_type: ReplyType::ErrUnsup,
                message: String::new(),
            }
            .encode(h.option, &mut b),
        }
        send(s, &b).await;
    }
}

pub async fn read_request(s: &mut UnixStream) -> RequestHeader {
    let mut h = [0u8; RequestHeader::LEN];
    s.read_exact(&mut h).await.unwrap();
    RequestHeader::decode(&h).unwrap()
}

/// Sends `chunks` (each with its DONE flag) as replies to `cookie`.
pub async fn send_chunks(s: &mut UnixStream, cookie: u64, chunks: &[(ReplyChunk, bool)]) {
    let mut b = BytesMut::new();
    for (c, done) in chunks {
        c.encode(cookie, *done, &mut b);
    }
    send(s, &b).await;
}
