//! `--log-format json` (or LIFEBOAT_LOG_FORMAT=json) makes every log line one JSON object
//! a collector can read, and a daemon logs at info by default: the server says it is
//! ready, with its version and address, without -v.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_daemon_logs_json_lines_at_info_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--home")
        .arg(tmp.path())
        .args(["server", "--listen", "127.0.0.1:0", "--insecure-http"])
        .env("LIFEBOAT_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!("no `server ready` log line; saw {seen:#?}");
        };
        let parsed: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        if parsed["message"] == "server ready" {
            break parsed;
        }
        seen.push(line);
    };
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(ready["level"], "INFO", "{ready}");
    assert_eq!(ready["version"], env!("CARGO_PKG_VERSION"), "{ready}");
    assert!(
        ready["api"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{ready}"
    );
    assert!(ready["timestamp"].is_string(), "{ready}");
}
