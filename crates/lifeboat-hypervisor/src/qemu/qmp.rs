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
}

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

pub struct Qmp {
    service: Service,
    driver: tokio::task::JoinHandle<()>,
    timeout: Duration,
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
        let reply = tokio::time::timeout(timeout, self.service.execute(command))
            .await
            .map_err(|_| QmpError::Timeout {
                secs: timeout.as_secs(),
            })?;
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
