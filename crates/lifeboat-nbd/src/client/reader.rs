//! The reader task: reads every reply off the socket, checks it against the
//! request it answers (see [`super::assemble`]) and hands the result to the
//! waiting caller. Any violation ends the connection, because after one the
//! byte stream can no longer be trusted to be in step.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::oneshot;

use super::assemble::{relative_range, Coverage};
use super::conn::{Expect, Outcome, Pending, ReplyResult, ServerFailure, Shared};
use crate::error::DisconnectReason;
use crate::proto::limits;
use crate::proto::transmission::{
    decode_descriptors, decode_error_prefix, BlockDescriptor, ChunkType, Errno, ReplyChunk,
    ReplyKind, SimpleReplyHeader, StructuredReplyHeader,
};
use crate::proto::ProtoError;

/// A structured reply being received.
struct Partial {
    pending: Pending,
    data: Option<Vec<u8>>,
    coverage: Coverage,
    status: Vec<(u32, Vec<BlockDescriptor>)>,
    error: Option<ServerFailure>,
}

pub(super) async fn reader_task<R: AsyncRead + Unpin>(
    mut rd: BufReader<R>,
    shared: Arc<Shared>,
    context_ids: Vec<u32>,
) {
    let mut partial = HashMap::new();
    let Err(reason) = read_replies(&mut rd, &shared, &context_ids, &mut partial).await;
    // Record the reason before the slots in `partial` are dropped.
    shared.kill(reason);
    drop(partial);
}

fn protocol(e: ProtoError) -> DisconnectReason {
    DisconnectReason::Protocol(e)
}

fn violation(what: &'static str, detail: String) -> DisconnectReason {
    protocol(ProtoError::invalid(what, detail))
}

async fn read_exact<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    buf: &mut [u8],
) -> Result<(), DisconnectReason> {
    rd.read_exact(buf)
        .await
        .map_err(|e| DisconnectReason::from_io(&e))?;
    shared.touch();
    Ok(())
}

async fn read_replies<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    context_ids: &[u32],
    partial: &mut HashMap<u64, Partial>,
) -> Result<std::convert::Infallible, DisconnectReason> {
    let mut hdr = [0u8; StructuredReplyHeader::LEN];
    loop {
        read_exact(rd, shared, &mut hdr[..4]).await?;
        let kind = ReplyKind::from_magic(u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]))
            .map_err(protocol)?;
        let len = kind.header_len();
        read_exact(rd, shared, &mut hdr[4..len]).await?;
        match kind {
            ReplyKind::Simple => {
                let h = SimpleReplyHeader::decode(&hdr[..len]).map_err(protocol)?;
                simple_reply(rd, shared, partial, h).await?;
            }
            ReplyKind::Structured => {
                let h = StructuredReplyHeader::decode(&hdr[..len]).map_err(protocol)?;
                chunk(rd, shared, context_ids, partial, h).await?;
            }
        }
    }
}

async fn simple_reply<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    partial: &HashMap<u64, Partial>,
    h: SimpleReplyHeader,
) -> Result<(), DisconnectReason> {
    if partial.contains_key(&h.cookie) {
        return Err(violation(
            "simple reply",
            format!("cookie {} already has structured chunks", h.cookie),
        ));
    }
    let p = shared.take_pending(h.cookie).ok_or_else(|| {
        violation(
            "simple reply",
            format!("cookie {} matches no request", h.cookie),
        )
    })?;
    let result = if h.error != 0 {
        Err(ServerFailure {
            errno: Errno::from(h.error),
            message: String::new(),
        })
    } else {
        match p.expect {
            Expect::Read { length, .. } => {
                // Bounded: requests are at most limits::MAX_READ.
                let mut data = vec![0u8; length as usize];
                read_exact(rd, shared, &mut data).await?;
                Ok(Outcome::Data(Bytes::from(data)))
            }
            Expect::BlockStatus { .. } => {
                return Err(violation(
                    "simple reply",
                    "success without data to NBD_CMD_BLOCK_STATUS".into(),
                ))
            }
        }
    };
    // The caller may have given up; the reply was still consumed.
    let _ = p.slot.send(result);
    Ok(())
}

async fn chunk<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    context_ids: &[u32],
    partial: &mut HashMap<u64, Partial>,
    h: StructuredReplyHeader,
) -> Result<(), DisconnectReason> {
    let p = match partial.entry(h.cookie) {
        Entry::Occupied(o) => o.into_mut(),
        Entry::Vacant(v) => {
            let pending = shared.take_pending(h.cookie).ok_or_else(|| {
                violation(
                    "structured reply",
                    format!("cookie {} matches no request", h.cookie),
                )
            })?;
            v.insert(Partial {
                pending,
                data: None,
                coverage: Coverage::default(),
                status: Vec::new(),
                error: None,
            })
        }
    };
    let length = u64::from(h.length);
    let ct = h.chunk_type;
    match (ct, p.pending.expect) {
        (ChunkType::None, _) => {
            if !h.is_done() || length != 0 {
                return Err(violation(
                    ct.name(),
                    "must be empty and carry the DONE flag".into(),
                ));
            }
        }
        (
            ChunkType::OffsetData,
            Expect::Read {
                offset,
                length: req_len,
            },
        ) => {
            if length <= 8 {
                return Err(violation(
                    ct.name(),
                    format!("length {length} carries no data"),
                ));
            }
            let mut off = [0u8; 8];
            read_exact(rd, shared, &mut off).await?;
            let (start, end) = relative_range(
                ct.name(),
                offset,
                req_len,
                u64::from_be_bytes(off),
                length - 8,
            )
            .map_err(protocol)?;
            p.coverage.insert(start, end).map_err(protocol)?;
            let data = p.data.get_or_insert_with(|| vec![0u8; req_len as usize]);
            read_exact(rd, shared, &mut data[start as usize..end as usize]).await?;
        }
        (
            ChunkType::OffsetHole,
            Expect::Read {
                offset,
                length: req_len,
            },
        ) => {
            if length != 12 {
                return Err(violation(
                    ct.name(),
                    format!("length {length}, expected 12"),
                ));
            }
            let mut b = [0u8; 12];
            read_exact(rd, shared, &mut b).await?;
            let (hole_off, hole_len) = match ReplyChunk::decode(ct, &b).map_err(protocol)? {
                ReplyChunk::OffsetHole { offset, length } => (offset, length),
                _ => unreachable!("decode of OffsetHole yields OffsetHole"),
            };
            let (start, end) =
                relative_range(ct.name(), offset, req_len, hole_off, hole_len.into())
                    .map_err(protocol)?;
            p.coverage.insert(start, end).map_err(protocol)?;
        }
        (
            ChunkType::BlockStatus,
            Expect::BlockStatus {
                length: req_len, ..
            },
        ) => {
            let max = 4 + 8 * limits::MAX_BLOCK_STATUS_DESCRIPTORS as u64;
            if !(12..=max).contains(&length) {
                return Err(violation(
                    ct.name(),
                    format!("length {length} out of bounds"),
                ));
            }
            let mut b = vec![0u8; length as usize];
            read_exact(rd, shared, &mut b).await?;
            let context_id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            if !context_ids.contains(&context_id) {
                return Err(violation(
                    ct.name(),
                    format!("context id {context_id} was never negotiated"),
                ));
            }
            if p.status.iter().any(|(id, _)| *id == context_id) {
                return Err(violation(
                    ct.name(),
                    format!("context id {context_id} sent twice"),
                ));
            }
            let descriptors = decode_descriptors(&b[4..]).map_err(protocol)?;
            check_descriptors(&descriptors, req_len)?;
            p.status.push((context_id, descriptors));
        }
        (t, expect) if t.is_error() => {
            if !(6..=6 + u64::from(u16::MAX) + 8).contains(&length) {
                return Err(violation(
                    t.name(),
                    format!("length {length} out of bounds"),
                ));
            }
            let mut b = vec![0u8; length as usize];
            read_exact(rd, shared, &mut b).await?;
            let (error, message) = decode_error_prefix(&b).map_err(protocol)?;
            if t == ChunkType::ErrorOffset {
                let (offset, len) = match expect {
                    Expect::Read { offset, length } => (offset, length),
                    Expect::BlockStatus { offset, length, .. } => (offset, length),
                };
                match ReplyChunk::decode(t, &b).map_err(protocol)? {
                    ReplyChunk::ErrorOffset { offset: at, .. } => {
                        relative_range(t.name(), offset, len, at, 1).map_err(protocol)?;
                    }
                    _ => unreachable!("decode of ErrorOffset yields ErrorOffset"),
                }
            }
            if error == 0 {
                return Err(violation(t.name(), "error value is 0".into()));
            }
            p.error.get_or_insert(ServerFailure {
                errno: Errno::from(error),
                message,
            });
        }
        (t, _) => {
            return Err(violation(
                "structured reply",
                format!("unexpected {t} chunk for cookie {}", h.cookie),
            ))
        }
    }
    if h.is_done() {
        let Some(p) = partial.remove(&h.cookie) else {
            unreachable!("present above");
        };
        let result = finish(p)?;
        let _ = result.1.send(result.0);
    }
    Ok(())
}

type Finished = (ReplyResult, oneshot::Sender<ReplyResult>);

fn finish(p: Partial) -> Result<Finished, DisconnectReason> {
    let slot = p.pending.slot;
    if let Some(err) = p.error {
        return Ok((Err(err), slot));
    }
    let outcome = match p.pending.expect {
        Expect::Read { length, .. } => {
            if p.coverage.covered() != u64::from(length) {
                return Err(violation(
                    "read reply",
                    format!("DONE after {} of {length} bytes", p.coverage.covered()),
                ));
            }
            let data = p.data.unwrap_or_else(|| vec![0u8; length as usize]);
            Outcome::Data(Bytes::from(data))
        }
        Expect::BlockStatus { context_id, .. } => {
            if !p.status.iter().any(|(id, _)| *id == context_id) {
                return Err(violation(
                    "block status reply",
                    format!("DONE without extents for context id {context_id}"),
                ));
            }
            Outcome::Status(p.status)
        }
    };
    Ok((Ok(outcome), slot))
}

/// Every descriptor but the last must end inside the request; the last may
/// run past it (the protocol allows that), and is clamped by the caller.
fn check_descriptors(d: &[BlockDescriptor], req_len: u32) -> Result<(), DisconnectReason> {
    let mut end = 0u64;
    for (i, desc) in d.iter().enumerate() {
        if end >= u64::from(req_len) {
            return Err(violation(
                "block status reply",
                format!("descriptor {i} starts past the requested length {req_len}"),
            ));
        }
        end += u64::from(desc.length);
    }
    Ok(())
}
