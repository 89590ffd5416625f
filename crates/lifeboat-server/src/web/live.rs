//! Live updates: one Server-Sent Events stream per open page. Every second the server
//! renders, once for all pages (`http::Hub`, drawing with [`fragments`]), the parts of
//! pages that change (state labels with their progress bars, RPOs, last points, running
//! operations, counts, recovered VMs) and sends those that changed since the last
//! message, as `{"element id": "html"}`; `app.js` puts each in place.
//! The stream reads the database only; it never calls agents. It ends when its session
//! does (logout, expiry, a new password): an open tab stops seeing the fleet.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use maud::Markup;

use super::fragments::{counts, protection_cells, recoveries_table, running_ops};
use crate::api::status::overview_of;
use crate::db::{Database, DbError};
use crate::failover::recovery_views;
use crate::http::{Fragments, ServerState};

pub async fn events(
    State(s): State<Arc<ServerState>>,
    axum::Extension(session): axum::Extension<crate::auth::Session>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.live.subscribe(&s.db, draw);
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

/// [`fragments`] as the hub calls it.
fn draw(db: Database) -> Pin<Box<dyn Future<Output = Result<Fragments, DbError>> + Send>> {
    Box::pin(async move { fragments(&db).await })
}

/// Every live fragment, by the id of the element it fills.
pub async fn fragments(db: &Database) -> Result<Fragments, DbError> {
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
