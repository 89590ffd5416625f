//! Serving the routes: TLS with the agent's identity, or plain HTTP on a loopback address
//! when explicitly asked (tests, `lifeboat up`). The server serves its API and dashboard
//! through the same function. Each connection is its own task, admitted within the
//! listener's limits (`admission`: connections in all and per address, an idle limit that
//! also bounds the TLS handshake and the wait for a request's head) and served through
//! `tracked` (requests in flight; request bodies that stall fail).

pub mod admission;
mod tracked;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub use admission::Limits;
use admission::{Activity, Admission, Ending};
use tracked::Tracked;

use crate::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("plain HTTP is allowed on a loopback address only, and {0} is not one; drop --insecure-http to serve TLS")]
    PlainNotLoopback(SocketAddr),
    #[error("setting up TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The operator's certificate or key (`--tls-cert`, `--tls-key`) cannot be used.
    #[error("{path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("accepting connections on {addr}: {source}")]
    Accept {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How the agent speaks.
pub enum Transport {
    Tls(Arc<rustls::ServerConfig>),
    /// Plain HTTP: loopback only.
    PlainLoopback,
}

impl Transport {
    /// TLS with Lifeboat's self-signed identity (clients pin its fingerprint).
    pub fn tls(identity: &Identity) -> Result<Transport, ServeError> {
        Self::tls_with(vec![identity.cert.clone()], identity.key())
    }

    /// TLS with the operator's certificate chain and key, PEM files (`--tls-cert`,
    /// `--tls-key`); also the host's own certificate, the chain's first, whose fingerprint
    /// clients pin when they do not check a CA.
    pub fn tls_from_pem(
        cert: &Path,
        key: &Path,
    ) -> Result<(Transport, rustls::pki_types::CertificateDer<'static>), ServeError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |path: &Path, reason: String| ServeError::Certificate {
            path: path.display().to_string(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(cert, format!("reading PEM certificates: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(bad(cert, "holds no certificate (PEM `CERTIFICATE`)".into()));
        };
        let leaf = leaf.clone();
        // A key others may read is a key others may have: group-readable is the Debian
        // way (`ssl-cert`), world-readable is refused.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key)
            .map_err(|e| bad(key, e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o004 != 0 {
            return Err(bad(
                key,
                format!(
                    "every user can read this private key (mode {:o}); run `chmod o-r {}`",
                    mode & 0o777,
                    key.display()
                ),
            ));
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| bad(key, format!("reading a PEM private key: {e}")))?;
        let transport = Self::tls_with(chain, key_der).map_err(|e| match e {
            ServeError::Tls(e) => bad(
                cert,
                format!(
                    "with the key {}: {e} (is it this certificate's key?)",
                    key.display()
                ),
            ),
            e => e,
        })?;
        Ok((transport, leaf))
    }

    fn tls_with(
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Transport, ServeError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // HTTP/2 when the client offers it (browsers do): one connection carries every
        // request of a dashboard, so its event streams never exhaust the six connections
        // a browser opens to one HTTP/1.1 server, which stalls page loads.
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Transport::Tls(Arc::new(config)))
    }
}

/// Serves `router` on `listener` until the task is dropped, holding connections within
/// `limits` (see `admission`).
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    router: Router,
    limits: Limits,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Accept {
        addr: ([0, 0, 0, 0], 0).into(),
        source,
    })?;
    if matches!(transport, Transport::PlainLoopback) && !addr.ip().is_loopback() {
        return Err(ServeError::PlainNotLoopback(addr));
    }
    let acceptor = match &transport {
        Transport::Tls(config) => Some(tokio_rustls::TlsAcceptor::from(config.clone())),
        Transport::PlainLoopback => None,
    };
    let admission = Admission::new(limits);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors and the like: wait a little rather than spin.
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // An answer may go out in several writes (on a new TLS connection, the session
        // tickets, then the answer): with Nagle's algorithm a write waits for the ACK of
        // the one before, which the client may delay by 40 ms (Linux).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(refused) => {
                // Closed at once (dropped): the client sees the connection end, not a hang.
                tracing::debug!(%peer, ?refused, "connection refused");
                continue;
            }
        };
        let service = Tracked {
            router: router.clone(),
            activity: ticket.activity.clone(),
            body_stall: limits.body_stall,
            peer,
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let activity = ticket.activity.clone();
            match acceptor {
                Some(acceptor) => {
                    // The idle limit covers the handshake: a client that connects and
                    // sends nothing, or half a handshake, is closed.
                    let tls = tokio::select! {
                        r = acceptor.accept(stream) => match r {
                            Ok(tls) => tls,
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                        },
                        _ = activity.ended(limits.idle) => {
                            tracing::debug!(%peer, "TLS handshake not done in time");
                            return;
                        }
                    };
                    serve_io(TokioIo::new(tls), service, &activity, limits.idle).await;
                }
                None => serve_io(TokioIo::new(stream), service, &activity, limits.idle).await,
            }
            drop(ticket);
        });
    }
}

/// How long an idle connection told to close may take to let go.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// HTTP/2 streams at once on one connection: each may hold a request body, so this bounds
/// what one connection can make the server hold (browsers open a handful).
const MAX_STREAMS: u32 = 16;
/// The most an HTTP/1 connection buffers of a request's head.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Serves one connection until it ends, or until it has been idle for `idle` (which also
/// bounds the wait for a request's head) or was pushed out by a newer one.
async fn serve_io<I>(io: I, service: Tracked, activity: &Activity, idle: Duration)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = service.peer;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(MAX_HEAD_BYTES);
    builder.http2().max_concurrent_streams(MAX_STREAMS);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let ending = tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        ending = activity.ended(idle) => ending,
    };
    // Pushed out while still idle: its slot is someone else's already, so it goes now.
    if ending == Ending::PushedOut && activity.is_idle() {
        tracing::debug!(%peer, "connection pushed out by a newer one");
        return;
    }
    // HTTP/2 clients get a GOAWAY, so they send no new request on a connection that is
    // being closed; an idle HTTP/1 connection closes at once. A request that started in
    // the meantime (a planned failover may take minutes) is let finish: the connection
    // is cut only once it has been idle for the grace period.
    tracing::debug!(%peer, "closing an idle connection");
    connection.as_mut().graceful_shutdown();
    loop {
        match tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await {
            Ok(_) => return,
            Err(_) if activity.is_idle() => return,
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use axum::Router;

    use super::{serve, Limits, Transport};
    use crate::identity::Identity;

    /// Whether each connection this process accepted on `port` (the listener aside) has
    /// TCP_NODELAY set.
    fn accepted_nodelay(port: u16) -> Vec<bool> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
            let Some(fd) = entry
                .unwrap()
                .file_name()
                .to_str()
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let addr_ptr = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
            // SAFETY: `addr` and `len` describe a writable sockaddr_in; a descriptor that is
            // not a socket (or not IPv4) makes the call fail or the family differ.
            if unsafe { libc::getsockname(fd, addr_ptr, &mut len) } != 0
                || addr.sin_family != libc::AF_INET as libc::sa_family_t
                || u16::from_be(addr.sin_port) != port
            {
                continue;
            }
            // SAFETY: as above; the listener has no peer, so it is skipped.
            if unsafe { libc::getpeername(fd, addr_ptr, &mut len) } != 0 {
                continue;
            }
            let mut on: libc::c_int = 0;
            let mut on_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `on` and `on_len` describe a writable c_int.
            let got = unsafe {
                libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    &mut on as *mut libc::c_int as *mut libc::c_void,
                    &mut on_len,
                )
            };
            assert_eq!(got, 0, "getsockopt TCP_NODELAY");
            found.push(on != 0);
        }
        found
    }

    /// Every accepted connection sends at once (TCP_NODELAY). An answer goes out in
    /// several writes (session tickets on a new TLS connection, TLS records, hyper's head
    /// and body); with Nagle's algorithm the next one waited for the client's delayed ACK,
    /// 40 ms. The server makes a new client, so a new connection, for most agent calls:
    /// in `lifeboat-bench scale` at 100 VMs the Hosts & VMs page, which asks every host
    /// for its inventory, took 48 ms; 4 ms with this.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepted_connections_send_without_waiting_for_acks() {
        let home = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(home.path(), "test").unwrap();
        let router = Router::new().route("/", get(|| async { "x".repeat(20 << 10) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let transport = Transport::tls(&identity).unwrap();
        tokio::spawn(serve(listener, transport, router, Limits::default()));
        let http =
            crate::client::pinned_http_client(&identity.fingerprint(), Duration::from_secs(10))
                .unwrap();
        // Kept alive in the client's pool while the sockets are looked at.
        let got = http
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.len(), 20 << 10);
        let accepted = accepted_nodelay(port);
        assert_eq!(
            accepted,
            vec![true],
            "TCP_NODELAY of the accepted connections"
        );
    }
}
