//! Live updates: one Server-Sent Events stream per open page. Every second the server
//! renders, once for all pages (`Hub`), the parts of pages that change (state labels with their progress bars, RPOs,
//! last points, running operations, counts, recovered VMs) and sends those that changed
//! since the last message, as `{"element id": "html"}`; `app.js` puts each in place.
//! The stream reads the database only; it never calls agents. It ends when its session
//! does (logout, expiry, a new password): an open tab stops seeing the fleet.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use maud::Markup;
use tokio::sync::watch;

use super::fragments::{counts, protection_cells, recoveries_table, running_ops};
use crate::api::status::overview_of;
use crate::api::ServerState;
use crate::db::Database;
use crate::failover::recovery_views;

/// How often the fragments are redrawn.
const EVERY: Duration = Duration::from_secs(1);

/// Every live fragment's HTML, by the id of the element it fills.
pub type Fragments = HashMap<String, String>;

/// One renderer for every open page: the fragments are drawn once a second while anyone
/// watches, however many pages are open (at 1,000 VMs a drawing costs tens of
/// milliseconds); each page's stream only compares and sends.
pub struct Hub {
    tx: watch::Sender<Arc<Fragments>>,
    rendering: Arc<AtomicBool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: watch::channel(Arc::new(Fragments::new())).0,
            rendering: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Hub {
    /// The fragments as they are drawn; starts the renderer if no page was watching.
    pub fn subscribe(&self, db: &Database) -> watch::Receiver<Arc<Fragments>> {
        let rx = self.tx.subscribe();
        if !self.rendering.swap(true, Ordering::SeqCst) {
            tokio::spawn(render(self.tx.clone(), self.rendering.clone(), db.clone()));
        }
        rx
    }
}

/// Draws the fragments every second until no page watches.
async fn render(tx: watch::Sender<Arc<Fragments>>, rendering: Arc<AtomicBool>, db: Database) {
    loop {
        match fragments(&db).await {
            Ok(f) => {
                tx.send_replace(Arc::new(f));
            }
            Err(e) => tracing::warn!(error = %e, "dashboard live update"),
        }
        tokio::time::sleep(EVERY).await;
        if tx.receiver_count() == 0 {
            rendering.store(false, Ordering::SeqCst);
            // A page that subscribed just now saw `rendering` still set and started no
            // renderer: go on for it, unless another renderer took over.
            if tx.receiver_count() == 0 || rendering.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }
}

pub async fn events(
    State(s): State<Arc<ServerState>>,
    axum::Extension(session): axum::Extension<crate::auth::Session>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.live.subscribe(&s.db);
    let sent = Arc::new(Fragments::new());
    let id = session.id_sha256;
    let stream = futures::stream::unfold((s, rx, sent), move |(s, mut rx, sent)| {
        let id = id.clone();
        async move {
            loop {
                // Nothing drawn yet, or nothing new since the last message: wait.
                if rx.borrow().is_empty() || Arc::ptr_eq(&rx.borrow(), &sent) {
                    rx.changed().await.ok()?;
                }
                if !session_lives(&s, &id).await {
                    return None;
                }
                let now = rx.borrow_and_update().clone();
                let changed: HashMap<&String, &String> = now
                    .iter()
                    .filter(|(k, v)| sent.get(*k) != Some(*v))
                    .collect();
                if changed.is_empty() && !sent.is_empty() {
                    continue;
                }
                let data = serde_json::to_string(&changed).unwrap_or_else(|_| "{}".into());
                let ev = Event::default().event("fragments").data(data);
                return Some((Ok(ev), (s, rx, now)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Whether the session is still there and not past its end.
async fn session_lives(s: &ServerState, id_sha256: &str) -> bool {
    match crate::auth::live_session(&s.db, id_sha256).await {
        Ok(session) => session.is_some(),
        // A database hiccup does not end the operator's view; the next tick checks again.
        Err(_) => true,
    }
}

/// Every live fragment, by the id of the element it fills.
pub async fn fragments(db: &Database) -> Result<Fragments, crate::db::DbError> {
    let o = overview_of(db).await?;
    let views = recovery_views(db).await?;
    let recoveries: Vec<_> = views.iter().map(|v| v.recovery.clone()).collect();
    let mut out = Fragments::new();
    let mut put = |id: String, m: Markup| {
        out.insert(id, m.into_string());
    };
    for v in &o.protections {
        for (id, m) in protection_cells(v, &recoveries) {
            put(id, m);
        }
        put(
            format!("actions-key-{}", v.id),
            maud::html! { (super::vm_page::actions_key(v, &recoveries)) },
        );
    }
    put("counts".into(), counts(&o));
    put("running-ops".into(), running_ops(&o));
    put("recoveries".into(), recoveries_table(&views));
    Ok(out)
}
