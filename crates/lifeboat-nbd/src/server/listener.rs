//! Accepting clients on a Unix socket, each connection in its own task.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::task::JoinSet;

use super::{serve_connection, ExportSource, ServeError, ServerOptions};

/// Pause after an accept error that may clear up (out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves clients of `listener` until the task running it is aborted (or the
/// future dropped), which also ends every connection; QEMU then sees its
/// export vanish. Returns only if the listener fails for good. The caller
/// owns the socket file: it binds it and removes it afterwards.
pub async fn serve_unix<S: ExportSource>(
    listener: UnixListener,
    source: Arc<S>,
    options: ServerOptions,
) -> Result<(), ServeError> {
    let options = Arc::new(options);
    let max_connections = options.max_connections.max(1);
    // Dropping the set (abort of this task) aborts every connection.
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        while let Some(done) = connections.try_join_next() {
            log_panic(&options.export_name, done);
        }
        if connections.len() >= max_connections {
            if let Some(done) = connections.join_next().await {
                log_panic(&options.export_name, done);
            }
            continue;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_transient(&e) => {
                tracing::warn!(
                    export = options.export_name,
                    "nbd accept failed, retrying: {e}"
                );
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
            Err(source) => {
                return Err(ServeError::Accept {
                    export: options.export_name.clone(),
                    source,
                })
            }
        };
        next_id += 1;
        let id = next_id;
        let (source, options) = (source.clone(), options.clone());
        connections.spawn(async move {
            tracing::debug!(export = options.export_name, id, "nbd client connected");
            match serve_connection(stream, source, &options).await {
                Ok(()) => tracing::debug!(export = options.export_name, id, "nbd client left"),
                Err(e) if e.is_client_gone() => tracing::debug!(id, "{e}"),
                Err(e) => tracing::warn!(id, "{e}"),
            }
        });
    }
}

fn log_panic(export: &str, done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(export, "nbd connection task panicked: {e}");
        }
    }
}

/// Errors after which accepting again can work.
fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    // ENFILE, EMFILE, ENOBUFS and ENOMEM (Linux numbers): resources that free up.
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | OutOfMemory
    ) || matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
}
