//! The server against QEMU's own NBD client and libnbd: `qemu-img` reads the
//! export byte for byte, a qcow2 overlay uses it as its backing file, and
//! `block-stream` in a stopped QEMU hydrates the overlay until it no longer
//! needs the export — the whole instant-recovery data path.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::server::*;
use lifeboat_nbd::server::ServerOptions;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const EXPORT: &str = "vm1-disk0";
const MIB: usize = 1 << 20;
/// Generous: a busy 2-core machine runs several of these at once.
const TOOL_LIMIT: Duration = Duration::from_secs(120);

async fn qemu_img(args: &[&str]) -> String {
    run_tool("qemu-img", args, TOOL_LIMIT).await
}

/// `"key": number` from QEMU's JSON output (no JSON parser needed here).
fn json_number(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    json[at + key.len() + 3..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number in {json}"))
}

async fn convert_to_raw(input: &str, format: &str, out: &Path) -> Vec<u8> {
    qemu_img(&["convert", "-f", format, "-O", "raw", input, path_str(out)]).await;
    std::fs::read(out).unwrap()
}

/// Sizes not a multiple of 512 are exported rounded up, the tail as zeroes.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().next_multiple_of(512), 0);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_reads_the_export_byte_for_byte() {
    // A multiple of 4096; a multiple of 512 only; not even that.
    for (size, seed) in [(4 * MIB, 1), (3 * MIB + 1536, 2), (3 * MIB + 12345, 3)] {
        let data = random_bytes(size, seed);
        let s = TestServer::start(data.clone(), ServerOptions::new(EXPORT));
        let info = qemu_img(&["info", "--output=json", &s.uri(EXPORT)]).await;
        let expected = padded(&data);
        assert_eq!(json_number(&info, "virtual-size"), expected.len() as u64);
        // The empty name is the default export, which is this one.
        let out = s.path("out.raw");
        for uri in [s.uri(EXPORT), s.uri("")] {
            let got = convert_to_raw(&uri, "raw", &out).await;
            assert!(got == expected, "size {size}: contents differ via {uri}");
        }
        assert!(s.stats.bytes_served() >= 2 * size as u64);
        assert_eq!(s.stats.failed_reads(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_refuses_an_unknown_export() {
    let s = TestServer::start(random_bytes(MIB, 4), ServerOptions::new(EXPORT));
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", &s.uri("no-such-disk")])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-disk"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_overlay_reads_through_to_the_export() {
    let data = random_bytes(4 * MIB, 5);
    let s = TestServer::start(data.clone(), ServerOptions::new(EXPORT));
    let overlay = s.path("overlay.qcow2");
    let overlay = path_str(&overlay);
    let uri = s.uri(EXPORT);
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-F", "raw", "-b", &uri, overlay,
    ])
    .await;
    run_tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xab 1M 64k", overlay],
        TOOL_LIMIT,
    )
    .await;
    let got = convert_to_raw(overlay, "qcow2", &s.path("out.raw")).await;
    let mut expected = data.to_vec();
    expected[MIB..MIB + 64 * 1024].fill(0xab);
    assert!(got == expected, "overlay contents differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnbd_tools_read_the_export() {
    if std::process::Command::new("nbdinfo")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("nbdinfo not installed (Debian libnbd-bin); skipped");
        return;
    }
    let data = random_bytes(3 * MIB + 1536, 6);
    let s = TestServer::start(data.clone(), ServerOptions::new(EXPORT));
    let info = run_tool("nbdinfo", &["--json", &s.uri(EXPORT)], TOOL_LIMIT).await;
    assert_eq!(json_number(&info, "export-size"), data.len() as u64);
    assert!(info.contains("\"is_read_only\": true"), "{info}");
    assert!(info.contains("\"can_multi_conn\": true"), "{info}");
    let list = run_tool("nbdinfo", &["--list", &s.uri("")], TOOL_LIMIT).await;
    assert!(list.contains(EXPORT), "{list}");
    let out = s.path("out.raw");
    // Several connections at once, as the export allows multi-conn.
    run_tool(
        "nbdcopy",
        &["--connections=4", &s.uri(EXPORT), path_str(&out)],
        TOOL_LIMIT,
    )
    .await;
    assert!(std::fs::read(&out).unwrap() == data);
}

/// QMP over a Unix socket: one JSON object per line.
struct Qmp {
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
    /// Every event seen so far.
    events: Vec<String>,
}

impl Qmp {
    async fn connect(socket: &Path, qemu: &mut tokio::process::Child) -> Qmp {
        let deadline = Instant::now() + TOOL_LIMIT;
        let stream = loop {
            if let Some(status) = qemu.try_wait().unwrap() {
                panic!("QEMU exited with {status} before QMP came up (see its stderr)");
            }
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("QMP socket never came up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (rd, wr) = stream.into_split();
        let mut qmp = Qmp {
            rd: BufReader::new(rd),
            wr,
            events: Vec::new(),
        };
        let greeting = qmp.line().await;
        assert!(greeting.contains("\"QMP\""), "{greeting}");
        qmp.execute(r#"{"execute": "qmp_capabilities"}"#).await;
        qmp
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(TOOL_LIMIT, self.rd.read_line(&mut line))
            .await
            .expect("QEMU did not answer on QMP")
            .unwrap();
        assert!(n > 0, "QEMU closed QMP");
        line
    }

    /// Sends a command and returns its `return` line, keeping events aside.
    async fn execute(&mut self, command: &str) -> String {
        self.wr.write_all(command.as_bytes()).await.unwrap();
        self.wr.write_all(b"\n").await.unwrap();
        loop {
            let line = self.line().await;
            if line.contains("\"event\"") {
                self.events.push(line);
            } else {
                assert!(line.contains("\"return\""), "{command} failed: {line}");
                return line;
            }
        }
    }
}

/// How QEMU is told where the overlay's backing is. QEMU 7.2 rejects a
/// `json:{"driver":"nbd",...}` header with backing format `raw` ("A block
/// device must be specified for "file""): the format must be `nbd`, or the
/// target must wrap the NBD node in a `raw` one.
enum Backing {
    /// Header: `json:{"driver":"nbd",...}` with backing format `nbd`.
    JsonNbd,
    /// Header: `json:{"driver":"raw","file":{"driver":"nbd",...}}`, format `raw`.
    JsonRawOverNbd,
    /// Header: the plain NBD URI, overridden by backing nodes given on the
    /// command line and referenced by name.
    NodesByReference,
}

/// Instant recovery end to end: the overlay is written to, then QEMU streams
/// the export into it; afterwards the overlay stands alone, with the write kept.
async fn block_stream_hydrates_the_overlay(backing: Backing) {
    let data = random_bytes(8 * MIB, 7);
    let s = TestServer::start(data.clone(), ServerOptions::new(EXPORT));
    let overlay_path = s.path("overlay.qcow2");
    let overlay = path_str(&overlay_path);
    let socket = s.socket.display();
    let nbd = format!(
        r#"{{"driver":"nbd","server":{{"type":"unix","path":"{socket}"}},"export":"{EXPORT}","reconnect-delay":30,"open-timeout":30"#
    );
    let qcow2 = format!(
        r#"{{"driver":"qcow2","node-name":"d0","file":{{"driver":"file","filename":"{overlay}"}}"#
    );
    let only_qcow2 = vec![format!("{qcow2}}}")];
    let (format, header, blockdevs) = match backing {
        Backing::JsonNbd => ("nbd", format!("json:{nbd}}}"), only_qcow2),
        Backing::JsonRawOverNbd => (
            "raw",
            format!(r#"json:{{"driver":"raw","file":{nbd}}}}}"#),
            only_qcow2,
        ),
        Backing::NodesByReference => (
            "raw",
            s.uri(EXPORT),
            vec![
                format!(r#"{nbd},"node-name":"nbd0","read-only":true}}"#),
                r#"{"driver":"raw","node-name":"src0","file":"nbd0","read-only":true}"#.to_owned(),
                format!(r#"{qcow2},"backing":"src0"}}"#),
            ],
        ),
    };
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-F", format, "-b", &header, overlay,
    ])
    .await;
    run_tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xab 1M 64k", overlay],
        TOOL_LIMIT,
    )
    .await;

    let qmp_socket = s.path("qmp.sock");
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64");
    // No guest: `-machine none` has no CPU to run, `-S` would keep one stopped.
    qemu.args([
        "-accel",
        "tcg",
        "-machine",
        "none",
        "-nographic",
        "-nodefaults",
        "-S",
    ])
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()));
    for b in &blockdevs {
        qemu.args(["-blockdev", b]);
    }
    let mut qemu = qemu
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run qemu-system-x86_64");
    let mut qmp = Qmp::connect(&qmp_socket, &mut qemu).await;
    let nodes_query = r#"{"execute": "query-named-block-nodes", "arguments": {"flat": true}}"#;
    let nodes = qmp.execute(nodes_query).await;
    assert!(
        nodes.contains(r#""drv": "nbd""#),
        "no NBD node before streaming: {nodes}"
    );
    let served_before = s.stats.bytes_served();
    qmp.execute(
        r#"{"execute": "block-stream", "arguments": {"job-id": "hydrate", "device": "d0"}}"#,
    )
    .await;
    let deadline = Instant::now() + TOOL_LIMIT;
    loop {
        let jobs = qmp.execute(r#"{"execute": "query-block-jobs"}"#).await;
        if jobs.contains(r#""return": []"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "block-stream still running: {jobs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed = qmp
        .events
        .iter()
        .find(|e| e.contains("BLOCK_JOB_COMPLETED"))
        .unwrap_or_else(|| panic!("no BLOCK_JOB_COMPLETED among {:?}", qmp.events));
    assert!(!completed.contains("\"error\""), "{completed}");
    if let Backing::NodesByReference = backing {
        // Nodes made with -blockdev stay until deleted, which works only
        // once nothing uses them: the overlay has let go of its backing.
        qmp.execute(r#"{"execute": "blockdev-del", "arguments": {"node-name": "src0"}}"#)
            .await;
        qmp.execute(r#"{"execute": "blockdev-del", "arguments": {"node-name": "nbd0"}}"#)
            .await;
    }
    // The running VM's disk has dropped its backing too.
    let nodes = qmp.execute(nodes_query).await;
    assert!(
        !nodes.contains(r#""drv": "nbd""#),
        "an NBD node is still attached: {nodes}"
    );
    let _ = qmp.wr.write_all(b"{\"execute\": \"quit\"}\n").await;
    let status = tokio::time::timeout(TOOL_LIMIT, qemu.wait())
        .await
        .expect("QEMU did not quit")
        .unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    // Everything but the 64 KiB written locally came over NBD.
    assert!(s.stats.bytes_served() - served_before >= (8 * MIB - 64 * 1024) as u64);

    // The export is gone; the overlay must not need it any more.
    s.stop().await;
    let info = qemu_img(&["info", "--output=json", overlay]).await;
    assert!(
        !info.contains("backing-filename"),
        "still has a backing file: {info}"
    );
    let got = convert_to_raw(overlay, "qcow2", &s.path("out.raw")).await;
    let mut expected = data.to_vec();
    expected[MIB..MIB + 64 * 1024].fill(0xab);
    assert!(got == expected, "hydrated overlay differs from the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_stream_hydrates_an_overlay_backed_by_json_nbd() {
    block_stream_hydrates_the_overlay(Backing::JsonNbd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_stream_hydrates_an_overlay_backed_by_json_raw_over_nbd() {
    block_stream_hydrates_the_overlay(Backing::JsonRawOverNbd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_stream_hydrates_an_overlay_with_backing_nodes_by_reference() {
    block_stream_hydrates_the_overlay(Backing::NodesByReference).await;
}
