//! The CLI's side of the server's REST API: where it is, how it is trusted, the token.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::cli::ServerConn;

const TIMEOUT: Duration = Duration::from_secs(60);

pub struct ServerClient {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl ServerClient {
    pub fn new(conn: &ServerConn, home: &Path) -> Result<ServerClient> {
        let base = conn.server.trim_end_matches('/').to_string();
        let http = if let Some(rest) = base.strip_prefix("http://") {
            let host = rest.split('/').next().unwrap_or("");
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                bail!("{base}: plain http is for a server on this machine only; use https:// and --server-fingerprint");
            }
            reqwest::Client::builder().timeout(TIMEOUT).build()?
        } else if base.starts_with("https://") {
            // On the server's own machine its certificate is in HOME: pin that one.
            let local = std::fs::read(home.join("server/identity/cert.der"))
                .ok()
                .map(|der| lifeboat_agent::identity::fingerprint(&der));
            let Some(fp) = conn.server_fingerprint.clone().or(local) else {
                bail!("{base}: give the server's certificate fingerprint (--server-fingerprint or LIFEBOAT_SERVER_FINGERPRINT; the server prints it at start)");
            };
            lifeboat_agent::client::pinned_http_client(&fp, TIMEOUT)?
        } else {
            bail!("{base}: the server URL must start with http:// or https://");
        };
        Ok(ServerClient {
            base,
            http,
            token: token(conn, home)?,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req.bearer_auth(&self.token).send().await.with_context(|| {
            format!(
                "cannot reach the server at {} (is `lifeboat server` running?)",
                self.base
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            // The server's message, as is.
            bail!(
                "the server refused ({}): {}",
                status.as_u16(),
                body["error"].as_str().unwrap_or("no reason given")
            );
        }
        resp.json().await.context("reading the server's answer")
    }
}

/// The API token: LIFEBOAT_TOKEN, else --token-file, else the server's own
/// HOME/server/admin.token when this is the server's machine.
fn token(conn: &ServerConn, home: &Path) -> Result<String> {
    if let Ok(t) = std::env::var("LIFEBOAT_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let (path, given) = match &conn.token_file {
        Some(p) => (p.clone(), true),
        None => (home.join("server").join("admin.token"), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ if given => bail!("cannot read an API token from {}", path.display()),
        _ => bail!("no API token: set LIFEBOAT_TOKEN or --token-file (the server printed a token at first start)"),
    }
}
