//! Named pauses in long operations, for crash tests: with `LIFEBOAT_FAILPOINT=NAME` and
//! `LIFEBOAT_FAILPOINT_FILE=PATH` in its environment, a Lifeboat process (agent or
//! server) writes PATH when it reaches the point NAME and then waits there, so a test can
//! kill it at exactly that step. Without them, nothing happens.

/// Stops here for good (until killed) when this is the configured failpoint.
pub async fn reached(name: &str) {
    if std::env::var("LIFEBOAT_FAILPOINT").ok().as_deref() != Some(name) {
        return;
    }
    tracing::warn!(failpoint = name, "failpoint reached; waiting to be killed");
    if let Ok(path) = std::env::var("LIFEBOAT_FAILPOINT_FILE") {
        let _ = std::fs::write(path, name);
    }
    std::future::pending::<()>().await;
}
