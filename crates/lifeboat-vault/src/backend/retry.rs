//! One retry loop for every backend. `object_store`'s own HTTP retries are switched off
//! (`max_retries = 0`) so that the folder, S3 and Azure all count attempts, time out and
//! report a dead storage the same way, and a request waiting in backoff holds no
//! concurrency permit.
//!
//! Retried: connection refused/reset, timeouts, HTTP 5xx (except 501/505), 408 and 429.
//! Never retried: not found, precondition/already exists, denied, bad requests — the
//! same answer would come back.

use std::future::Future;
use std::time::Duration;

use object_store::client::{HttpError, HttpErrorKind};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::error::{root_cause, seconds};

/// How hard to try; see [`super::BackendOptions`] for the meaning of each field.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_elapsed: Duration,
    pub request_timeout: Duration,
}

/// Why an operation failed after the retry loop.
#[derive(Debug)]
pub(crate) enum Failure {
    /// An answer that retrying would not change.
    Permanent(object_store::Error),
    /// Transient errors until the attempts or the time ran out.
    Exhausted {
        attempts: u32,
        elapsed: Duration,
        cause: String,
    },
}

/// Is this error worth another attempt? `Some(cause)` if so.
pub(crate) fn transient_cause(err: &object_store::Error) -> Option<String> {
    use object_store::Error as E;
    let E::Generic { source, .. } = err else {
        // NotFound, AlreadyExists, Precondition, PermissionDenied, Unauthenticated,
        // InvalidPath, NotImplemented, …: definite answers.
        return None;
    };
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(e) = current {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            )
            .then(|| root_cause(http));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::TimedOut
                    | K::Interrupted
                    | K::UnexpectedEof
            )
            .then(|| root_cause(io));
        }
        current = e.source();
    }
    // object_store keeps the HTTP status of a failed request in a private type; its
    // message is the only public trace ("… status code: 503 Service Unavailable: …").
    let status = http_status(&err.to_string())?;
    let retry = status == 408
        || status == 429
        || (500..600).contains(&status) && status != 501 && status != 505;
    retry.then(|| format!("the server answered HTTP {status}"))
}

fn http_status(message: &str) -> Option<u16> {
    let at = message.find("status code: ")? + "status code: ".len();
    message.get(at..at + 3)?.parse().ok()
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails for good, or the attempts or time run out.
    /// Each attempt holds one permit of `permits` and is cut off after `request_timeout`.
    /// Returns the value and the number of attempts it took.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        permits: &Semaphore,
        mut op: F,
    ) -> Result<(T, u32), Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, object_store::Error>>,
    {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = {
                let _permit = permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                tokio::time::timeout(self.request_timeout, op()).await
            };
            let cause = match outcome {
                Ok(Ok(value)) => return Ok((value, attempt)),
                Ok(Err(err)) => match transient_cause(&err) {
                    Some(cause) => cause,
                    None => return Err(Failure::Permanent(err)),
                },
                Err(_) => format!("no answer within {}", seconds(&self.request_timeout)),
            };
            let delay = self.backoff(attempt);
            let elapsed = start.elapsed();
            if attempt >= self.max_attempts || elapsed + delay > self.max_elapsed {
                return Err(Failure::Exhausted {
                    attempts: attempt,
                    elapsed,
                    cause,
                });
            }
            tracing::debug!(attempt, ?delay, %cause, "storage request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random, so that many
    /// writers failing together do not come back together.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << (attempt - 1).min(20))
            .min(self.max_backoff);
        let half = exp / 2;
        let mut byte = [0u8; 2];
        let jitter = match getrandom::fill(&mut byte) {
            Ok(()) => f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX),
            Err(_) => 0.5,
        };
        half + half.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_elapsed: Duration::from_secs(5),
            request_timeout: Duration::from_millis(200),
        }
    }

    fn server_error(status: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: format!("Error performing PUT http://x/y in 1ms - Server returned non-2xx status code: {status}: body").into(),
        }
    }

    #[test]
    fn classifies() {
        assert!(transient_cause(&server_error("503 Service Unavailable")).is_some());
        assert!(transient_cause(&server_error("429 Too Many Requests")).is_some());
        assert!(transient_cause(&server_error("501 Not Implemented")).is_none());
        assert!(transient_cause(&server_error("400 Bad Request")).is_none());
        let refused = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                HttpErrorKind::Connect,
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            )),
        };
        assert!(transient_cause(&refused).is_some());
        let missing = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert!(transient_cause(&missing).is_none());
    }

    #[tokio::test]
    async fn retries_then_gives_up_with_count() {
        let calls = AtomicU32::new(0);
        let permits = Semaphore::new(1);
        let result: Result<((), u32), _> = policy()
            .run(&permits, || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(server_error("503 Service Unavailable")) }
            })
            .await;
        match result {
            Err(Failure::Exhausted {
                attempts, cause, ..
            }) => {
                assert_eq!(attempts, 4);
                assert!(cause.contains("503"), "{cause}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_hung_request_times_out_and_is_retried() {
        let calls = AtomicU32::new(0);
        let permits = Semaphore::new(1);
        let (value, attempts) = policy()
            .run(&permits, || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, object_store::Error>(7)
                }
            })
            .await
            .unwrap();
        assert_eq!((value, attempts), (7, 2));
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let permits = Semaphore::new(1);
        let result: Result<((), u32), _> = policy()
            .run(&permits, || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err(object_store::Error::NotFound {
                        path: "x".into(),
                        source: "gone".into(),
                    })
                }
            })
            .await;
        assert!(matches!(result, Err(Failure::Permanent(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
