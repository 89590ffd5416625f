//! The CLI's side of the server's REST API: where it is, how it is trusted, the token.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lifeboat_agent::client::{read_bounded, ReadError};
use lifeboat_server::api::protection::ProtectionList;
use lifeboat_server::api::status::Overview;
use lifeboat_server::api::VmList;
use serde::de::DeserializeOwned;

use crate::cli::ServerConn;

// A failover waits while the recovery host brings the VM up: seconds normally, minutes
// on a busy host.
const TIMEOUT: Duration = Duration::from_secs(300);
/// The largest answer read from the server (a VM list of thousands of VMs fits).
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// An event stream's whole life at most (an operation waits at most hours for a sync).
const EVENTS_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_SERVER: &str = "https://127.0.0.1:7400";

/// The client config file: what flags and environment variables leave unset.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub server: Option<String>,
    pub server_fingerprint: Option<String>,
    pub token_file: Option<std::path::PathBuf>,
    /// The CA that signed a server's own certificate (`server --tls-cert`).
    pub ca_cert: Option<std::path::PathBuf>,
    /// The API token itself; the file must then be readable by its owner only.
    pub token: Option<String>,
}

impl ClientConfig {
    /// `LIFEBOAT_CONFIG`, else `~/.config/lifeboat/client.toml` (absent: empty). A
    /// `LIFEBOAT_CONFIG` naming a file that is not there is said, not fatal: flags and
    /// environment may give all a command needs (as kubectl treats `KUBECONFIG`).
    pub fn load() -> Result<ClientConfig> {
        let (path, given) = match std::env::var_os("LIFEBOAT_CONFIG") {
            Some(p) => (std::path::PathBuf::from(p), true),
            None => match std::env::var_os("HOME") {
                Some(h) => (Path::new(&h).join(".config/lifeboat/client.toml"), false),
                None => return Ok(ClientConfig::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if given {
                    tracing::warn!(
                        "LIFEBOAT_CONFIG names {}, which does not exist: using flags and \
                         environment variables only",
                        path.display()
                    );
                }
                return Ok(ClientConfig::default());
            }
            Err(e) => bail!("reading the client config {}: {e}", path.display()),
        };
        let config: ClientConfig = crate::config_file::parse(&path, &text)?;
        if config.token.is_some() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "client config {} holds a token but others can read it (mode {:o}); run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                );
            }
        }
        Ok(config)
    }
}

/// An answer that comes in pages (`?offset=`, `next_offset`): [`ServerClient::get_all`]
/// reads every page into the first.
pub trait Paged: DeserializeOwned {
    fn offset(&self) -> usize;
    fn next_offset(&self) -> Option<usize>;
    /// Takes the next page's rows, and where the page after it starts.
    fn append(&mut self, next: Self);
}

impl Paged for Overview {
    fn offset(&self) -> usize {
        self.offset
    }
    fn next_offset(&self) -> Option<usize> {
        self.next_offset
    }
    fn append(&mut self, next: Self) {
        self.protections.extend(next.protections);
        self.next_offset = next.next_offset;
    }
}

impl Paged for ProtectionList {
    fn offset(&self) -> usize {
        self.offset
    }
    fn next_offset(&self) -> Option<usize> {
        self.next_offset
    }
    fn append(&mut self, next: Self) {
        self.protections.extend(next.protections);
        self.next_offset = next.next_offset;
    }
}

impl Paged for VmList {
    fn offset(&self) -> usize {
        self.offset
    }
    fn next_offset(&self) -> Option<usize> {
        self.next_offset
    }
    fn append(&mut self, next: Self) {
        self.vms.extend(next.vms);
        // Every page names the hosts that did not answer it: each once.
        for p in next.unreachable {
            if !self.unreachable.iter().any(|q| q.address == p.address) {
                self.unreachable.push(p);
            }
        }
        self.next_offset = next.next_offset;
    }
}

pub struct ServerClient {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl ServerClient {
    pub fn new(conn: &ServerConn, home: &Path) -> Result<ServerClient> {
        let config = ClientConfig::load()?;
        let conn = &ServerConn {
            server: conn.server.clone().or(config.server.clone()),
            server_fingerprint: conn
                .server_fingerprint
                .clone()
                .or(config.server_fingerprint.clone()),
            token_file: conn.token_file.clone().or(config.token_file.clone()),
            ca_cert: conn.ca_cert.clone().or(config.ca_cert.clone()),
        };
        let base = conn
            .server
            .as_deref()
            .unwrap_or(DEFAULT_SERVER)
            .trim_end_matches('/')
            .to_string();
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
            lifeboat_agent::client::client_builder()
                .timeout(TIMEOUT)
                .build()?
        } else if base.starts_with("https://") {
            if let (Some(ca), None) = (&conn.ca_cert, &conn.server_fingerprint) {
                // A certificate of the operator's CA: checked with its name, as browsers do.
                let pem = std::fs::read(ca)
                    .with_context(|| format!("reading the CA certificate {}", ca.display()))?;
                let roots = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                    format!("{}: not PEM certificates (--ca-cert)", ca.display())
                })?;
                lifeboat_agent::client::client_builder()
                    .timeout(TIMEOUT)
                    .tls_certs_only(roots)
                    .build()?
            } else {
                // On the server's own machine the certificate its API serves is in HOME
                // (a server before 0.2 kept only its identity's): pin that one.
                let local = local_server_dirs(home)
                    .iter()
                    .flat_map(|dir| [dir.join("api-cert.der"), dir.join("identity/cert.der")])
                    .find_map(|f| std::fs::read(f).ok())
                    .map(|der| lifeboat_agent::identity::fingerprint(&der));
                let Some(fp) = conn.server_fingerprint.clone().or(local) else {
                    bail!("{base}: give the server's certificate fingerprint (--server-fingerprint or LIFEBOAT_SERVER_FINGERPRINT; the server prints it at start), or the CA that signed its certificate (--ca-cert or LIFEBOAT_CA_CERT)");
                };
                lifeboat_agent::client::pinned_http_client(&fp, TIMEOUT)?
            }
        } else {
            bail!("{base}: the server URL must start with http:// or https://");
        };
        Ok(ServerClient {
            base,
            http,
            token: token(conn, config.token.as_deref(), home)?,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Every page of `GET path`, in the server's order, as one answer with no
    /// `next_offset`.
    pub async fn get_all<T: Paged>(&self, path: &str) -> Result<T> {
        let mut all: T = self.get(path).await?;
        let mut at = all.offset();
        let join = if path.contains('?') { '&' } else { '?' };
        while let Some(offset) = all.next_offset() {
            if offset <= at {
                bail!("the server's pages of {path} do not advance (offset {offset} after {at})");
            }
            at = offset;
            let next: T = self.get(&format!("{path}{join}offset={offset}")).await?;
            all.append(next);
        }
        Ok(all)
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// `GET path` as an event stream: no whole-call timeout (it lasts as long as what it
    /// follows), silence and size bounded by [`crate::events`].
    pub async fn events(&self, path: &str) -> Result<crate::events::Events> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(EVENTS_TIMEOUT)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| unreachable(&self.base, e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_bounded(resp, 64 << 10).await.unwrap_or_default();
            return Err(refused(status, &body));
        }
        Ok(crate::events::Events::new(resp))
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| unreachable(&self.base, e))?;
        let status = resp.status();
        let body = read_bounded(resp, MAX_ANSWER_BYTES).await.map_err(|e| match e {
            ReadError::TooLarge => anyhow::anyhow!(
                "the server at {} sent an answer larger than {MAX_ANSWER_BYTES} bytes; it was cut off",
                self.base
            ),
            ReadError::Http(e) => anyhow::Error::new(e).context("reading the server's answer"),
        })?;
        if !status.is_success() {
            return Err(refused(status, &body));
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            // Nothing to read: `()` (or a null) is the answer.
            return Ok(serde_json::from_value(serde_json::Value::Null)?);
        }
        serde_json::from_slice(&body).context("reading the server's answer")
    }
}

/// A request that reached no server — the connection refused, or no route, or no answer
/// to the connection itself — is `exit::Unreachable` (a script may retry). Anything else
/// keeps its own message and exit 1: a TLS failure (a fingerprint that does not match is
/// no reason to retry), or a request sent whose answer did not come in time (it may have
/// been done).
fn unreachable(base: &str, e: reqwest::Error) -> anyhow::Error {
    use std::io::ErrorKind as K;
    let mut io_kind = None;
    let mut tls = false;
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
            // rustls reports its failures as io::Errors of kind InvalidData.
            tls |= io.kind() == K::InvalidData;
        }
        source = s.source();
    }
    let no_server = e.is_connect()
        && !tls
        && matches!(
            io_kind,
            None | Some(
                K::ConnectionRefused
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::TimedOut
                    | K::AddrNotAvailable
                    | K::ConnectionReset
            )
        );
    if no_server {
        anyhow::Error::new(e).context(crate::exit::Unreachable(base.to_string()))
    } else if e.is_timeout() {
        anyhow::Error::new(e).context(format!(
            "the server at {base} did not answer in time; what was asked may have been done              (`lifeboat operations list` shows what runs)"
        ))
    } else {
        anyhow::Error::new(e).context(format!("talking to the server at {base}"))
    }
}

/// The server's refusal, its message as is; a refused token is `exit::BadCredentials`.
fn refused(status: reqwest::StatusCode, body: &[u8]) -> anyhow::Error {
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let reason = body["error"]
        .as_str()
        .unwrap_or("no reason given")
        .to_string();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return crate::exit::BadCredentials(reason).into();
    }
    anyhow::anyhow!("the server refused ({}): {reason}", status.as_u16())
}

/// The API token: LIFEBOAT_TOKEN, else the config file's `token`, else --token-file (or
/// the config's `token_file`), else the server's own HOME/server/admin.token when this is
/// the server's machine.
fn token(conn: &ServerConn, in_config: Option<&str>, home: &Path) -> Result<String> {
    if let Ok(t) = std::env::var("LIFEBOAT_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    if let Some(t) = in_config.filter(|t| !t.trim().is_empty()) {
        if conn.token_file.is_none() {
            return Ok(t.trim().to_string());
        }
    }
    if let Some(path) = &conn.token_file {
        return match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => bail!("cannot read an API token from {}", path.display()),
        };
    }
    local_server_dirs(home)
        .iter()
        .find_map(|dir| {
            let t = std::fs::read_to_string(dir.join("admin.token")).ok()?;
            (!t.trim().is_empty()).then(|| t.trim().to_string())
        })
        .ok_or_else(|| anyhow::anyhow!("no API token: set LIFEBOAT_TOKEN or --token-file (the server printed a token at first start)"))
}

/// Where a server running on this machine keeps its token and certificates: `HOME/server`,
/// and the packaged unit's home (`/var/lib/lifeboat-server/server`), so that client
/// commands on the server's machine need neither flags nor a `--home` of the server's.
fn local_server_dirs(home: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![home.join("server")];
    let packaged = Path::new(PACKAGED_SERVER_HOME).join("server");
    if !dirs.contains(&packaged) {
        dirs.push(packaged);
    }
    dirs
}

/// The server's home under its systemd unit (deploy/systemd/lifeboat-server.service).
const PACKAGED_SERVER_HOME: &str = "/var/lib/lifeboat-server";
