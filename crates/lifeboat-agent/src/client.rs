//! Talking to an agent: HTTPS pinned to the agent's certificate fingerprint, so the
//! credential is only ever sent to the agent that was enrolled (the certificate is
//! self-signed; no certificate authority vouches for it).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;

use crate::api::{
    EnrollRequest, EnrollResponse, Hello, UnprotectReport, UnprotectRequest, VaultCheck,
};
use crate::identity::fingerprint;
use crate::secret::Secret;
use crate::sync::{SyncRequest, SyncStatus, VaultAccess};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent {address}: {source}")]
    Request {
        address: String,
        source: reqwest::Error,
    },
    #[error("agent {address} answered {status}: {message}")]
    Refused {
        address: String,
        status: u16,
        message: String,
    },
    #[error("agent {address} sent a reply larger than {limit} bytes; it was cut off (is that really a Lifeboat agent?)")]
    TooLarge { address: String, limit: usize },
    #[error("agent {address} sent a reply of more than {limit} JSON values; it was not read (is that really a Lifeboat agent?)")]
    TooManyValues { address: String, limit: usize },
    #[error("agent {address} sent a reply that is not what was asked for: {source}")]
    BadReply {
        address: String,
        source: serde_json::Error,
    },
    #[error("building the HTTPS client: {0}")]
    Build(String),
}

/// The largest reply read from an agent: an inventory of thousands of VMs fits, and a
/// compromised agent cannot make the server hold more than this per call.
pub const MAX_REPLY_BYTES: usize = 8 << 20;
/// The most JSON values a reply may hold. A parsed value takes tens of bytes however
/// short its text (`{}` is two bytes), so the byte bound alone would let 8 MiB of tiny
/// values grow into hundreds of MiB; this keeps a parsed reply to a few tens of MiB.
pub const MAX_REPLY_VALUES: usize = 200_000;

/// An upper bound on the number of values in a JSON text: every value but the first is
/// preceded by a `,`, a `:` or an opening bracket (counted inside strings too, which only
/// overestimates).
fn json_values_at_most(body: &[u8]) -> usize {
    1 + body
        .iter()
        .filter(|b| matches!(b, b',' | b':' | b'[' | b'{'))
        .count()
}
/// The largest error reply read (its `error` text is all that is used).
const MAX_ERROR_BYTES: usize = 64 << 10;

/// Why a bounded read stopped.
#[derive(Debug)]
pub enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

/// The whole body of `resp`, or `TooLarge` as soon as it passes `limit` bytes: the rest
/// is never read (the connection is dropped).
pub async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The client settings every HTTP client of Lifeboat shares: no redirects (a peer that
/// answers with one is refusing, and following it would resend the request, secrets
/// included, to wherever it points), no proxy from the environment (agents and the
/// server are reached directly), and idle connections dropped before the peer's own idle
/// limit (`serve::admission`, 15 s) closes them, so a request never races that close.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(std::time::Duration::from_secs(10))
}

/// Accepts exactly one certificate: the one whose SHA-256 fingerprint was pinned.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity);
        if presented == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the certificate's fingerprint is {presented}, not the pinned {}; \
                 if that machine was reinstalled, pin its new fingerprint (an agent: enroll it again)",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An HTTPS client that talks only to the peer whose certificate has `fingerprint`
/// (agents, and the server's own API when served over TLS).
pub fn pinned_http_client(
    fingerprint: &str,
    timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: fingerprint.to_lowercase(),
            provider,
        }))
        .with_no_client_auth();
    client_builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))
}

/// An agent at `address` (`host:port`) whose certificate has `fingerprint`.
#[derive(Clone)]
pub struct AgentClient {
    address: String,
    http: reqwest::Client,
    credential: Option<Secret>,
    /// How long one call may take; and a job, followed by polling.
    timeout: Duration,
}

/// How often a job is polled.
const JOB_POLL: Duration = Duration::from_millis(500);

impl AgentClient {
    pub fn new(
        address: &str,
        fingerprint: &str,
        timeout: Duration,
    ) -> Result<AgentClient, ClientError> {
        let http = pinned_http_client(fingerprint, timeout)?;
        Ok(AgentClient {
            address: address.to_string(),
            http,
            credential: None,
            timeout,
        })
    }

    /// The same client, presenting the agent's credential.
    pub fn with_credential(mut self, credential: &Secret) -> AgentClient {
        self.credential = Some(credential.clone());
        self
    }

    pub async fn hello(&self) -> Result<Hello, ClientError> {
        self.call(self.http.get(self.url("/api/v1/hello"))).await
    }

    pub async fn enroll(
        &self,
        code: &Secret,
        server_fingerprint: &str,
    ) -> Result<Secret, ClientError> {
        let req = self
            .http
            .post(self.url("/api/v1/enroll"))
            .json(&EnrollRequest {
                code: code.clone(),
                server_fingerprint: server_fingerprint.to_string(),
            });
        let r: EnrollResponse = self.call(req).await?;
        Ok(r.credential)
    }

    /// The agent's VMs, as JSON (the server passes them through).
    pub async fn inventory(&self) -> Result<serde_json::Value, ClientError> {
        self.inventory_as().await
    }

    /// The agent's VMs, read as `T`: a caller that needs a few fields of each VM skips
    /// the rest rather than holding it all as JSON values.
    pub async fn inventory_as<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        self.call(self.http.get(self.url("/api/v1/inventory")))
            .await
    }

    /// Starts a sync of `vm` (or returns the one with the same id).
    pub async fn start_sync(&self, vm: &str, req: &SyncRequest) -> Result<SyncStatus, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/syncs"));
        self.call(self.http.post(url).json(req)).await
    }

    /// A sync's status; `Refused { status: 404 }` when the agent does not know it.
    pub async fn sync_status(&self, sync_id: &str) -> Result<SyncStatus, ClientError> {
        self.call(self.http.get(self.url(&format!("/api/v1/syncs/{sync_id}"))))
            .await
    }

    pub async fn unprotect(
        &self,
        vm: &str,
        req: &UnprotectRequest,
    ) -> Result<UnprotectReport, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/unprotect"));
        self.call(self.http.post(url).json(req)).await
    }

    pub async fn check_vault(&self, access: &VaultAccess) -> Result<VaultCheck, ClientError> {
        self.call(self.http.post(self.url("/api/v1/vault/check")).json(access))
            .await
    }

    /// Brings a VM up from a point on this agent's host, or resumes one brought up with
    /// the same recovery id; as job `req.job_id` when it has one (started, or found when
    /// asked before with that id, and followed to its end).
    pub async fn ensure_recovery(
        &self,
        req: &crate::recovery::RecoveryRequest,
    ) -> Result<crate::recovery::RecoveryStatus, ClientError> {
        /// A job (202), or the status itself from an agent that answers in the request
        /// (one from before provisioning was a job ignores `job_id`).
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Answer {
            Job(crate::jobs::JobStatus),
            Done(crate::recovery::RecoveryStatus),
        }
        let call = self.http.post(self.url("/api/v1/recoveries")).json(req);
        match self.call(call).await? {
            Answer::Job(job) => self.follow_job(job).await,
            Answer::Done(status) => Ok(status),
        }
    }

    /// A recovery's state; `Refused { status: 404 }` when the agent has none of that id.
    pub async fn recovery_status(
        &self,
        recovery_id: &str,
    ) -> Result<crate::recovery::RecoveryStatus, ClientError> {
        let url = self.url(&format!("/api/v1/recoveries/{recovery_id}"));
        self.call(self.http.get(url)).await
    }

    pub async fn recoveries(&self) -> Result<Vec<crate::recovery::RecoveryStatus>, ClientError> {
        self.call(self.http.get(self.url("/api/v1/recoveries")))
            .await
    }

    /// Removes a recovered VM and everything made for it (nothing there is no error).
    pub async fn remove_recovery(
        &self,
        recovery_id: &str,
    ) -> Result<crate::recovery::RemovalReport, ClientError> {
        let url = self.url(&format!("/api/v1/recoveries/{recovery_id}"));
        self.call(self.http.delete(url)).await
    }

    /// Shuts `vm` down in order (ACPI, QEMU told to quit after `req.timeout_secs`), as
    /// job `req.job_id` when it names one: started (or found) and followed to its end.
    pub async fn shutdown_vm(
        &self,
        vm: &str,
        req: &crate::handover::ShutdownRequest,
    ) -> Result<crate::handover::ShutdownReport, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/shutdown"));
        let answer: serde_json::Value = self.call(self.http.post(url).json(req)).await?;
        let bad = |source| ClientError::BadReply {
            address: self.address.clone(),
            source,
        };
        // A job (this agent runs shutdowns as jobs), or the report of an agent that
        // answers when the VM is down.
        if answer.get("job_id").is_some() {
            let job = serde_json::from_value(answer).map_err(bad)?;
            self.follow_job(job).await
        } else {
            serde_json::from_value(answer).map_err(bad)
        }
    }

    /// The final sync of the stopped `vm`, as job `req.sync_id`: started (or found, when
    /// asked before with that id) and followed to its end.
    pub async fn final_sync(
        &self,
        vm: &str,
        req: &SyncRequest,
    ) -> Result<crate::handover::FinalSyncReport, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/final-sync"));
        let job = self.call(self.http.post(url).json(req)).await?;
        self.follow_job(job).await
    }

    /// The networks this host offers recovered VMs, with their subnets.
    pub async fn networks(&self) -> Result<Vec<lifeboat_types::HostNetwork>, ClientError> {
        self.call(self.http.get(self.url("/api/v1/networks"))).await
    }

    /// A job's status; `Refused { status: 404 }` when the agent does not know it.
    pub async fn job_status(&self, id: &str) -> Result<crate::jobs::JobStatus, ClientError> {
        self.call(self.http.get(self.url(&format!("/api/v1/jobs/{id}"))))
            .await
    }

    /// Polls `job` until it ends, for as long as this client's timeout: its answer, or
    /// how it failed (as the call itself would have answered).
    async fn follow_job<T: DeserializeOwned>(
        &self,
        mut job: crate::jobs::JobStatus,
    ) -> Result<T, ClientError> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            match job.state {
                crate::jobs::JobState::Succeeded { result } => {
                    return serde_json::from_value(result).map_err(|source| ClientError::BadReply {
                        address: self.address.clone(),
                        source,
                    })
                }
                crate::jobs::JobState::Failed { status, error } => {
                    return Err(ClientError::Refused {
                        address: self.address.clone(),
                        status,
                        message: error,
                    })
                }
                crate::jobs::JobState::Running => {}
            }
            if std::time::Instant::now() > deadline {
                return Err(ClientError::Refused {
                    address: self.address.clone(),
                    status: 504,
                    message: format!(
                        "job {} ({} of {}) still runs after {} s; ask again later",
                        job.job_id,
                        job.kind,
                        job.vm,
                        self.timeout.as_secs()
                    ),
                });
            }
            tokio::time::sleep(JOB_POLL).await;
            job = match self.job_status(&job.job_id).await {
                Ok(j) => j,
                // The agent restarted while the job ran: asking again starts it anew.
                Err(ClientError::Refused { status: 404, .. }) => {
                    return Err(ClientError::Refused {
                        address: self.address.clone(),
                        status: 503,
                        message: format!(
                            "the agent no longer knows job {} (it restarted while the job ran); ask again",
                            job.job_id
                        ),
                    })
                }
                Err(e) => return Err(e),
            };
        }
    }

    pub async fn fence(
        &self,
        vm: &str,
        req: &crate::handover::FenceRequest,
    ) -> Result<crate::handover::FenceReport, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/fence"));
        self.call(self.http.post(url).json(req)).await
    }

    /// A point written over the stopped `vm`'s disks, as job `req.job_id`: started (or
    /// found) and followed to its end.
    pub async fn apply_point(
        &self,
        vm: &str,
        req: &crate::handover::ApplyPointRequest,
    ) -> Result<crate::handover::ApplyReport, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/apply-point"));
        let job = self.call(self.http.post(url).json(req)).await?;
        self.follow_job(job).await
    }

    /// Starts a VM, lifting its fence first with `unfence`.
    pub async fn start_vm(
        &self,
        vm: &str,
        unfence: bool,
    ) -> Result<serde_json::Value, ClientError> {
        self.start_vm_with(
            vm,
            &crate::handover_api::StartRequest {
                unfence,
                guest_network: Vec::new(),
                instance_id: None,
            },
        )
        .await
    }

    /// Starts a VM as `req` says (a failback's seed restoring the home address).
    pub async fn start_vm_with(
        &self,
        vm: &str,
        req: &crate::handover_api::StartRequest,
    ) -> Result<serde_json::Value, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/start"));
        self.call(self.http.post(url).json(req)).await
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        mut req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        if let Some(c) = &self.credential {
            req = req.bearer_auth(c.expose());
        }
        let failed = |source| ClientError::Request {
            address: self.address.clone(),
            source,
        };
        let resp = req.send().await.map_err(failed)?;
        let status = resp.status();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere")
                .chars()
                .take(200)
                .collect::<String>();
            return Err(ClientError::Refused {
                address: self.address.clone(),
                status: status.as_u16(),
                message: format!("a redirect (to {to}), which is never followed"),
            });
        }
        if !status.is_success() {
            let message = match read_bounded(resp, MAX_ERROR_BYTES).await {
                Ok(body) => serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "no reason given".to_string()),
                Err(_) => "no reason given (the reply was too large or cut)".to_string(),
            };
            return Err(ClientError::Refused {
                address: self.address.clone(),
                status: status.as_u16(),
                message,
            });
        }
        let body = read_bounded(resp, MAX_REPLY_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => ClientError::TooLarge {
                    address: self.address.clone(),
                    limit: MAX_REPLY_BYTES,
                },
                ReadError::Http(e) => failed(e),
            })?;
        if json_values_at_most(&body) > MAX_REPLY_VALUES {
            return Err(ClientError::TooManyValues {
                address: self.address.clone(),
                limit: MAX_REPLY_VALUES,
            });
        }
        serde_json::from_slice(&body).map_err(|source| ClientError::BadReply {
            address: self.address.clone(),
            source,
        })
    }
}
