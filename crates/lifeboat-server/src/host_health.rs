//! Whether each enrolled host's agent answers, and with which version: every
//! [`PERIOD`], every host is greeted (`GET /api/v1/hello`, through its pinned certificate)
//! at once, each within [`HELLO_TIMEOUT`], so one dead host delays no other. What they
//! said is kept in memory for `GET /api/v1/hosts`, `hosts list` and `/metrics`
//! (`lifeboat_host_up`, `lifeboat_host_version_skew`); a server that just started knows
//! nothing until its first round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::{Database, HostAccess};

/// How often every host is greeted.
pub const PERIOD: Duration = Duration::from_secs(10);
/// How long one greeting may take.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a host's agent said at its last greeting.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HostHealth {
    /// It answered, through the certificate pinned at enrollment.
    pub up: bool,
    /// When it was greeted (RFC 3339).
    pub checked_at: String,
    /// The agent's Lifeboat version, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// What is wrong when the agent's release line is not the server's, and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_skew: Option<String>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The last greeting of every host, by host id.
#[derive(Default)]
pub struct HealthBoard {
    by_host: Mutex<HashMap<String, HostHealth>>,
}

impl HealthBoard {
    /// What `host` said last; `None` before its first greeting.
    pub fn get(&self, host: &str) -> Option<HostHealth> {
        self.lock().get(host).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostHealth>> {
        self.by_host.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Greets every host every [`PERIOD`], forever.
pub async fn run(db: Database, board: Arc<HealthBoard>) {
    loop {
        match db.hosts_with_access().await {
            Ok(hosts) => round(&hosts, &board).await,
            Err(e) => tracing::warn!(error = %e, "host health: reading the hosts"),
        }
        tokio::time::sleep(PERIOD).await;
    }
}

/// Greets `hosts` at once and records what each said; says when one goes down, comes
/// back, or runs another release line.
pub async fn round(hosts: &[HostAccess], board: &HealthBoard) {
    let greetings = hosts.iter().map(|h| async move { (h, greet(h).await) });
    let said = futures::future::join_all(greetings).await;
    let mut all = board.lock();
    // A host removed since the last round is forgotten.
    all.retain(|id, _| hosts.iter().any(|h| h.host.id.as_str() == id));
    for (h, now) in said {
        let before = all.get(h.host.id.as_str());
        let name = &h.host.hostname;
        match (before.map(|b| b.up), now.up) {
            (Some(true) | None, false) => {
                tracing::warn!(host = %name, error = now.error.as_deref().unwrap_or(""), "host down: its agent does not answer")
            }
            (Some(false), true) => tracing::info!(host = %name, "host up again"),
            _ => {}
        }
        if now.version_skew.is_some() && before.and_then(|b| b.version_skew.as_ref()).is_none() {
            tracing::warn!(host = %name, skew = now.version_skew.as_deref().unwrap_or(""), "agent version skew");
        }
        all.insert(h.host.id.to_string(), now);
    }
}

async fn greet(h: &HostAccess) -> HostHealth {
    let checked_at = chrono::Utc::now().to_rfc3339();
    // The client's own timeout bounds the greeting, connection and answer alike.
    let said = match crate::agents::agent_client(h, HELLO_TIMEOUT) {
        Ok(client) => client.hello().await,
        Err(e) => Err(e),
    };
    match said {
        Ok(hello) => HostHealth {
            up: true,
            checked_at,
            version_skew: lifeboat_types::version::skew(env!("CARGO_PKG_VERSION"), &hello.version)
                .map(|s| s.message()),
            agent_version: Some(hello.version),
            error: None,
        },
        Err(e) => HostHealth {
            up: false,
            checked_at,
            agent_version: None,
            version_skew: None,
            error: Some(e.to_string()),
        },
    }
}
