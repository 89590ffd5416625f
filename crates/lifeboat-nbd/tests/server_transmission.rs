//! The server's transmission phase: reads, refusals, source failures,
//! pipelining, and clients that misbehave.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::raw::*;
use common::server::*;
use lifeboat_nbd::proto::limits;
use lifeboat_nbd::proto::transmission::{Command, Errno, REQUEST_MAGIC};
use lifeboat_nbd::server::{serve_connection, ServeError, ServerOptions};
use lifeboat_nbd::{ConnectOptions, NbdClient, NbdError};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

const EXPORT: &str = "vm1-disk0";
const MIB: usize = 1 << 20;
const EINVAL: u32 = 22;
const EPERM: u32 = 1;

type Outcome = JoinHandle<Result<(), ServeError>>;

/// `serve_connection` on one end of an in-memory pipe of `pipe` bytes per
/// direction; the test opens the export on the other end.
async fn open(
    source: TestSource,
    options: ServerOptions,
    pipe: usize,
) -> (RawClient<DuplexStream>, Outcome) {
    let (client, server) = tokio::io::duplex(pipe);
    let source = Arc::new(source);
    let task = tokio::spawn(async move { serve_connection(server, source, &options).await });
    let mut c = RawClient::new(client);
    c.open(EXPORT).await;
    (c, task)
}

async fn outcome(task: Outcome) -> Result<(), ServeError> {
    tokio::time::timeout(RAW_LIMIT, task)
        .await
        .expect("the server did not end the connection")
        .unwrap()
}

async fn connect(s: &TestServer) -> NbdClient {
    NbdClient::connect_unix(&s.socket, ConnectOptions::new(EXPORT))
        .await
        .unwrap()
}

fn server_errno(e: &NbdError) -> Errno {
    match e {
        NbdError::Server { errno, .. } => *errno,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn reads_match_the_source_and_the_padding_reads_as_zeroes() {
    let size = 3 * MIB + 12345;
    let data = random_bytes(size, 11);
    let s = TestServer::start(TestSource::new(data.clone()), ServerOptions::new(EXPORT));
    let c = connect(&s).await;
    // Rounded up to whole 512-byte sectors for QEMU.
    let padded = size.next_multiple_of(512);
    assert_eq!(c.export_size(), padded as u64);
    assert!(c.read(0, size as u32).await.unwrap() == data);
    for (off, len) in [(0, 1), (4095, 2), (MIB - 7, 100_000), (size - 10, 10)] {
        let got = c.read(off as u64, len as u32).await.unwrap();
        assert!(got == data[off..off + len], "at {off}+{len}");
    }
    let tail = c
        .read(size as u64 - 3, (padded - size + 3) as u32)
        .await
        .unwrap();
    assert_eq!(tail[..3], data[size - 3..]);
    assert!(tail[3..].iter().all(|b| *b == 0));
    assert!(c
        .read(size as u64, (padded - size) as u32)
        .await
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    c.disconnect().await.unwrap();
    assert_eq!(s.stats.connections(), 1);
    assert_eq!(s.stats.failed_reads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_reads_return_the_right_data() {
    let data = random_bytes(8 * MIB, 12);
    let mut source = TestSource::new(data.clone());
    // Early offsets answer late, so replies overtake each other.
    source.slow_below = 2 * MIB as u64;
    source.slow_delay = Duration::from_millis(30);
    let s = TestServer::start(source, ServerOptions::new(EXPORT));
    let c = Arc::new(connect(&s).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        let c = c.clone();
        let off = (i * 40_961) % (8 * MIB as u64 - 70_000);
        let len = 1 + (i * 7_919 % 65_536) as u32;
        tasks.spawn(async move { (off, len, c.read(off, len).await.unwrap()) });
    }
    while let Some(r) = tasks.join_next().await {
        let (off, len, got) = r.unwrap();
        assert!(
            got == data[off as usize..(off + u64::from(len)) as usize],
            "at {off}+{len}"
        );
    }
    assert_eq!(s.stats.requests(), 200);
}

#[tokio::test]
async fn requests_are_answered_and_the_stream_stays_in_step() {
    let data = random_bytes(MIB, 13);
    let (mut c, task) = open(
        TestSource::new(data.clone()),
        ServerOptions::new(EXPORT),
        1 << 20,
    )
    .await;
    let size = MIB as u64;
    // Outside the export, or longer than any read served: EINVAL.
    assert_eq!(c.errno(Command::Read, 1, size - 10, 11).await, EINVAL);
    assert_eq!(c.errno(Command::Read, 2, u64::MAX - 5, 10).await, EINVAL);
    assert_eq!(
        c.errno(Command::Read, 3, 0, limits::MAX_READ + 1).await,
        EINVAL
    );
    // A write's payload is consumed before it is refused.
    let mut b = BytesMut::new();
    b.put_u32(REQUEST_MAGIC);
    b.put_u16(0);
    b.put_u16(Command::Write.raw());
    b.put_u64(4);
    b.put_u64(0);
    b.put_u32(4096);
    b.put_bytes(0xee, 4096);
    c.send(&b).await;
    assert_eq!(c.reply().await, (EPERM, 4));
    assert_eq!(c.errno(Command::Trim, 5, 0, 4096).await, EPERM);
    assert_eq!(c.errno(Command::WriteZeroes, 6, 0, 4096).await, EPERM);
    assert_eq!(c.errno(Command::BlockStatus, 7, 0, 4096).await, EINVAL);
    assert_eq!(c.errno(Command::Resize, 8, 0, 0).await, EINVAL);
    assert_eq!(c.errno(Command::Unknown(99), 9, 0, 0).await, EINVAL);
    assert_eq!(c.errno(Command::Flush, 10, 0, 0).await, 0);
    assert_eq!(c.errno(Command::Cache, 11, 0, 4096).await, 0);
    assert_eq!(c.errno(Command::Cache, 12, size, 1).await, EINVAL);
    assert!(c.read(13, 0, 0).await.is_empty());
    // After all that, reads still line up.
    assert_eq!(c.read(14, 1000, 5000).await, data[1000..6000]);
    c.request(Command::Disconnect, 15, 0, 0).await;
    assert!(c.eof_next().await, "NBD_CMD_DISC was answered");
    outcome(task).await.unwrap();
}

#[tokio::test]
async fn a_write_payload_too_large_to_skip_closes_the_connection() {
    let (mut c, task) = open(
        TestSource::new(random_bytes(MIB, 14)),
        ServerOptions::new(EXPORT),
        1 << 16,
    )
    .await;
    c.request(Command::Write, 1, 0, limits::MAX_READ + 1).await;
    assert!(c.closed_by_server().await);
    let err = outcome(task).await.unwrap_err();
    assert!(matches!(err, ServeError::Protocol { .. }), "{err}");
}

#[tokio::test]
async fn garbage_instead_of_a_request_closes_the_connection() {
    let (mut c, task) = open(
        TestSource::new(random_bytes(MIB, 15)),
        ServerOptions::new(EXPORT),
        1 << 16,
    )
    .await;
    assert_eq!(c.read(1, 0, 512).await.len(), 512);
    c.send(&[0x5a; 28]).await;
    assert!(c.closed_by_server().await);
    let err = outcome(task).await.unwrap_err();
    assert!(matches!(err, ServeError::Protocol { .. }), "{err}");
}

#[tokio::test]
async fn a_failing_source_gets_eio_and_the_connection_carries_on() {
    let data = random_bytes(MIB, 16);
    let mut source = TestSource::new(data.clone());
    source.fail_at = Some(4096);
    source.panic_at = Some(8192);
    source.short_at = Some(12288);
    let s = TestServer::start(source, ServerOptions::new(EXPORT));
    let c = connect(&s).await;
    for off in [4096, 8192, 12288] {
        let err = c.read(off, 4096).await.unwrap_err();
        assert_eq!(server_errno(&err), Errno::Io, "at {off}");
        // The very next read works.
        assert!(
            c.read(off + 1, 4096).await.unwrap() == data[off as usize + 1..off as usize + 4097]
        );
    }
    // The panic is answered by the reply's drop guard, not counted as a failed read.
    assert_eq!(s.stats.failed_reads(), 2);
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_waits_for_the_replies_still_owed() {
    let data = random_bytes(MIB, 17);
    let mut source = TestSource::new(data.clone());
    source.slow_below = MIB as u64;
    source.slow_delay = Duration::from_millis(100);
    let (mut c, task) = open(source, ServerOptions::new(EXPORT), 1 << 20).await;
    for i in 0..8u64 {
        c.request(Command::Read, i, i * 4096, 4096).await;
    }
    c.request(Command::Disconnect, 99, 0, 0).await;
    let mut got = HashMap::new();
    for _ in 0..8 {
        let (error, cookie) = c.reply().await;
        assert_eq!(error, 0);
        got.insert(cookie, c.read_exact(4096).await);
    }
    for i in 0..8u64 {
        let at = i as usize * 4096;
        assert!(got[&i] == data[at..at + 4096], "cookie {i}");
    }
    // NBD_CMD_DISC itself has no reply.
    assert!(
        c.eof_next().await,
        "the server sent more after the owed replies"
    );
    outcome(task).await.unwrap();
}

#[tokio::test]
async fn a_client_closing_between_requests_ends_cleanly() {
    let (mut c, task) = open(
        TestSource::new(random_bytes(MIB, 18)),
        ServerOptions::new(EXPORT),
        1 << 16,
    )
    .await;
    assert_eq!(c.read(1, 0, 512).await.len(), 512);
    drop(c);
    outcome(task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stalls_only_itself() {
    let data = random_bytes(4 * MIB, 19);
    let options = ServerOptions::new(EXPORT).with_max_in_flight(4);
    let stats = options.stats.clone();
    // A 64 KiB pipe holds no 256 KiB reply, so replies back up at once.
    let (mut c, task) = open(TestSource::new(data.clone()), options, 64 * 1024).await;
    let len = 256 * 1024u32;
    for i in 0..100u64 {
        c.request(Command::Read, i, (i % 16) * u64::from(len), len)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Four in flight (the one being written among them); the rest wait
    // unread in the pipe.
    let read = stats.requests();
    assert!(
        read <= 4,
        "the server read {read} requests while the client read nothing"
    );
    let mut seen = 0;
    for _ in 0..100 {
        let (error, cookie) = c.reply().await;
        assert_eq!(error, 0);
        let at = ((cookie % 16) * u64::from(len)) as usize;
        assert!(c.read_exact(len as usize).await == data[at..at + len as usize]);
        seen += 1;
    }
    assert_eq!(seen, 100);
    c.request(Command::Disconnect, 1000, 0, 0).await;
    outcome(task).await.unwrap();
}

#[tokio::test]
async fn stopping_the_server_ends_its_connections() {
    let s = TestServer::start(
        TestSource::new(random_bytes(MIB, 20)),
        ServerOptions::new(EXPORT),
    );
    let c = connect(&s).await;
    c.read(0, 4096).await.unwrap();
    s.stop().await;
    let err = c.read(0, 4096).await.unwrap_err();
    assert!(err.disconnect_reason().is_some(), "{err:?}");
}
