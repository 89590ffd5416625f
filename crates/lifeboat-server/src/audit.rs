//! The audit log's one writer: a layer around every route of the server (API and
//! dashboard) that finds who is calling and records every login, logout and
//! state-changing call — who (user, and the token when one was used), what (method, the
//! route as declared, the target's ids), when, from where (the connection's address), and
//! the status answered.
//!
//! - The caller is identified here, once per request, and handed on (`auth::Caller` in
//!   the request's extensions) to the API's gate (`api::access`) and the pages' gate,
//!   which decide what it may do.
//! - A call from a known caller is written **before** it runs (status 0) and finished
//!   with its status after, so a long failover that the server dies in is still on
//!   record. When that first write fails, the call is refused: nothing unaudited happens.
//! - A login has no caller yet: its handler notes who tried ([`AuditNote`]) and the row
//!   is written when it is answered. Logins refused without a password check (locked,
//!   busy) and calls with no valid credential are not written, so nobody can fill the
//!   table without an account; the lock itself is (the failure that started it says so).
//! - Secrets never reach a row: the target is the path's ids and a fixed list of
//!   naming fields ([`NAMING_FIELDS`]) of the query and JSON body, never the body itself.
//!   The login form's user name is written only when it names a user, since people do
//!   type their password into that field.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{request::Parts, Extensions, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;

use crate::auth;
use crate::db::AuditRow;
use crate::http::{error, ServerState};

/// Request fields that name what a call acts on and are never secret. Anything else (a
/// password, a vault passphrase or URL, an enrollment code) stays out of the log.
pub const NAMING_FIELDS: &[&str] = &[
    "name",
    "role",
    "vm",
    "host",
    "recovery_host",
    "kind",
    "point",
    "address",
    "cidr",
    "policy",
    "delete_points",
];
/// A state-changing call's body is read here to find its naming fields: none is larger.
const MAX_BODY: usize = 1 << 20;
/// Longer values are cut in the log.
const MAX_VALUE: usize = 100;

/// What the handler tells the log that the layer cannot see: who tried to log in, and
/// why a call ended as it did.
#[derive(Clone, Default)]
pub struct AuditNote(Arc<Mutex<Note>>);

#[derive(Default)]
struct Note {
    actor: Option<(String, String)>,
    detail: Option<String>,
    skip: bool,
}

impl AuditNote {
    fn note(&self) -> std::sync::MutexGuard<'_, Note> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A login attempt: the user, or "" when the name given is no user.
    pub fn login(&self, user: &str, detail: impl Into<String>) {
        let mut n = self.note();
        n.actor = Some((user.to_string(), "password".into()));
        n.detail = Some(detail.into());
    }

    pub fn detail(&self, detail: impl Into<String>) {
        self.note().detail = Some(detail.into());
    }

    /// Nothing was checked or done (a login refused by the throttle): no row.
    pub fn skip(&self) {
        self.note().skip = true;
    }
}

/// The client's address as the connection shows it (`lifeboat_agent::serve` puts it in
/// every request); 0.0.0.0 when unknown (a request made in-process).
pub fn client_address(ext: &Extensions) -> IpAddr {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

pub async fn layer(State(s): State<Arc<ServerState>>, mut req: Request, next: Next) -> Response {
    let caller = match auth::identify(&s.db, req.headers()).await {
        Ok(c) => c,
        Err(e) => return crate::http::db_error(e),
    };
    if let Some(c) = &caller {
        req.extensions_mut().insert(c.clone());
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(route) = route.filter(|_| auth::changes_state(req.method())) else {
        return next.run(req).await;
    };
    let mut row = AuditRow::begin(Utc::now());
    row.address = client_address(req.extensions()).to_string();
    row.method = req.method().to_string();
    row.route = route;
    if let Some(c) = &caller {
        row.actor = c.user.clone();
        row.via = c.via_text();
    }
    let (mut parts, body) = req.into_parts();
    // Only a known caller's JSON body is read here: an unauthenticated one is refused by
    // the API anyway, and reading it first would let anyone make the server hold a body.
    let body = match target_of(&mut parts, body, caller.is_some()).await {
        Ok((target, body)) => {
            row.target = target;
            body
        }
        Err(too_large) => {
            if caller.is_some() {
                row.status = i64::from(too_large.status().as_u16());
                row.detail = "body too large".into();
                write(&s, &row, false).await;
            }
            return too_large;
        }
    };
    let note = AuditNote::default();
    parts.extensions.insert(note.clone());
    let written = caller.is_some();
    if written {
        if let Err(e) = s.db.add_audit(&row).await {
            tracing::error!(error = %e, "writing the audit log");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the audit log cannot be written ({e}); nothing was done"),
            );
        }
    }
    let resp = next.run(Request::from_parts(parts, body)).await;
    let n = std::mem::take(&mut *note.note());
    if n.skip && !written {
        return resp;
    }
    if let Some((actor, via)) = n.actor {
        row.actor = actor;
        row.via = via;
    }
    if let Some(d) = n.detail {
        row.detail = d;
    }
    row.status = i64::from(resp.status().as_u16());
    if written || !row.via.is_empty() {
        write(&s, &row, written).await;
    }
    resp
}

/// Adds `row`, or finishes the one added before the call ran. A failure here comes after
/// the call: it is logged, and the answer stands.
async fn write(s: &ServerState, row: &AuditRow, added: bool) {
    let done = if added {
        s.db.finish_audit(row).await
    } else {
        s.db.add_audit(row).await
    };
    if let Err(e) = done {
        tracing::error!(error = %e, id = %row.id, route = %row.route, status = row.status, "writing the audit log");
    }
}

/// The call's target: the path's ids, then the naming fields of its query and JSON body.
/// Returns the body to hand on (read whole here, so bounded), or a 413 answer.
async fn target_of(
    parts: &mut Parts,
    body: Body,
    read_json: bool,
) -> Result<(String, Body), Response> {
    let mut target: Vec<String> = Vec::new();
    if let Ok(params) = RawPathParams::from_request_parts(parts, &()).await {
        for (k, v) in &params {
            target.push(pair(k, v));
        }
    }
    if let Some(q) = parts.uri.query() {
        // Decoded as the handlers decode it (`delete%5Fpoints` is `delete_points`).
        let fields: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap_or_default();
        for (k, v) in &fields {
            if NAMING_FIELDS.contains(&k.as_str()) {
                target.push(pair(k, v));
            }
        }
    }
    // An authenticated caller's body is read whatever its content type claims: the JSON
    // extractor takes `Application/JSON` and `…+json` too, and what the call acts on must
    // be in its row. (A body that is not JSON names nothing.)
    if !read_json {
        return Ok((target.join(" "), body));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
    })?;
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(&bytes) {
        for k in NAMING_FIELDS {
            let text = match fields.get(*k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    v.to_string()
                }
                _ => continue,
            };
            target.push(pair(k, &text));
        }
    }
    Ok((target.join(" "), Body::from(bytes)))
}

/// `key=value`, the value cut short and with no spaces or control characters, so a row
/// reads as one line whatever a client sent.
fn pair(key: &str, value: &str) -> String {
    let v: String = value
        .chars()
        .take(MAX_VALUE)
        .map(|c| {
            if c.is_control() || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("{key}={v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn targets_hold_ids_and_naming_fields_only() {
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/api/v1/users?delete_points=true&token=abc")
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"name":"alice smith","role":"operator","password":"s3cret-pass","code":"1234-5678","vault_passphrase":"pp","vault":"s3://k:s@b"}"#,
            ))
            .unwrap();
        let (mut parts, body) = req.into_parts();
        let (target, body) = target_of(&mut parts, body, true).await.unwrap();
        assert_eq!(target, "delete_points=true name=alice_smith role=operator");
        // The handler still gets the whole body.
        let again = axum::body::to_bytes(body, MAX_BODY).await.unwrap();
        assert!(String::from_utf8_lossy(&again).contains("s3cret-pass"));
        assert_eq!(pair("vm", "a\nb"), "vm=a_b");
        assert_eq!(pair("vm", &"x".repeat(500)).len(), 3 + MAX_VALUE);
    }
}
