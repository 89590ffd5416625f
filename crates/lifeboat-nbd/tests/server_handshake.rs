//! The server's handshake: what it offers, what it refuses, and how a
//! hostile or broken client is cut off.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::raw::*;
use common::server::*;
use lifeboat_nbd::proto::handshake::*;
use lifeboat_nbd::proto::limits;
use lifeboat_nbd::proto::transmission::Command;
use lifeboat_nbd::server::{serve_connection, ServeError, ServerOptions, TRANSMISSION_FLAGS};
use lifeboat_nbd::{ConnectOptions, NbdClient, NbdError};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

const EXPORT: &str = "vm1-disk0";
const SIZE: usize = 1 << 20;

/// `serve_connection` on one end of an in-memory pipe, the test on the other.
fn serve(options: ServerOptions) -> (RawClient<DuplexStream>, JoinHandle<Result<(), ServeError>>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let source = Arc::new(random_bytes(SIZE, 1));
    let task = tokio::spawn(async move { serve_connection(server, source, &options).await });
    (RawClient::new(client), task)
}

async fn outcome(task: JoinHandle<Result<(), ServeError>>) -> Result<(), ServeError> {
    tokio::time::timeout(RAW_LIMIT, task)
        .await
        .expect("the server did not end the connection")
        .unwrap()
}

fn go(export: &str, info: Vec<InfoType>) -> OptionRequest {
    OptionRequest::Go(InfoRequest {
        export_name: export.into(),
        info_requests: info,
    })
}

fn error_type(r: &OptionReply) -> ReplyType {
    match r {
        OptionReply::Error { reply_type, .. } => *reply_type,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn nbd_client_negotiates_the_export() {
    let s = TestServer::start(random_bytes(SIZE, 1), ServerOptions::new(EXPORT));
    // By name, and as the default export.
    for name in [EXPORT, ""] {
        let c = NbdClient::connect_unix(&s.socket, ConnectOptions::new(name))
            .await
            .unwrap();
        let info = c.export_info();
        assert_eq!(info.size, SIZE as u64);
        assert_eq!(info.transmission_flags, TRANSMISSION_FLAGS);
        assert!(
            !info.structured_replies,
            "the server offers simple replies only"
        );
        let b = info.block_size.expect("block size was asked for");
        assert_eq!((b.minimum, b.maximum), (1, limits::MAX_READ));
        c.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn nbd_client_is_told_an_export_does_not_exist() {
    let s = TestServer::start(random_bytes(SIZE, 1), ServerOptions::new(EXPORT));
    let err = NbdClient::connect_unix(&s.socket, ConnectOptions::new("vm2-disk0"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, NbdError::ExportNotFound { .. }), "{err:?}");
    // The server is still there for the next client.
    let c = NbdClient::connect_unix(&s.socket, ConnectOptions::new(EXPORT))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn options_are_answered_or_refused_in_step() {
    let (mut c, task) = serve(ServerOptions::new(EXPORT));
    let g = c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    assert_eq!(g.flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);

    c.send_option(&OptionRequest::List).await;
    let list = c.option_replies().await;
    assert_eq!(
        list,
        [
            OptionReply::Server {
                name: EXPORT.into(),
                description: String::new()
            },
            OptionReply::Ack
        ]
    );

    let info = InfoRequest {
        export_name: EXPORT.into(),
        info_requests: vec![],
    };
    c.send_option(&OptionRequest::Info(info)).await;
    let export = OptionReply::Info(Info::Export {
        size: SIZE as u64,
        transmission_flags: TRANSMISSION_FLAGS,
    });
    // No block size unless asked for.
    assert_eq!(c.option_replies().await, [export.clone(), OptionReply::Ack]);

    let unknown = InfoRequest {
        export_name: "other".into(),
        info_requests: vec![],
    };
    c.send_option(&OptionRequest::Info(unknown)).await;
    assert_eq!(
        error_type(&c.option_replies().await[0]),
        ReplyType::ErrUnknown
    );

    let meta = MetaContextRequest {
        export_name: EXPORT.into(),
        queries: vec!["base:allocation".into()],
    };
    for unsupported in [
        OptionRequest::StructuredReply,
        OptionRequest::StartTls,
        OptionRequest::ExtendedHeaders,
        OptionRequest::SetMetaContext(meta.clone()),
        OptionRequest::ListMetaContext(meta),
        OptionRequest::Unknown {
            option: 0x4242,
            data: Bytes::from_static(b"whatever"),
        },
    ] {
        c.send_option(&unsupported).await;
        let r = c.option_replies().await;
        assert_eq!(error_type(&r[0]), ReplyType::ErrUnsup, "{unsupported:?}");
    }

    // A GO whose payload is cut short is refused, and the stream stays in step.
    let mut b = BytesMut::new();
    b.put_u64(IHAVEOPT);
    b.put_u32(OptionCode::Go.raw());
    b.put_u32(3);
    b.put_slice(&[0, 0, 0]);
    c.send(&b).await;
    assert_eq!(
        error_type(&c.option_replies().await[0]),
        ReplyType::ErrInvalid
    );

    c.send_option(&go(EXPORT, vec![InfoType::BlockSize, InfoType::Name]))
        .await;
    let replies = c.option_replies().await;
    assert_eq!(replies[0], export);
    assert!(
        replies.contains(&OptionReply::Info(Info::BlockSize(BlockSize {
            minimum: 1,
            preferred: 64 * 1024,
            maximum: limits::MAX_READ,
        })))
    );
    assert!(replies.contains(&OptionReply::Info(Info::Name(EXPORT.into()))));
    assert_eq!(replies.last(), Some(&OptionReply::Ack));

    // Transmission has started.
    assert_eq!(c.read(1, 0, 4096).await, random_bytes(SIZE, 1)[..4096]);
    c.request(Command::Disconnect, 2, 0, 0).await;
    outcome(task).await.unwrap();
}

#[tokio::test]
async fn export_name_sends_zeroes_unless_the_client_declines_them() {
    let (mut c, task) = serve(ServerOptions::new(EXPORT));
    c.greet(FLAG_C_FIXED_NEWSTYLE).await;
    c.send_option(&OptionRequest::ExportName(EXPORT.into()))
        .await;
    let r = c
        .read_exact(ExportNameReply::LEN + ExportNameReply::ZEROES)
        .await;
    let reply = ExportNameReply::decode(&r[..ExportNameReply::LEN]).unwrap();
    assert_eq!(reply.size, SIZE as u64);
    assert!(r[ExportNameReply::LEN..].iter().all(|b| *b == 0));
    assert_eq!(c.read(7, 100, 10).await, random_bytes(SIZE, 1)[100..110]);
    drop(c);
    outcome(task).await.unwrap();
}

#[tokio::test]
async fn export_name_of_another_export_closes_the_connection() {
    let (mut c, task) = serve(ServerOptions::new(EXPORT));
    c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    c.send_option(&OptionRequest::ExportName("vm2-disk0".into()))
        .await;
    assert!(c.closed_by_server().await);
    let err = outcome(task).await.unwrap_err();
    assert!(
        matches!(err, ServeError::UnknownExport { ref requested, .. } if requested == "vm2-disk0"),
        "{err}"
    );
}

#[tokio::test]
async fn abort_is_acknowledged_and_ends_cleanly() {
    let (mut c, task) = serve(ServerOptions::new(EXPORT));
    c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    c.send_option(&OptionRequest::Abort).await;
    assert_eq!(c.option_replies().await, [OptionReply::Ack]);
    outcome(task).await.unwrap();
}

#[tokio::test]
async fn unknown_client_flags_close_the_connection() {
    let (mut c, task) = serve(ServerOptions::new(EXPORT));
    c.greet(FLAG_C_FIXED_NEWSTYLE | 1 << 7).await;
    assert!(c.closed_by_server().await);
    let err = outcome(task).await.unwrap_err();
    assert!(
        matches!(err, ServeError::UnknownClientFlags { flags: 0x81, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn endless_options_are_cut_off() {
    let (mut c, task) = serve(ServerOptions::new(EXPORT));
    c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    for _ in 0..65 {
        c.send_option(&OptionRequest::List).await;
    }
    for _ in 0..64 {
        assert_eq!(c.option_replies().await.len(), 2);
    }
    assert!(c.closed_by_server().await);
    let err = outcome(task).await.unwrap_err();
    assert!(
        matches!(err, ServeError::TooManyOptions { max: 64, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_at_the_handshake_timeout() {
    let options = ServerOptions::new(EXPORT).with_handshake_timeout(Duration::from_millis(300));
    let (mut c, task) = serve(options);
    let start = Instant::now();
    c.greet(FLAG_C_FIXED_NEWSTYLE).await;
    let err = outcome(task).await.unwrap_err();
    assert!(matches!(err, ServeError::HandshakeTimeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(c.closed_by_server().await);
}

#[tokio::test]
async fn malformed_option_headers_close_the_connection() {
    // Wrong magic; and a payload length far past the 64 KiB bound, which
    // must be refused before anything is allocated or read for it.
    for (magic, length) in [(0x1234_5678_u64, 0_u32), (IHAVEOPT, u32::MAX)] {
        let (mut c, task) = serve(ServerOptions::new(EXPORT));
        c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        let mut b = BytesMut::new();
        b.put_u64(magic);
        b.put_u32(OptionCode::Go.raw());
        b.put_u32(length);
        c.send(&b).await;
        assert!(c.closed_by_server().await);
        let err = outcome(task).await.unwrap_err();
        assert!(matches!(err, ServeError::Protocol { .. }), "{err}");
    }
}

#[tokio::test]
async fn a_client_hanging_up_mid_handshake_is_reported_as_such() {
    let (mut c, task) = serve(ServerOptions::new(EXPORT));
    c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    c.send(&IHAVEOPT.to_be_bytes()).await;
    drop(c);
    let err = outcome(task).await.unwrap_err();
    assert!(matches!(err, ServeError::ClientClosed { .. }), "{err}");
    assert!(err.is_client_gone());
}
