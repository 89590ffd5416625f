//! Against a real `qemu-nbd`: data, allocation map, dirty bitmap, pipelining,
//! negotiation errors, and a server killed or frozen with requests in flight.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lifeboat_nbd::{
    ConnectOptions, DisconnectReason, Extent, NbdClient, NbdError, BASE_ALLOCATION,
};

fn opts() -> ConnectOptions {
    ConnectOptions::new(EXPORT)
        .with_meta_context(BASE_ALLOCATION)
        .with_meta_context(BITMAP_CONTEXT)
}

async fn connect(q: &QemuNbd) -> NbdClient {
    NbdClient::connect_unix(&q.socket, opts()).await.unwrap()
}

/// Ranges of `extents` for which `keep` holds, merged, as (offset, length).
fn ranges(extents: &[Extent], keep: impl Fn(&Extent) -> bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in extents.iter().filter(|e| keep(e)) {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == e.offset => last.1 += e.length,
            _ => out.push((e.offset, e.length)),
        }
    }
    out
}

fn assert_contiguous(extents: &[Extent], start: u64, end: u64) {
    let mut at = start;
    for e in extents {
        assert_eq!(e.offset, at, "gap or overlap in {extents:?}");
        assert!(e.length > 0);
        at = e.end();
    }
    assert_eq!(at, end);
}

#[tokio::test]
async fn negotiates_size_and_contexts() {
    let q = QemuNbd::start();
    assert_patterns(&q.raw);
    let c = connect(&q).await;
    assert_eq!(c.export_size(), IMAGE_SIZE);
    assert!(c.export_info().structured_replies);
    let names: Vec<_> = c.meta_contexts().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, [BASE_ALLOCATION, BITMAP_CONTEXT]);
    assert_ne!(c.meta_contexts()[0].id, c.meta_contexts()[1].id);
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn reads_match_the_image() {
    let q = QemuNbd::start();
    let c = connect(&q).await;
    let raw = &q.raw;
    // Whole disk, 4 MiB at a time.
    for off in (0..IMAGE_SIZE).step_by(4 * MIB as usize) {
        let got = c.read(off, 4 * MIB as u32).await.unwrap();
        assert!(
            got == raw[off as usize..(off + 4 * MIB) as usize],
            "at {off}"
        );
    }
    // Unaligned, straddling data/hole/zero boundaries.
    for (off, len) in [
        (MIB - 100, 300),
        (MIB + 32 * KIB - 1, 4 * KIB as u32 + 2),
        (20 * MIB + 4 * KIB - 7, 8 * KIB as u32 + 14),
        (IMAGE_SIZE - 1, 1),
        (5 * MIB + 1, 1),
    ] {
        let got = c.read(off, len).await.unwrap();
        assert!(
            got == raw[off as usize..off as usize + len as usize],
            "at {off}+{len}"
        );
    }
    // Longer than one request: split and reassembled by the client.
    let got = c.read(MIB, 40 * MIB as u32).await.unwrap();
    assert!(got == raw[MIB as usize..41 * MIB as usize]);
    assert!(c
        .read(IMAGE_SIZE - 1, 2)
        .await
        .is_err_and(|e| matches!(e, NbdError::OutOfRange { .. })));
}

#[tokio::test]
async fn allocation_map_shows_holes_where_never_written() {
    let q = QemuNbd::start();
    let c = connect(&q).await;
    let ext = c.extents(BASE_ALLOCATION, 0, IMAGE_SIZE).await.unwrap();
    assert_contiguous(&ext, 0, IMAGE_SIZE);
    assert_eq!(ranges(&ext, |e| !e.is_hole()), EXPECTED_ALLOCATED);
    // Holes read as zero; data ranges here are not zero-flagged as a whole.
    assert!(ext.iter().filter(|e| e.is_hole()).all(|e| e.is_zero()));

    // A single request inside the export is clamped to its range.
    let one = c
        .block_status(BASE_ALLOCATION, MIB + 100, 1000)
        .await
        .unwrap();
    assert_eq!(
        one,
        [Extent {
            offset: MIB + 100,
            length: 1000,
            flags: 0
        }]
    );
}

#[tokio::test]
async fn dirty_bitmap_marks_only_writes_after_it_was_added() {
    let q = QemuNbd::start();
    let c = connect(&q).await;
    let ext = c.extents(BITMAP_CONTEXT, 0, IMAGE_SIZE).await.unwrap();
    assert_contiguous(&ext, 0, IMAGE_SIZE);
    assert_eq!(ranges(&ext, Extent::is_dirty), EXPECTED_DIRTY);
    // A sub-range starting mid-granule.
    let part = c.extents(BITMAP_CONTEXT, 5 * MIB + 100, MIB).await.unwrap();
    assert_contiguous(&part, 5 * MIB + 100, 6 * MIB + 100);
    assert_eq!(
        ranges(&part, Extent::is_dirty),
        [(5 * MIB + 100, 64 * KIB - 100)]
    );
}

#[tokio::test]
async fn concurrent_reads_are_demultiplexed() {
    let q = QemuNbd::start();
    let c = Arc::new(connect(&q).await);
    let raw = Arc::new(q.raw.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u64 {
        let (c, raw) = (c.clone(), raw.clone());
        tasks.spawn(async move {
            // Different sizes so replies complete out of submission order.
            let len = ((i % 4) + 1) * MIB - i * 4097;
            let off = (i * 4 * MIB + i * 511) % (IMAGE_SIZE - len);
            let off = if i % 3 == 0 { MIB - 4096 + i } else { off };
            for _ in 0..4 {
                let got = c.read(off, len as u32).await.unwrap();
                assert!(got == raw[off as usize..(off + len) as usize], "task {i}");
            }
            let ext = c
                .block_status(BITMAP_CONTEXT, 0, (4 * MIB) as u32)
                .await
                .unwrap();
            assert_eq!(ext[0].offset, 0);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[tokio::test]
async fn missing_bitmap_is_named_in_the_error() {
    let q = QemuNbd::start();
    let o = ConnectOptions::new(EXPORT)
        .with_meta_context(BASE_ALLOCATION)
        .with_meta_context("qemu:dirty-bitmap:nope");
    let err = NbdClient::connect_unix(&q.socket, o).await.err().unwrap();
    match &err {
        NbdError::MetaContextNotGranted { context, .. } => {
            assert_eq!(context, "qemu:dirty-bitmap:nope")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("qemu:dirty-bitmap:nope"), "{err}");
}

#[tokio::test]
async fn missing_export_is_a_clear_error() {
    let q = QemuNbd::start();
    for o in [
        ConnectOptions::new("nope"),
        ConnectOptions::new("nope").with_meta_context(BASE_ALLOCATION),
    ] {
        let err = NbdClient::connect_unix(&q.socket, o).await.err().unwrap();
        match &err {
            NbdError::ExportNotFound { export, .. } => assert_eq!(export, "nope"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }
    // The server is still fine for a correct name.
    connect(&q).await.disconnect().await.unwrap();
}

#[tokio::test]
async fn unnegotiated_context_is_refused_locally() {
    let q = QemuNbd::start();
    let c = NbdClient::connect_unix(&q.socket, ConnectOptions::new(EXPORT))
        .await
        .unwrap();
    let err = c.block_status(BASE_ALLOCATION, 0, 4096).await.unwrap_err();
    assert!(
        matches!(err, NbdError::ContextNotNegotiated { .. }),
        "{err:?}"
    );
    // The connection is unaffected.
    assert_eq!(c.read(MIB, 4).await.unwrap().as_ref(), [0xab; 4]);
}

#[tokio::test]
async fn killed_server_fails_every_pending_request_promptly() {
    let mut q = QemuNbd::start();
    let c = Arc::new(connect(&q).await);
    c.read(0, 4096).await.unwrap();
    // Freeze the server so the requests are certainly still pending when it dies.
    q.signal("STOP");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u64 {
        let c = c.clone();
        tasks.spawn(async move { c.read(i * MIB, MIB as u32).await });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    q.kill();
    let mut reasons = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let err = r.unwrap().unwrap_err();
        reasons.push(err.disconnect_reason().cloned().expect("a disconnect"));
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(reasons.len(), 16);
    assert!(reasons.iter().all(|r| r == &reasons[0]), "{reasons:?}");
    assert!(!matches!(reasons[0], DisconnectReason::Timeout(_)));
    // Later requests fail the same way, at once.
    let later = c.read(0, 512).await.unwrap_err();
    assert_eq!(later.disconnect_reason(), Some(&reasons[0]));
}

#[tokio::test]
async fn frozen_server_times_out_every_request() {
    let q = QemuNbd::start();
    let o = opts().with_io_timeout(Duration::from_millis(500));
    let c = Arc::new(NbdClient::connect_unix(&q.socket, o).await.unwrap());
    q.signal("STOP");
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8u64 {
        let c = c.clone();
        tasks.spawn(async move { c.read(i * MIB, 65536).await });
    }
    while let Some(r) = tasks.join_next().await {
        let err = r.unwrap().unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(c
        .block_status(BASE_ALLOCATION, 0, 512)
        .await
        .unwrap_err()
        .is_timeout());
    q.signal("CONT");
}

#[tokio::test]
async fn disconnect_leaves_the_server_serving() {
    let q = QemuNbd::start();
    for _ in 0..3 {
        let c = connect(&q).await;
        assert_eq!(c.read(10 * MIB, 2).await.unwrap().as_ref(), [0xcd, 0xcd]);
        c.disconnect().await.unwrap();
    }
}
