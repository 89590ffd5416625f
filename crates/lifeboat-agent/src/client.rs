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
    #[error("building the HTTPS client: {0}")]
    Build(String),
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
    reqwest::Client::builder()
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
    credential: Option<String>,
}

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
        })
    }

    /// The same client, presenting the agent's credential.
    pub fn with_credential(mut self, credential: &str) -> AgentClient {
        self.credential = Some(credential.to_string());
        self
    }

    pub async fn hello(&self) -> Result<Hello, ClientError> {
        self.call(self.http.get(self.url("/api/v1/hello"))).await
    }

    pub async fn enroll(
        &self,
        code: &str,
        server_fingerprint: &str,
    ) -> Result<String, ClientError> {
        let req = self
            .http
            .post(self.url("/api/v1/enroll"))
            .json(&EnrollRequest {
                code: code.to_string(),
                server_fingerprint: server_fingerprint.to_string(),
            });
        let r: EnrollResponse = self.call(req).await?;
        Ok(r.credential)
    }

    /// The agent's VMs, as JSON (the server passes them through).
    pub async fn inventory(&self) -> Result<serde_json::Value, ClientError> {
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
    /// the same recovery id.
    pub async fn ensure_recovery(
        &self,
        req: &crate::recovery::RecoveryRequest,
    ) -> Result<crate::recovery::RecoveryStatus, ClientError> {
        self.call(self.http.post(self.url("/api/v1/recoveries")).json(req))
            .await
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

    pub async fn shutdown_vm(
        &self,
        vm: &str,
        req: &crate::handover::ShutdownRequest,
    ) -> Result<crate::handover::ShutdownReport, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/shutdown"));
        self.call(self.http.post(url).json(req)).await
    }

    pub async fn final_sync(
        &self,
        vm: &str,
        req: &SyncRequest,
    ) -> Result<crate::handover::FinalSyncReport, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/final-sync"));
        self.call(self.http.post(url).json(req)).await
    }

    pub async fn fence(
        &self,
        vm: &str,
        req: &crate::handover::FenceRequest,
    ) -> Result<crate::handover::FenceReport, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/fence"));
        self.call(self.http.post(url).json(req)).await
    }

    pub async fn apply_point(
        &self,
        vm: &str,
        req: &crate::handover::ApplyPointRequest,
    ) -> Result<crate::handover::ApplyReport, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/apply-point"));
        self.call(self.http.post(url).json(req)).await
    }

    /// Starts a VM, lifting its fence first with `unfence`.
    pub async fn start_vm(
        &self,
        vm: &str,
        unfence: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let url = self.url(&format!("/api/v1/vms/{vm}/start"));
        self.call(
            self.http
                .post(url)
                .json(&serde_json::json!({ "unfence": unfence })),
        )
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        mut req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        if let Some(c) = &self.credential {
            req = req.bearer_auth(c);
        }
        let failed = |source| ClientError::Request {
            address: self.address.clone(),
            source,
        };
        let resp = req.send().await.map_err(failed)?;
        let status = resp.status();
        if !status.is_success() {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            return Err(ClientError::Refused {
                address: self.address.clone(),
                status: status.as_u16(),
                message: body["error"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string(),
            });
        }
        resp.json().await.map_err(failed)
    }
}
