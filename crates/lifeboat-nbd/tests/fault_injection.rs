//! A fake server that misbehaves on purpose: hang-ups, silence, garbage and
//! replies that do not fit their request must give typed errors quickly.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::fake::*;
use lifeboat_nbd::proto::transmission::*;
use lifeboat_nbd::{ConnectOptions, DisconnectReason, NbdClient, NbdError, ProtoError};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

fn opts(timeout_ms: u64) -> ConnectOptions {
    ConnectOptions::new("")
        .with_meta_context(FAKE_CONTEXT)
        .with_io_timeout(Duration::from_millis(timeout_ms))
}

fn reason(e: &NbdError) -> &DisconnectReason {
    e.disconnect_reason()
        .unwrap_or_else(|| panic!("expected a disconnect, got {e:?}"))
}

fn is_protocol(e: &NbdError) -> bool {
    matches!(reason(e), DisconnectReason::Protocol(_))
}

#[tokio::test]
async fn server_closing_at_once_is_an_error_not_a_hang() {
    let f = fake_server(|s| async move { drop(s) });
    let start = Instant::now();
    let err = NbdClient::connect_unix(&f.socket, opts(10_000))
        .await
        .err()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            reason(&err),
            DisconnectReason::ServerClosed | DisconnectReason::Io { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn silence_after_greeting_times_out() {
    let f = fake_server(|mut s| async move {
        let mut b = BytesMut::new();
        lifeboat_nbd::proto::handshake::ServerGreeting { flags: 3 }.encode(&mut b);
        s.write_all(&b).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let start = Instant::now();
    let err = NbdClient::connect_unix(&f.socket, opts(300))
        .await
        .err()
        .unwrap();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn garbage_greeting_is_a_protocol_error() {
    let f = fake_server(|mut s| async move {
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let err = NbdClient::connect_unix(&f.socket, opts(5_000))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            reason(&err),
            DisconnectReason::Protocol(ProtoError::BadMagic { .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn silence_after_handshake_times_out_every_request() {
    let f = fake_server(|mut s| async move {
        serve_handshake(&mut s).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let c = NbdClient::connect_unix(&f.socket, opts(300)).await.unwrap();
    let start = Instant::now();
    let (a, b) = tokio::join!(c.read(0, 512), c.block_status(FAKE_CONTEXT, 0, 512));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(a.unwrap_err().is_timeout());
    assert!(b.unwrap_err().is_timeout());
    // Dead for good, reported at once.
    let start = Instant::now();
    assert!(c.read(0, 512).await.unwrap_err().is_timeout());
    assert!(start.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn hang_up_with_requests_pending_fails_them_all() {
    let f = fake_server(|mut s| async move {
        serve_handshake(&mut s).await;
        for _ in 0..3 {
            read_request(&mut s).await;
        }
        drop(s);
    });
    let c = NbdClient::connect_unix(&f.socket, opts(10_000))
        .await
        .unwrap();
    let start = Instant::now();
    let (a, b, d) = tokio::join!(c.read(0, 512), c.read(512, 512), c.read(1024, 512));
    assert!(start.elapsed() < Duration::from_secs(2));
    for r in [a, b, d] {
        assert_eq!(reason(&r.unwrap_err()), &DisconnectReason::ServerClosed);
    }
}

#[tokio::test]
async fn garbage_reply_magic_is_a_protocol_error() {
    let f = fake_server(|mut s| async move {
        serve_handshake(&mut s).await;
        read_request(&mut s).await;
        s.write_all(&[0x55; 64]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let c = NbdClient::connect_unix(&f.socket, opts(10_000))
        .await
        .unwrap();
    let err = c.read(0, 512).await.unwrap_err();
    assert!(is_protocol(&err), "{err:?}");
    assert_eq!(
        c.read(0, 1).await.unwrap_err().disconnect_reason(),
        Some(reason(&err))
    );
}

/// Serves one READ of 0..1024 with `reply`, which gets the request cookie.
async fn read_with_reply(
    reply: impl FnOnce(u64) -> BytesMut + Send + 'static,
) -> Result<Bytes, NbdError> {
    let f = fake_server(|mut s| async move {
        serve_handshake(&mut s).await;
        let req = read_request(&mut s).await;
        s.write_all(&reply(req.cookie)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let c = NbdClient::connect_unix(&f.socket, opts(2_000))
        .await
        .unwrap();
    c.read(0, 1024).await
}

fn chunks(cookie: u64, list: &[(ReplyChunk, bool)]) -> BytesMut {
    let mut b = BytesMut::new();
    for (c, done) in list {
        c.encode(cookie, *done, &mut b);
    }
    b
}

fn data(offset: u64, len: usize, byte: u8) -> ReplyChunk {
    ReplyChunk::OffsetData {
        offset,
        data: Bytes::from(vec![byte; len]),
    }
}

#[tokio::test]
async fn hostile_read_replies_are_protocol_errors() {
    type Case = (&'static str, fn(u64) -> BytesMut);
    let cases: Vec<Case> = vec![
        ("data past the range", |c| {
            chunks(c, &[(data(1000, 100, 1), true)])
        }),
        ("data before the range", |c| {
            chunks(c, &[(data(u64::MAX - 10, 5, 1), true)])
        }),
        ("overlapping chunks", |c| {
            chunks(c, &[(data(0, 600, 1), false), (data(500, 524, 1), true)])
        }),
        ("hole overlapping data", |c| {
            chunks(
                c,
                &[
                    (data(0, 1024, 1), false),
                    (
                        ReplyChunk::OffsetHole {
                            offset: 0,
                            length: 1,
                        },
                        true,
                    ),
                ],
            )
        }),
        ("done before covering", |c| {
            chunks(c, &[(data(0, 1000, 1), true)])
        }),
        ("none without done", |c| {
            chunks(c, &[(ReplyChunk::None, false)])
        }),
        ("wrong cookie", |c| {
            chunks(c + 1, &[(data(0, 1024, 1), true)])
        }),
        ("block status for a read", |c| {
            chunks(
                c,
                &[(
                    ReplyChunk::BlockStatus {
                        context_id: FAKE_CONTEXT_ID,
                        descriptors: vec![BlockDescriptor {
                            length: 1024,
                            flags: 0,
                        }],
                    },
                    true,
                )],
            )
        }),
        ("chunk longer than the request", |c| {
            let mut b = BytesMut::new();
            StructuredReplyHeader {
                flags: REPLY_FLAG_DONE,
                chunk_type: ChunkType::OffsetData,
                cookie: c,
                length: 8 + 1024 + 1,
            }
            .encode(&mut b);
            b.extend_from_slice(&[0; 8 + 1025]);
            b
        }),
        ("absurd chunk length", |c| {
            let mut b = BytesMut::new();
            StructuredReplyHeader {
                flags: REPLY_FLAG_DONE,
                chunk_type: ChunkType::OffsetData,
                cookie: c,
                length: u32::MAX,
            }
            .encode(&mut b);
            b
        }),
        ("hole of wrong size", |c| {
            let mut b = BytesMut::new();
            StructuredReplyHeader {
                flags: REPLY_FLAG_DONE,
                chunk_type: ChunkType::OffsetHole,
                cookie: c,
                length: 16,
            }
            .encode(&mut b);
            b.extend_from_slice(&[0; 16]);
            b
        }),
        ("unknown non-error chunk type", |c| {
            chunks(
                c,
                &[(
                    ReplyChunk::Unknown {
                        chunk_type: 77,
                        data: Bytes::new(),
                    },
                    true,
                )],
            )
        }),
    ];
    for (name, reply) in cases {
        let err = read_with_reply(reply).await.unwrap_err();
        eprintln!("{name}: {err}");
        assert!(is_protocol(&err), "{name}: {err:?}");
    }
}

#[tokio::test]
async fn chunked_and_simple_read_replies_are_assembled() {
    // Out-of-order data and holes.
    let got = read_with_reply(|c| {
        chunks(
            c,
            &[
                (data(512, 512, 7), false),
                (
                    ReplyChunk::OffsetHole {
                        offset: 100,
                        length: 412,
                    },
                    false,
                ),
                (data(0, 100, 9), false),
                (ReplyChunk::None, true),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(&got[..100], &[9; 100]);
    assert_eq!(&got[100..512], &[0; 412]);
    assert_eq!(&got[512..], &[7; 512]);
    // A simple reply is accepted too.
    let got = read_with_reply(|c| {
        let mut b = BytesMut::new();
        SimpleReplyHeader {
            error: 0,
            cookie: c,
        }
        .encode(&mut b);
        b.extend_from_slice(&[3; 1024]);
        b
    })
    .await
    .unwrap();
    assert_eq!(got.as_ref(), &[3; 1024]);
}

#[tokio::test]
async fn server_errors_are_typed_and_keep_the_connection() {
    let f = fake_server(|mut s| async move {
        serve_handshake(&mut s).await;
        let r = read_request(&mut s).await;
        send_chunks(
            &mut s,
            r.cookie,
            &[
                (data(0, 10, 1), false),
                (
                    ReplyChunk::ErrorOffset {
                        error: Errno::Io.raw(),
                        message: "bad sector".into(),
                        offset: 10,
                    },
                    true,
                ),
            ],
        )
        .await;
        let r = read_request(&mut s).await;
        let mut b = BytesMut::new();
        SimpleReplyHeader {
            error: Errno::Inval.raw(),
            cookie: r.cookie,
        }
        .encode(&mut b);
        s.write_all(&b).await.unwrap();
        let r = read_request(&mut s).await;
        send_chunks(&mut s, r.cookie, &[(data(0, 4, 8), true)]).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let c = NbdClient::connect_unix(&f.socket, opts(2_000))
        .await
        .unwrap();
    let err = c.read(0, 100).await.unwrap_err();
    assert!(
        matches!(&err, NbdError::Server { errno: Errno::Io, message, .. } if message == "bad sector"),
        "{err:?}"
    );
    assert!(err.to_string().contains("EIO"), "{err}");
    let err = c.read(0, 100).await.unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::Server {
                errno: Errno::Inval,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(c.read(0, 4).await.unwrap().as_ref(), [8; 4]);
}

fn status(c: u64, id: u32, lens: &[u32]) -> BytesMut {
    let descriptors = lens
        .iter()
        .map(|&length| BlockDescriptor { length, flags: 0 })
        .collect();
    chunks(
        c,
        &[(
            ReplyChunk::BlockStatus {
                context_id: id,
                descriptors,
            },
            true,
        )],
    )
}

#[tokio::test]
async fn hostile_block_status_replies_are_protocol_errors() {
    type Case = (&'static str, fn(u64) -> BytesMut);
    let cases: Vec<Case> = vec![
        ("unknown context id", |c| status(c, 99, &[4096])),
        ("descriptor after the end", |c| {
            status(c, FAKE_CONTEXT_ID, &[4096, 1])
        }),
        ("zero-length descriptor", |c| {
            status(c, FAKE_CONTEXT_ID, &[0])
        }),
        ("done without extents", |c| {
            chunks(c, &[(ReplyChunk::None, true)])
        }),
        ("simple success", |c| {
            let mut b = BytesMut::new();
            SimpleReplyHeader {
                error: 0,
                cookie: c,
            }
            .encode(&mut b);
            b
        }),
    ];
    for (name, reply) in cases {
        let f = fake_server(move |mut s| async move {
            serve_handshake(&mut s).await;
            let req = read_request(&mut s).await;
            s.write_all(&reply(req.cookie)).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let c = NbdClient::connect_unix(&f.socket, opts(2_000))
            .await
            .unwrap();
        let err = c.block_status(FAKE_CONTEXT, 0, 4096).await.unwrap_err();
        eprintln!("{name}: {err}");
        assert!(is_protocol(&err), "{name}: {err:?}");
    }
}

#[tokio::test]
async fn long_last_extent_is_clamped() {
    let f = fake_server(|mut s| async move {
        serve_handshake(&mut s).await;
        let req = read_request(&mut s).await;
        assert_eq!(req.command, Command::BlockStatus);
        let d = vec![
            BlockDescriptor {
                length: 1000,
                flags: 3,
            },
            BlockDescriptor {
                length: 1 << 20,
                flags: 0,
            },
        ];
        send_chunks(
            &mut s,
            req.cookie,
            &[(
                ReplyChunk::BlockStatus {
                    context_id: FAKE_CONTEXT_ID,
                    descriptors: d,
                },
                true,
            )],
        )
        .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let c = NbdClient::connect_unix(&f.socket, opts(2_000))
        .await
        .unwrap();
    let ext = c.block_status(FAKE_CONTEXT, 4096, 4096).await.unwrap();
    assert_eq!(ext.len(), 2);
    assert_eq!(
        (ext[0].offset, ext[0].length, ext[0].flags),
        (4096, 1000, 3)
    );
    assert_eq!(
        (ext[1].offset, ext[1].length, ext[1].flags),
        (5096, 3096, 0)
    );
}

#[tokio::test]
async fn unknown_context_from_server_is_refused() {
    // A fake server that ignores the query names and grants nothing.
    let f = fake_server(|mut s: UnixStream| async move {
        serve_handshake(&mut s).await;
    });
    let o = opts(2_000).with_meta_context("qemu:dirty-bitmap:missing");
    let err = NbdClient::connect_unix(&f.socket, o).await.err().unwrap();
    assert!(
        matches!(&err, NbdError::MetaContextNotGranted { context, .. } if context == "qemu:dirty-bitmap:missing"),
        "{err:?}"
    );
}
