//! Round trips of every message, and decoders fed truncated, oversized and
//! random input: they must return errors, never panic.

use bytes::{Bytes, BytesMut};

use super::handshake::*;
use super::limits;
use super::transmission::*;
use super::ProtoError;

fn option_requests() -> Vec<OptionRequest> {
    vec![
        OptionRequest::ExportName("disk0".into()),
        OptionRequest::Abort,
        OptionRequest::List,
        OptionRequest::StartTls,
        OptionRequest::Info(InfoRequest {
            export_name: "".into(),
            info_requests: vec![],
        }),
        OptionRequest::Go(InfoRequest {
            export_name: "disk0".into(),
            info_requests: vec![InfoType::BlockSize, InfoType::Name, InfoType::Unknown(77)],
        }),
        OptionRequest::StructuredReply,
        OptionRequest::ListMetaContext(MetaContextRequest {
            export_name: "disk0".into(),
            queries: vec!["qemu:".into()],
        }),
        OptionRequest::SetMetaContext(MetaContextRequest {
            export_name: "disk0".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:b0".into()],
        }),
        OptionRequest::ExtendedHeaders,
        OptionRequest::Unknown {
            option: 99,
            data: Bytes::from_static(b"xyz"),
        },
    ]
}

fn option_replies() -> Vec<OptionReply> {
    vec![
        OptionReply::Ack,
        OptionReply::Server {
            name: "disk0".into(),
            description: "the disk".into(),
        },
        OptionReply::Info(Info::Export {
            size: 64 << 20,
            transmission_flags: 0x1ed,
        }),
        OptionReply::Info(Info::Name("disk0".into())),
        OptionReply::Info(Info::Description("d".into())),
        OptionReply::Info(Info::BlockSize(BlockSize {
            minimum: 1,
            preferred: 4096,
            maximum: 32 << 20,
        })),
        OptionReply::Info(Info::Unknown {
            info_type: 9,
            data: Bytes::from_static(b"\x01\x02"),
        }),
        OptionReply::MetaContext {
            id: 7,
            name: "qemu:dirty-bitmap:b0".into(),
        },
        OptionReply::Error {
            reply_type: ReplyType::ErrUnknown,
            message: "export 'x' not present".into(),
        },
        OptionReply::Unknown {
            reply_type: 42,
            data: Bytes::from_static(b"?"),
        },
    ]
}

fn chunks() -> Vec<ReplyChunk> {
    vec![
        ReplyChunk::None,
        ReplyChunk::OffsetData {
            offset: 4096,
            data: Bytes::from_static(&[0xab; 100]),
        },
        ReplyChunk::OffsetHole {
            offset: 1 << 40,
            length: 65536,
        },
        ReplyChunk::BlockStatus {
            context_id: 3,
            descriptors: vec![
                BlockDescriptor {
                    length: 65536,
                    flags: 3,
                },
                BlockDescriptor {
                    length: 1,
                    flags: 0,
                },
            ],
        },
        ReplyChunk::Error {
            error: Errno::Inval.raw(),
            message: "bad".into(),
        },
        ReplyChunk::ErrorOffset {
            error: Errno::Io.raw(),
            message: "".into(),
            offset: 512,
        },
        ReplyChunk::Unknown {
            chunk_type: 100,
            data: Bytes::from_static(b"??"),
        },
    ]
}

#[test]
fn greeting_and_flags_round_trip() {
    let mut b = BytesMut::new();
    let g = ServerGreeting {
        flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
    };
    g.encode(&mut b);
    assert_eq!(b.len(), ServerGreeting::LEN);
    assert_eq!(&b[..8], b"NBDMAGIC");
    assert_eq!(&b[8..16], b"IHAVEOPT");
    assert_eq!(ServerGreeting::decode(&b).unwrap(), g);

    let mut b = BytesMut::new();
    ClientFlags(FLAG_C_FIXED_NEWSTYLE).encode(&mut b);
    assert_eq!(ClientFlags::decode(&b).unwrap(), ClientFlags(1));

    for no_zeroes in [false, true] {
        let mut b = BytesMut::new();
        let r = ExportNameReply {
            size: 12345,
            transmission_flags: 3,
        };
        r.encode(no_zeroes, &mut b);
        let expect_len = if no_zeroes { 10 } else { 134 };
        assert_eq!(b.len(), expect_len);
        assert_eq!(ExportNameReply::decode(&b[..10]).unwrap(), r);
    }
}

#[test]
fn option_requests_round_trip() {
    for req in option_requests() {
        let mut b = BytesMut::new();
        req.encode(&mut b);
        let h = OptionRequestHeader::decode(&b[..OptionRequestHeader::LEN]).unwrap();
        assert_eq!(h.option, req.code());
        assert_eq!(h.length as usize, b.len() - OptionRequestHeader::LEN);
        let back = OptionRequest::decode(h.option, &b[OptionRequestHeader::LEN..]).unwrap();
        assert_eq!(back, req);
    }
}

#[test]
fn option_replies_round_trip() {
    for rep in option_replies() {
        let mut b = BytesMut::new();
        rep.encode(OptionCode::Go, &mut b);
        let h = OptionReplyHeader::decode(&b[..OptionReplyHeader::LEN]).unwrap();
        assert_eq!(h.option, OptionCode::Go);
        assert_eq!(h.reply_type, rep.reply_type());
        assert_eq!(h.length as usize, b.len() - OptionReplyHeader::LEN);
        let back = OptionReply::decode(h.reply_type, &b[OptionReplyHeader::LEN..]).unwrap();
        assert_eq!(back, rep);
    }
}

#[test]
fn transmission_headers_round_trip() {
    let req = RequestHeader {
        flags: command_flags::REQ_ONE,
        command: Command::BlockStatus,
        cookie: 0xdead_beef,
        offset: 1 << 33,
        length: 1 << 20,
    };
    let mut b = BytesMut::new();
    req.encode(&mut b);
    assert_eq!(b.len(), RequestHeader::LEN);
    assert_eq!(RequestHeader::decode(&b).unwrap(), req);

    let simple = SimpleReplyHeader {
        error: Errno::Perm.raw(),
        cookie: 9,
    };
    let mut b = BytesMut::new();
    simple.encode(&mut b);
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    assert_eq!(ReplyKind::from_magic(magic).unwrap(), ReplyKind::Simple);
    assert_eq!(SimpleReplyHeader::decode(&b).unwrap(), simple);
}

#[test]
fn chunks_round_trip() {
    for (i, chunk) in chunks().into_iter().enumerate() {
        let done = i % 2 == 0;
        let mut b = BytesMut::new();
        chunk.encode(77, done, &mut b);
        let h = StructuredReplyHeader::decode(&b[..StructuredReplyHeader::LEN]).unwrap();
        assert_eq!(h.cookie, 77);
        assert_eq!(h.is_done(), done);
        assert_eq!(h.chunk_type, chunk.chunk_type());
        let back = ReplyChunk::decode(h.chunk_type, &b[StructuredReplyHeader::LEN..]).unwrap();
        assert_eq!(back, chunk);
    }
}

#[test]
fn codes_keep_unknown_values() {
    assert_eq!(Errno::from(22), Errno::Inval);
    assert_eq!(Errno::Inval.to_string(), "EINVAL");
    assert_eq!(Errno::from(1234).raw(), 1234);
    assert!(ReplyType::from(0x8000_0063).is_error());
    assert!(ChunkType::from(0x8123).is_error());
    assert_eq!(OptionCode::from(10), OptionCode::SetMetaContext);
}

/// Every strict prefix of a valid message must fail to decode (none of our
/// messages has an optional tail), and must not panic.
#[test]
fn truncated_inputs_are_errors() {
    for req in option_requests() {
        let mut b = BytesMut::new();
        req.encode(&mut b);
        for n in 0..OptionRequestHeader::LEN {
            assert!(OptionRequestHeader::decode(&b[..n]).is_err());
        }
        let payload = &b[OptionRequestHeader::LEN..];
        let has_tail = matches!(
            req,
            OptionRequest::ExportName(_) | OptionRequest::Unknown { .. }
        );
        if !has_tail {
            for n in 0..payload.len() {
                assert!(
                    OptionRequest::decode(req.code(), &payload[..n]).is_err(),
                    "{req:?} prefix {n}"
                );
            }
        }
    }
    for rep in option_replies() {
        let mut b = BytesMut::new();
        rep.encode(OptionCode::Info, &mut b);
        for n in 0..OptionReplyHeader::LEN {
            assert!(OptionReplyHeader::decode(&b[..n]).is_err());
        }
        let payload = &b[OptionReplyHeader::LEN..];
        if let OptionReply::Info(Info::Export { .. } | Info::BlockSize(_)) = rep {
            for n in 0..payload.len() {
                assert!(OptionReply::decode(rep.reply_type(), &payload[..n]).is_err());
            }
        }
    }
    for chunk in chunks() {
        let mut b = BytesMut::new();
        chunk.encode(1, true, &mut b);
        for n in 0..StructuredReplyHeader::LEN {
            assert!(StructuredReplyHeader::decode(&b[..n]).is_err());
        }
        let payload = &b[StructuredReplyHeader::LEN..];
        if matches!(
            chunk,
            ReplyChunk::OffsetHole { .. } | ReplyChunk::ErrorOffset { .. }
        ) {
            for n in 0..payload.len() {
                assert!(ReplyChunk::decode(chunk.chunk_type(), &payload[..n]).is_err());
            }
        }
    }
    assert!(ServerGreeting::decode(&[0; 17]).is_err());
    assert!(RequestHeader::decode(&[0; 27]).is_err());
}

#[test]
fn oversized_lengths_are_rejected_before_allocation() {
    let mut b = BytesMut::new();
    OptionReply::Ack.encode(OptionCode::Go, &mut b);
    b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        OptionReplyHeader::decode(&b),
        Err(ProtoError::TooLong { .. })
    ));

    let mut b = BytesMut::new();
    OptionRequest::Abort.encode(&mut b);
    b[12..16].copy_from_slice(&(limits::MAX_OPTION_PAYLOAD as u32 + 1).to_be_bytes());
    assert!(OptionRequestHeader::decode(&b).is_err());

    let mut b = BytesMut::new();
    ReplyChunk::None.encode(1, true, &mut b);
    b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(StructuredReplyHeader::decode(&b).is_err());

    // A meta context request claiming 2^32-1 queries in a few bytes.
    let mut p = BytesMut::new();
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(OptionRequest::decode(OptionCode::SetMetaContext, &p).is_err());

    // A string longer than the protocol's 4096-byte limit.
    let long = vec![b'a'; limits::MAX_STRING + 1];
    assert!(OptionRequest::decode(OptionCode::ExportName, &long).is_err());
}

#[test]
fn garbage_values_are_rejected() {
    let mut b = BytesMut::new();
    ServerGreeting { flags: 1 }.encode(&mut b);
    b[0] ^= 0xff;
    assert!(matches!(
        ServerGreeting::decode(&b),
        Err(ProtoError::BadMagic { .. })
    ));
    assert!(ReplyKind::from_magic(0x1234_5678).is_err());
    // Block size info that would make a client divide by zero or loop.
    for (min, pref, max) in [
        (0, 4096, 1 << 20),
        (3, 4096, 1 << 20),
        (512, 256, 1 << 20),
        (4096, 4096, 512),
    ] {
        let mut p = BytesMut::new();
        p.extend_from_slice(&InfoType::BlockSize.raw().to_be_bytes());
        for v in [min, pref, max] {
            p.extend_from_slice(&u32::to_be_bytes(v));
        }
        assert!(
            OptionReply::decode(ReplyType::Info, &p).is_err(),
            "{min} {pref} {max}"
        );
    }
    // Descriptors: empty, ragged, zero-length.
    assert!(decode_descriptors(&[]).is_err());
    assert!(decode_descriptors(&[0; 7]).is_err());
    assert!(decode_descriptors(&[0; 8]).is_err());
    assert!(ReplyChunk::decode(ChunkType::OffsetHole, &[0; 12]).is_err());
    assert!(ReplyChunk::decode(ChunkType::OffsetData, &[0; 8]).is_err());
    assert!(ReplyChunk::decode(ChunkType::Error, &[0, 0, 0, 0, 0, 0]).is_err());
    // Error message length pointing past the payload.
    assert!(ReplyChunk::decode(ChunkType::Error, &[0, 0, 0, 5, 0xff, 0xff, b'x']).is_err());
    let bad_utf8 = [0xffu8, 0xfe];
    assert!(OptionRequest::decode(OptionCode::ExportName, &bad_utf8).is_err());
}

/// Random bytes into every decoder: only `Ok` or `Err`, never a panic.
#[test]
fn random_garbage_never_panics() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let option_codes: Vec<OptionCode> = (0..13).map(OptionCode::from).collect();
    let reply_types: Vec<ReplyType> = [1, 2, 3, 4, 5, 0x8000_0001, 0x8000_0006]
        .into_iter()
        .map(ReplyType::from)
        .collect();
    let chunk_types: Vec<ChunkType> = [0, 1, 2, 5, 6, 7, 0x8001, 0x8002, 0x8003]
        .into_iter()
        .map(ChunkType::from)
        .collect();
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Sometimes start with a valid magic so decoding goes deeper.
        if len >= 8 && next() % 2 == 0 {
            buf[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        }
        let _ = ServerGreeting::decode(&buf);
        let _ = ClientFlags::decode(&buf);
        let _ = OptionRequestHeader::decode(&buf);
        let _ = OptionReplyHeader::decode(&buf);
        let _ = ExportNameReply::decode(&buf);
        let _ = RequestHeader::decode(&buf);
        let _ = SimpleReplyHeader::decode(&buf);
        let _ = StructuredReplyHeader::decode(&buf);
        let _ = decode_descriptors(&buf);
        let _ = decode_error_prefix(&buf);
        for &c in &option_codes {
            let _ = OptionRequest::decode(c, &buf);
        }
        for &t in &reply_types {
            let _ = OptionReply::decode(t, &buf);
        }
        for &t in &chunk_types {
            let _ = ReplyChunk::decode(t, &buf);
        }
    }
}
