//! Reading a Server-Sent Events stream from the server (`text/event-stream`): blocks of
//! `event:` and `data:` lines, each ended by a blank line; comment lines (`:`, the
//! server's keep-alives) are skipped. The stream is the server's, so it is bounded: a
//! block larger than [`MAX_EVENT_BYTES`] ends it with an error, and so does silence
//! longer than [`IDLE`] (the server sends a keep-alive every 15 s).

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The largest event read (an operation with a long log is well under this).
const MAX_EVENT_BYTES: usize = 16 << 20;
/// How long the stream may say nothing, keep-alives included.
const IDLE: Duration = Duration::from_secs(60);

/// One event: its name (`message` when it gave none) and its data.
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// The events of one response, in order.
pub struct Events {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no block end (less the 3 bytes a `\r\n\r\n`
    /// split across chunks may have begun in): a long event is scanned once, not at
    /// every chunk.
    scanned: usize,
}

impl Events {
    pub fn new(resp: reqwest::Response) -> Events {
        Events {
            resp,
            buf: Vec::new(),
            scanned: 0,
        }
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            while let Some((len, with_blank)) = block_end(&self.buf[self.scanned..]) {
                let (len, with_blank) = (self.scanned + len, self.scanned + with_blank);
                let block: Vec<u8> = self.buf.drain(..with_blank).collect();
                self.scanned = 0;
                if let Some(ev) = parse_block(&block[..len]) {
                    return Ok(Some(ev));
                }
            }
            self.scanned = self.buf.len().saturating_sub(3);
            if self.buf.len() > MAX_EVENT_BYTES {
                bail!("the server sent an event larger than {MAX_EVENT_BYTES} bytes");
            }
            let chunk = tokio::time::timeout(IDLE, self.resp.chunk())
                .await
                .with_context(|| format!("the server said nothing for {IDLE:?}"))?
                .context("reading the server's events")?;
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}

/// Where the first block in `buf` ends: (its length, the length with its blank line).
fn block_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// An event from its lines; `None` for a block of comments only.
fn parse_block(block: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(block);
    let (mut name, mut data, mut any) = (None, Vec::new(), false);
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => (name, any) = (Some(value.to_string()), true),
            "data" => (data.push(value.to_string()), any = true).1,
            _ => {}
        }
    }
    any.then(|| Event {
        name: name.unwrap_or_else(|| "message".into()),
        data: data.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_events_and_comments_are_skipped() {
        let ev = |name: &str, data: &str| Event {
            name: name.into(),
            data: data.into(),
        };
        assert_eq!(
            parse_block(b"event: log\ndata: 12:00 step one"),
            Some(ev("log", "12:00 step one"))
        );
        assert_eq!(
            parse_block(b"data: a\r\ndata: b"),
            Some(ev("message", "a\nb"))
        );
        assert_eq!(parse_block(b": keep-alive"), None);
        assert_eq!(block_end(b"data: x\n\nevent"), Some((7, 9)));
        assert_eq!(block_end(b"data: x\r\n\r\n"), Some((7, 11)));
        assert_eq!(block_end(b"data: x\n"), None);
    }
}
