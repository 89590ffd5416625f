//! The routes as one connection sees them: each request counts as in flight until its
//! response body has been sent (so a connection with a running request, or an open event
//! stream, is never closed as idle), and a request body that stops arriving fails after a
//! while instead of holding the connection forever.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tower::ServiceExt;

use super::admission::{Activity, InFlight};

/// `router`, counting requests on one connection.
#[derive(Clone)]
pub struct Tracked {
    pub router: Router,
    pub activity: Arc<Activity>,
    pub body_stall: Duration,
    /// Who connected: handlers see it as `axum::extract::ConnectInfo` (the server's login
    /// throttle and audit log need the client's address).
    pub peer: std::net::SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.enter();
        let stall = self.body_stall;
        let mut req = req.map(|b| Body::new(StallLimit::new(b, stall)));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let router = self.router.clone();
        Box::pin(async move {
            let resp = router.oneshot(req).await?;
            Ok(resp.map(|body| {
                Body::new(Counted {
                    inner: body,
                    _in_flight: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct Counted {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails when no byte arrives for `stall`, or when the whole of it
/// has not arrived within `BODY_DEADLINE` (every request body is a small JSON document or
/// form, so a body that trickles in for longer is an attack on the connection's slot).
struct StallLimit {
    inner: Incoming,
    stall: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    whole: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The longest a request body may take in all.
pub const BODY_DEADLINE: Duration = Duration::from_secs(60);

impl StallLimit {
    fn new(inner: Incoming, stall: Duration) -> StallLimit {
        StallLimit {
            inner,
            stall,
            timer: None,
            whole: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the request body stopped arriving for {0:?}")]
    Stalled(Duration),
    #[error("the request body took longer than {0:?}")]
    TooSlow(Duration),
}

impl HttpBody for StallLimit {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let whole = self
            .whole
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(BODY_DEADLINE)));
        if whole.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyError::TooSlow(BODY_DEADLINE)))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyError::Stalled(stall))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
