//! Clients for the enrolled agents, each pinned to its agent's certificate and presenting
//! its credential: one made per call ([`agent_client`]), or one kept per host
//! ([`AgentClients`]) for callers that ask the same hosts again and again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lifeboat_agent::client::{AgentClient, ClientError};

use crate::db::HostAccess;

/// How long the server waits for one answer from an agent.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for `h`'s agent, pinned to its certificate, presenting its credential.
pub fn agent_client(h: &HostAccess, timeout: Duration) -> Result<AgentClient, ClientError> {
    Ok(
        AgentClient::new(&h.host.address, &h.host.fingerprint, timeout)?
            .with_credential(&h.credential),
    )
}

/// What a host's client was made with: address, pinned certificate, credential.
type ClientKey = (String, String, lifeboat_agent::secret::Secret);

/// One client per host, shared by every step of the host's protections (a new one per
/// step would make a TLS handshake per poll), made again only when the host's address,
/// pinned certificate or credential changed.
#[derive(Default)]
pub struct AgentClients {
    by_host: Mutex<HashMap<String, (ClientKey, AgentClient)>>,
}

impl AgentClients {
    /// `host`'s client, with [`AGENT_TIMEOUT`].
    pub fn get(&self, host: &HostAccess) -> Result<AgentClient, ClientError> {
        let key = (
            host.host.address.clone(),
            host.host.fingerprint.clone(),
            host.credential.clone(),
        );
        let mut all = self.by_host.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, c)) = all.get(host.host.id.as_str()) {
            if *k == key {
                return Ok(c.clone());
            }
        }
        let client = AgentClient::new(&key.0, &key.1, AGENT_TIMEOUT)?.with_credential(&key.2);
        all.insert(host.host.id.to_string(), (key, client.clone()));
        Ok(client)
    }
}
