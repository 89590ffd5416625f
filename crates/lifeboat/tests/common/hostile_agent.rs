//! An agent that attacks the server (a test double for security tests): it answers the
//! discovery hello and enrollment as a real agent does, so the server enrolls it, and then
//! answers the server's calls the way a compromised host would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use lifeboat_agent::identity::Identity;
use lifeboat_agent::serve::{serve, Limits, Transport};

/// How the double answers every call but the hello and enrollment.
#[derive(Clone, Debug)]
pub enum Attack {
    /// An inventory that never ends (it stops at 1 GiB, so a server without a bound
    /// grows by that much instead of taking the test machine down).
    EndlessInventory,
    /// An inventory just under the reply bound made of tiny VMs (`{"name":""}`): few
    /// bytes, but each a JSON object that takes far more memory parsed than as text.
    TinyVms,
    /// Every call answered with a 307 to this URL.
    Redirect(String),
    /// A normal inventory listing the VM `web`; every other call answered with a 307 to
    /// this URL.
    InventoryThenRedirect(String),
}

pub struct HostileAgent {
    pub addr: SocketAddr,
    pub fingerprint: String,
    attack: Arc<Mutex<Attack>>,
    version: Arc<Mutex<String>>,
    /// Bytes of inventory sent so far.
    pub sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Shared {
    fingerprint: String,
    /// The Lifeboat version its hello claims.
    version: Arc<Mutex<String>>,
    attack: Arc<Mutex<Attack>>,
    sent: Arc<AtomicUsize>,
}

const ENDLESS_CAP: usize = 1 << 30;

impl HostileAgent {
    /// Starts the double on a loopback port, with its own TLS identity under `home`.
    pub async fn start(home: &std::path::Path, attack: Attack) -> HostileAgent {
        let identity = Identity::load_or_create(home, "hostile").unwrap();
        let fingerprint = identity.fingerprint();
        let shared = Shared {
            fingerprint: fingerprint.clone(),
            version: Arc::new(Mutex::new(lifeboat_agent::VERSION.to_string())),
            attack: Arc::new(Mutex::new(attack)),
            sent: Arc::new(AtomicUsize::new(0)),
        };
        let router = Router::new()
            .route("/api/v1/hello", get(hello))
            .route("/api/v1/enroll", post(enroll))
            .route("/api/v1/inventory", get(inventory))
            .fallback(other)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let transport = Transport::tls(&identity).unwrap();
        let task = tokio::spawn(async move {
            let _ = serve(listener, transport, router, Limits::default()).await;
        });
        HostileAgent {
            addr,
            fingerprint,
            attack: shared.attack,
            version: shared.version,
            sent: shared.sent,
            task,
        }
    }

    pub fn set(&self, attack: Attack) {
        *self.attack.lock().unwrap() = attack;
    }

    /// The version its hello claims from now on (a host of another release line).
    #[allow(dead_code)] // not every test binary that includes `common` claims one
    pub fn claim_version(&self, version: &str) {
        *self.version.lock().unwrap() = version.to_string();
    }
}

async fn hello(State(s): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "service": lifeboat_agent::api::SERVICE,
        "hostname": "hostile",
        "version": s.version.lock().unwrap().clone(),
        "fingerprint": s.fingerprint,
        "enrolled": false,
    }))
}

async fn enroll() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "credential": "hostile-credential" }))
}

fn redirect(to: &str) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, to.to_string())],
    )
        .into_response()
}

async fn inventory(State(s): State<Shared>) -> Response {
    let attack = s.attack.lock().unwrap().clone();
    match attack {
        Attack::EndlessInventory => {
            let head = bytes::Bytes::from_static(br#"{"hostname":"hostile","vms":["#);
            let item = br#"{"name":"vm","state":{"state":"running"}},"#;
            let chunk = bytes::Bytes::from(item.repeat(64 << 10 >> 6));
            let sent = s.sent.clone();
            let body = futures::stream::iter(std::iter::once(head).chain(std::iter::repeat(chunk)))
                .take_while(move |c| {
                    let before = sent.fetch_add(c.len(), Ordering::Relaxed);
                    std::future::ready(before < ENDLESS_CAP)
                })
                .map(Ok::<_, std::io::Error>);
            (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(body),
            )
                .into_response()
        }
        Attack::TinyVms => {
            let n = (lifeboat_agent::client::MAX_REPLY_BYTES - 64) / 12;
            let mut body = String::with_capacity(n * 12 + 64);
            body.push_str(r#"{"hostname":"hostile","vms":["#);
            for i in 0..n {
                body.push_str(if i == 0 {
                    r#"{"name":""}"#
                } else {
                    r#",{"name":""}"#
                });
            }
            body.push_str("]}");
            s.sent.fetch_add(body.len(), Ordering::Relaxed);
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Attack::Redirect(to) => redirect(&to),
        Attack::InventoryThenRedirect(_) => Json(serde_json::json!({
            "hostname": "hostile",
            "vms": [{ "name": "web", "state": { "state": "running" } }],
        }))
        .into_response(),
    }
}

async fn other(State(s): State<Shared>) -> Response {
    let attack = s.attack.lock().unwrap().clone();
    match attack {
        Attack::Redirect(to) | Attack::InventoryThenRedirect(to) => redirect(&to),
        Attack::EndlessInventory | Attack::TinyVms => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A TCP listener that counts who connects to it and what they send: where a redirect
/// points, to prove nothing follows it.
pub struct Recorder {
    pub url: String,
    pub connections: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub async fn start() -> Recorder {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/collect", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), received.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        r.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Recorder {
            url,
            connections,
            received,
            task,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
