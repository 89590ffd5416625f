//! Live updates: one Server-Sent Events stream per open page. Every second the server
//! renders the parts of pages that change (state labels with their progress bars, RPOs,
//! last points, running operations, counts, recovered VMs) and sends those that changed
//! since the last message, as `{"element id": "html"}`; `app.js` puts each in place.
//! The stream reads the database only; it never calls agents. It ends when its session
//! does (logout, expiry, a new password): an open tab stops seeing the fleet.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use maud::Markup;

use super::fragments::{counts, protection_cells, recoveries_table, recovery_views, running_ops};
use crate::api::status::overview_of;
use crate::api::ServerState;

/// How often the fragments are redrawn.
const EVERY: Duration = Duration::from_secs(1);

pub async fn events(
    State(s): State<Arc<ServerState>>,
    axum::Extension(session): axum::Extension<crate::auth::Session>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let sent: HashMap<String, String> = HashMap::new();
    let id = session.id_sha256;
    let stream = futures::stream::unfold((s, sent, true), move |(s, mut sent, first)| {
        let id = id.clone();
        async move {
            loop {
                if !first {
                    tokio::time::sleep(EVERY).await;
                }
                if !session_lives(&s, &id).await {
                    return None;
                }
                let now = match fragments(&s).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %e, "dashboard live update");
                        tokio::time::sleep(EVERY).await;
                        continue;
                    }
                };
                let changed: HashMap<&String, &String> = now
                    .iter()
                    .filter(|(k, v)| sent.get(*k) != Some(*v))
                    .collect();
                if changed.is_empty() {
                    if first {
                        // Nothing yet: still say the stream is up.
                        let ev = Event::default().event("fragments").data("{}");
                        return Some((Ok(ev), (s, sent, false)));
                    }
                    continue;
                }
                let data = serde_json::to_string(&changed).unwrap_or_else(|_| "{}".into());
                sent = now;
                let ev = Event::default().event("fragments").data(data);
                return Some((Ok(ev), (s, sent, false)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Whether the session is still there and not past its end.
async fn session_lives(s: &ServerState, id_sha256: &str) -> bool {
    match s.db.session(id_sha256).await {
        Ok(Some(row)) => {
            row.expires_at >= chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        }
        Ok(None) => false,
        // A database hiccup does not end the operator's view; the next tick checks again.
        Err(_) => true,
    }
}

/// Every live fragment, by the id of the element it fills.
pub async fn fragments(s: &ServerState) -> Result<HashMap<String, String>, crate::db::DbError> {
    let o = overview_of(&s.db).await?;
    let recoveries = s.db.recoveries().await?;
    let views = recovery_views(s).await?;
    let mut out: HashMap<String, String> = HashMap::new();
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
