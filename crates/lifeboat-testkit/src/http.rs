//! Minimal HTTP/1.0 client for reading the guest's `/data` through a QEMU user-net
//! `hostfwd` (no HTTP crate: one GET, read to close).

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

/// `GET path` from 127.0.0.1:`port`; returns the status code and body.
pub async fn http_get(port: u16, path: &str, limit: Duration) -> anyhow::Result<(u16, Vec<u8>)> {
    timeout(limit, get(port, path))
        .await
        .with_context(|| format!("GET http://127.0.0.1:{port}{path}: no answer within {limit:?}"))?
        .with_context(|| format!("GET http://127.0.0.1:{port}{path}"))
}

async fn get(port: u16, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        // QEMU's user-net accepts the connection itself and closes it when nothing
        // listens in the guest yet: that shows up here as an empty response.
        bail!("incomplete HTTP response ({} bytes)", response.len());
    };
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("bad HTTP status line {status_line:?}");
    };
    if !version.starts_with("HTTP/") {
        bail!("bad HTTP status line {status_line:?}");
    }
    let code = code
        .parse::<u16>()
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    Ok((code, response[head_end + 4..].to_vec()))
}

/// Retries `GET path` until it answers 200 (the guest's httpd may not be up yet) and
/// returns the body; fails with the last answer or error after `limit`.
pub async fn wait_http(port: u16, path: &str, limit: Duration) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match http_get(port, path, left.min(Duration::from_secs(10))).await {
            Ok((200, body)) => return Ok(body),
            Ok((code, body)) => format!("status {code}: {}", String::from_utf8_lossy(&body)),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("GET http://127.0.0.1:{port}{path}: no 200 within {limit:?}; last: {last}");
        }
        sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn parses_status_and_body() {
        let (code, body) =
            parse_response(b"HTTP/1.0 404 Not Found\r\nContent-type: text/html\r\n\r\nnope")
                .unwrap();
        assert_eq!(code, 404);
        assert_eq!(body, b"nope");
    }

    #[test]
    fn empty_response_is_an_error() {
        assert!(parse_response(b"").is_err());
    }
}
