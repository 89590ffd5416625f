//! Serving the routes: TLS with the agent's identity, or plain HTTP on a loopback address
//! when explicitly asked (tests, `lifeboat up`). Each connection is its own task; a TLS
//! handshake that stalls is dropped after a timeout, so a port scan cannot pile them up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::identity::Identity;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("plain HTTP is allowed on a loopback address only, and {0} is not one; drop --insecure-http to serve TLS")]
    PlainNotLoopback(SocketAddr),
    #[error("setting up TLS: {0}")]
    Tls(#[from] rustls::Error),
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
    pub fn tls(identity: &Identity) -> Result<Transport, ServeError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![identity.cert.clone()], identity.key())?;
        // HTTP/2 when the client offers it (browsers do): one connection carries every
        // request of a dashboard, so its event streams never exhaust the six connections
        // a browser opens to one HTTP/1.1 server, which stalls page loads.
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Transport::Tls(Arc::new(config)))
    }
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    router: Router,
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
        // Handlers see who connected (`axum::extract::ConnectInfo`): the server's login
        // throttle and audit log need the client's address.
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        ));
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let served = match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    builder.serve_connection(TokioIo::new(tls), service).await
                }
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
