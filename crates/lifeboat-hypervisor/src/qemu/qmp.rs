//! A QMP connection with a deadline on everything.
//!
//! Commands are typed through the `qapi` crate. Its schema is newer than the QEMU 7.2 we
//! run on, so where a generated reply type carries fields 7.2 does not send, `commands`
//! declares a smaller command of our own with the same wire name.
//!
//! QEMU's monitor serves one client at a time: a second client's connect succeeds but no
//! greeting comes until the first leaves. So connections are short-lived, and connecting
//! and every command are bounded by a timeout instead of waiting forever.

use std::path::Path;
use std::time::Duration;

use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp::QmpCommand;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer within {secs} s (is another client holding the monitor, or QEMU hung?)")]
    Timeout { secs: u64 },
    #[error("QEMU closed the monitor connection (did it exit?)")]
    Disconnected,
    #[error("QEMU refused it: {class}: {desc}")]
    Refused { class: String, desc: String },
    #[error("unexpected reply: {0}")]
    BadReply(String),
    #[error("an earlier command on this monitor connection got no answer in time; connect again")]
    Stale,
}

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

pub struct Qmp {
    service: Service,
    driver: tokio::task::JoinHandle<()>,
    timeout: Duration,
    /// One command at a time: without out-of-band support `qapi` gives every command the
    /// same id, so replies are told apart only by order.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// A command timed out, or its caller went away before the answer: its reply may
    /// still come and would be taken for the next command's (and `qapi` still holds its
    /// id, so the next command would make it panic), so the connection is not used again.
    stale: std::sync::atomic::AtomicBool,
}

/// Marks the connection stale unless the command it guards got its answer: dropped with
/// the caller's future mid-command (a cancelled sync), it leaves the connection unusable
/// rather than poisoned.
struct InFlight<'a> {
    stale: &'a std::sync::atomic::AtomicBool,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Qmp {
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let secs = timeout.as_secs();
        let connect = async {
            let socket = UnixStream::connect(path)
                .await
                .map_err(|source| QmpError::Connect {
                    path: path.display().to_string(),
                    source,
                })?;
            let negotiation = QmpStreamTokio::open(socket).await.map_err(map_io)?;
            negotiation.negotiate().await.map_err(map_io)
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| QmpError::Timeout { secs })??;
        let (service, driver) = stream.spawn_tokio();
        Ok(Qmp {
            service,
            driver,
            timeout,
            one_at_a_time: tokio::sync::Mutex::new(()),
            stale: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs one command and waits for its reply, at most the connection's timeout.
    pub async fn run<C>(&self, command: C) -> Result<C::Ok, QmpError>
    where
        C: QmpCommand + 'static,
    {
        self.run_within(command, self.timeout).await
    }

    pub async fn run_within<C>(&self, command: C, timeout: Duration) -> Result<C::Ok, QmpError>
    where
        C: QmpCommand + 'static,
    {
        use std::sync::atomic::Ordering;
        let _turn = self.one_at_a_time.lock().await;
        if self.stale.load(Ordering::SeqCst) {
            return Err(QmpError::Stale);
        }
        let mut in_flight = InFlight {
            stale: &self.stale,
            answered: false,
        };
        let reply = match tokio::time::timeout(timeout, self.service.execute(command)).await {
            Ok(r) => r,
            Err(_) => {
                return Err(QmpError::Timeout {
                    secs: timeout.as_secs(),
                });
            }
        };
        // Only an answer frees the command's id in `qapi`: a reply, or QEMU's refusal. A
        // command whose sending failed (QEMU died under it, as a fence kills it) leaves
        // its id taken, and the next command on this connection made `qapi` panic
        // ("QAPI duplicate command id 0"), poisoning the agent's task.
        in_flight.answered = matches!(reply, Ok(_) | Err(qapi::ExecuteError::Qapi(_)));
        reply.map_err(|e| match e {
            qapi::ExecuteError::Qapi(e) => QmpError::Refused {
                class: format!("{:?}", e.class),
                desc: e.desc,
            },
            qapi::ExecuteError::Io(e) => map_io(e),
        })
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        // The reader task owns the socket's read half; ending it closes the connection so
        // the monitor is free for the next client at once.
        self.driver.abort();
    }
}

fn map_io(e: std::io::Error) -> QmpError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset => QmpError::Disconnected,
        _ if e.to_string().contains("disconnected") => QmpError::Disconnected,
        _ => QmpError::BadReply(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! A scripted monitor stands in for QEMU here: a real one cannot be made to leave a
    //! command unanswered on cue.
    use super::*;
    use crate::qemu::commands::QueryStatus;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// Greets, accepts capabilities, then answers `query-status` after `delay` (or never).
    async fn monitor(path: &Path, delay: Option<Duration>) {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (rd, wr) = tokio::io::split(sock);
            let wr = std::sync::Arc::new(tokio::sync::Mutex::new(wr));
            wr.lock()
                .await
                .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let wr = wr.clone();
                let status = line.contains("query-status");
                tokio::spawn(async move {
                    if status {
                        match delay {
                            Some(d) => tokio::time::sleep(d).await,
                            None => return,
                        }
                        let _ = wr.lock().await.write_all(b"{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}}\n").await;
                    } else {
                        let _ = wr.lock().await.write_all(b"{\"return\": {}}\n").await;
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn a_command_without_answer_makes_the_connection_stale_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        monitor(&path, None).await;
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let first = qmp
            .run_within(QueryStatus {}, Duration::from_millis(200))
            .await;
        assert!(matches!(first, Err(QmpError::Timeout { .. })), "{first:?}");
        // Before the fix the next command reused the timed-out one's id: qapi panicked.
        let second = qmp.run(QueryStatus {}).await;
        assert!(matches!(second, Err(QmpError::Stale)), "{second:?}");
    }

    /// A caller that goes away mid-command (its sync cancelled) leaves the connection
    /// stale: the next command once reused the abandoned one's id and qapi panicked
    /// ("QAPI duplicate command id"), poisoning the connection for every later caller.
    #[tokio::test]
    async fn a_command_whose_caller_went_away_makes_the_connection_stale_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        monitor(&path, Some(Duration::from_millis(300))).await;
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let abandoned = tokio::time::timeout(Duration::from_millis(50), qmp.run(QueryStatus {}));
        assert!(abandoned.await.is_err(), "the caller gave up first");
        let next = qmp.run(QueryStatus {}).await;
        assert!(matches!(next, Err(QmpError::Stale)), "{next:?}");
    }

    /// Greets, accepts capabilities, then closes: QEMU dying under its client.
    async fn dying_monitor(path: &Path) {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (rd, mut wr) = tokio::io::split(sock);
                wr.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}\n")
                    .await
                    .unwrap();
                let mut lines = BufReader::new(rd).lines();
                if let Ok(Some(_)) = lines.next_line().await {
                    let _ = wr.write_all(b"{\"return\": {}}\n").await;
                }
                // Gone: both halves dropped here.
            }
        });
    }

    /// Commands on a connection whose QEMU died each fail, however the failure shows
    /// (the send, or the reply never coming), and never panic: a failed send once left
    /// its command's id taken, and the next command made `qapi` panic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_after_qemu_died_fail_and_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        dying_monitor(&path).await;
        for _ in 0..200 {
            let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
            for _ in 0..3 {
                let r = qmp.run_within(QueryStatus {}, Duration::from_secs(5)).await;
                assert!(
                    matches!(r, Err(QmpError::Disconnected | QmpError::Stale)),
                    "{r:?}"
                );
            }
        }
    }

    /// Two tasks sharing a connection each get their own answer (replies carry no id that
    /// would tell them apart).
    #[tokio::test]
    async fn commands_from_two_tasks_each_get_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        monitor(&path, Some(Duration::from_millis(50))).await;
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let (a, b) = tokio::join!(qmp.run(QueryStatus {}), qmp.run(QueryStatus {}));
        assert!(a.unwrap().running && b.unwrap().running);
    }
}
