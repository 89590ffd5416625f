//! One DNS request and its response over TCP, TSIG-signed when the server has a key.
//!
//! TCP only: an update or a two-record answer fits UDP, but TCP gives a refused
//! connection at once when nothing listens (UDP would wait for the timeout) and never
//! truncates. Both BIND and Knot take updates over TCP.
//!
//! Retries: a try that cannot connect, times out or loses the connection is tried again
//! with a fresh message id and TSIG time, [`TRIES`] times in all. That is safe for the
//! update too: it deletes the name's address sets and adds the new ones, so applying it
//! twice leaves what applying it once does. An answer from the server, even an error,
//! is never retried.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as HickoryAlgorithm, TsigError};
use hickory_proto::rr::{Name, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{DnsError, DnsServer, TsigAlgorithm};

/// Tries per request; only failures to get any answer are retried.
pub(crate) const TRIES: u32 = 3;
/// Bound on one try: connect, send, and read the whole response.
const TRY_TIMEOUT_MS: u64 = 5_000;
const TRY_TIMEOUT: Duration = Duration::from_millis(TRY_TIMEOUT_MS);
/// Pause before the second try; doubled before each later one.
const FIRST_BACKOFF_MS: u64 = 250;
/// Every try timing out, plus the pauses between them.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(
    TRIES as u64 * TRY_TIMEOUT_MS + FIRST_BACKOFF_MS * ((1 << (TRIES - 1)) - 1),
);
/// How far apart this host's clock and the server's may be (RFC 8945 recommends 300 s).
const FUDGE_SECS: u16 = 300;

/// Sends the message `build` makes and returns the server's response, checked: same id,
/// and when signed, a response TSIG that verifies. The rcode is left to the caller,
/// except TSIG errors, which become [`DnsError::KeyRefused`] here.
pub(crate) async fn exchange(
    server: &DnsServer,
    build: impl Fn() -> Message,
) -> Result<Message, DnsError> {
    let signer = signer(server)?;
    let mut backoff = Duration::from_millis(FIRST_BACKOFF_MS);
    let mut last_failure = String::new();
    for attempt in 1..=TRIES {
        if attempt > 1 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        let mut request = build();
        let verifier = match &signer {
            Some(signer) => request
                .finalize(signer, unix_now())
                .map_err(|e| bad_response(server, format!("signing the request: {e}")))?,
            None => None,
        };
        let bytes = request
            .to_vec()
            .map_err(|e| bad_response(server, format!("encoding the request: {e}")))?;
        match tokio::time::timeout(TRY_TIMEOUT, round_trip(server.address, &bytes)).await {
            Ok(Ok(response)) => {
                return check_response(server, request.metadata.id, verifier, &response);
            }
            Ok(Err(e)) => last_failure = e.to_string(),
            Err(_) => last_failure = format!("no answer within {} s", TRY_TIMEOUT.as_secs()),
        }
        tracing::debug!(server = %server.address, attempt, failure = %last_failure, "DNS try failed");
    }
    Err(DnsError::Unreachable {
        server: server.address,
        tries: TRIES,
        reason: last_failure,
    })
}

/// RFC 1035 4.2.2: over TCP each message is preceded by its length in two bytes.
async fn round_trip(address: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let len = u16::try_from(request.len())
        .map_err(|_| std::io::Error::other("request longer than 65535 bytes"))?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(request);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut response = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut response).await?;
    Ok(response)
}

fn check_response(
    server: &DnsServer,
    id: u16,
    verifier: Option<hickory_proto::rr::TSigVerifier>,
    bytes: &[u8],
) -> Result<Message, DnsError> {
    let response = Message::from_vec(bytes)
        .map_err(|e| bad_response(server, format!("undecodable response: {e}")))?;
    if response.metadata.id != id {
        return Err(bad_response(
            server,
            format!("response id {} for request {id}", response.metadata.id),
        ));
    }
    let Some(mut verifier) = verifier else {
        return Ok(response);
    };
    // A key the server does not know or a MAC that does not match gets an unsigned
    // answer (RFC 8945 5.3.2), so the TSIG error is read before anything is verified.
    if let Some(error) = response.signature().and_then(|s| s.data.error) {
        return Err(key_refused(server, tsig_error_reason(&error)));
    }
    match response.signature() {
        Some(_) => {
            verifier.verify(bytes).map_err(|e| {
                bad_response(server, format!("the response's TSIG does not verify: {e}"))
            })?;
        }
        // An unsigned error answer is reported as the error it claims to be: trusting a
        // forged refusal costs a retry, not a wrong record. An unsigned success is not
        // believed.
        None if response.metadata.response_code == ResponseCode::NoError => {
            return Err(bad_response(
                server,
                "an unsigned answer to a TSIG-signed request".into(),
            ))
        }
        None => {}
    };
    Ok(response)
}

fn tsig_error_reason(error: &TsigError) -> String {
    match error {
        TsigError::BadKey => "BADKEY: the server has no key of this name and algorithm".into(),
        TsigError::BadSig => "BADSIG: the secret does not match the server's".into(),
        TsigError::BadTime => "BADTIME: the clocks differ by more than 5 minutes".into(),
        other => format!("TSIG error {other:?}"),
    }
}

fn signer(server: &DnsServer) -> Result<Option<TSigner>, DnsError> {
    let Some(key) = &server.key else {
        return Ok(None);
    };
    let name = Name::from_ascii(format!("{}.", key.name())).map_err(|e| DnsError::BadName {
        what: "TSIG key name",
        name: key.name().to_string(),
        reason: e.to_string(),
    })?;
    let algorithm = match key.algorithm() {
        TsigAlgorithm::HmacSha256 => HickoryAlgorithm::HmacSha256,
        TsigAlgorithm::HmacSha384 => HickoryAlgorithm::HmacSha384,
        TsigAlgorithm::HmacSha512 => HickoryAlgorithm::HmacSha512,
    };
    TSigner::new(key.secret().to_vec(), algorithm, name, FUDGE_SECS)
        .map(Some)
        .map_err(|e| key_refused(server, format!("hickory cannot sign with it: {e}")))
}

fn key_refused(server: &DnsServer, reason: String) -> DnsError {
    DnsError::KeyRefused {
        server: server.address,
        zone: server.zone.clone(),
        key: server
            .key
            .as_ref()
            .map_or_else(|| "(none)".into(), |k| k.name().to_string()),
        reason,
    }
}

fn bad_response(server: &DnsServer, reason: String) -> DnsError {
    DnsError::BadResponse {
        server: server.address,
        reason,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TsigKey;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::RecordType;
    use tokio::net::TcpListener;

    /// A server that answers every request with a bare NOERROR and no TSIG, as a spoofer
    /// or a middlebox stripping records would.
    async fn unsigned_yes_man() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await.unwrap();
                let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut request).await.unwrap();
                let request = Message::from_vec(&request).unwrap();
                let mut response = Message::response(request.metadata.id, OpCode::Update);
                response.metadata.authoritative = true;
                let bytes = response.to_vec().unwrap();
                stream
                    .write_all(&(bytes.len() as u16).to_be_bytes())
                    .await
                    .unwrap();
                stream.write_all(&bytes).await.unwrap();
            }
        });
        address
    }

    fn request() -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("web.lab.test.").unwrap(),
            RecordType::A,
        ));
        m
    }

    #[tokio::test]
    async fn an_unsigned_success_to_a_signed_request_is_not_believed() {
        let server = DnsServer {
            address: unsigned_yes_man().await,
            zone: "lab.test".into(),
            key: Some(TsigKey::new("k", TsigAlgorithm::HmacSha256, vec![1; 32]).unwrap()),
        };
        let err = exchange(&server, request).await.unwrap_err();
        assert!(matches!(err, DnsError::BadResponse { .. }), "{err}");
        assert!(err.to_string().contains("unsigned answer"), "{err}");

        // The same answer to an unsigned request is all there is to go on.
        let unsigned = DnsServer {
            key: None,
            ..server
        };
        exchange(&unsigned, request).await.unwrap();
    }
}
