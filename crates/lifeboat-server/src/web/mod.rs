//! The dashboard: server-rendered pages (maud), one small hand-written script and a style
//! sheet compiled into the binary (no build toolchain, no CDN), and Server-Sent Events for
//! what changes while a page is open.
//!
//! Every action a page offers is a form that `app.js` sends to the REST API as JSON — the
//! very call the CLI makes — with the session's CSRF token; the server's error message is
//! shown as it comes. Pages only read: from the database, and `/hosts` also asks every
//! agent for its VMs (which is why that is not part of the live stream).
//!
//! - `layout`: the frame every page shares, and the small pieces (state labels, times).
//! - `pages`: one function per page; `fragments`: the parts of them that change.
//! - `vm_page`: a VM's detail page and its actions.
//! - `live`: the event stream.
//! - `chart`: the RPO chart, inline SVG.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;
use serde::Deserialize;

use crate::api::ServerState;

pub mod chart;
pub mod fragments;
pub mod layout;
pub mod live;
pub mod pages;
pub mod vm_page;

use crate::auth::{self, Session};

const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Pages, login and assets; merged beside the API's router.
pub fn router(state: Arc<ServerState>) -> Router {
    let pages = Router::new()
        .route("/", get(pages::overview))
        .route("/hosts", get(pages::hosts))
        .route("/scan", get(pages::scan))
        .route("/hosts/{host}/vms/{vm}", get(vm_page::vm_detail))
        .route("/recovery-site", get(pages::recovery_site))
        .route("/operations", get(pages::operations))
        .route("/vaults", get(pages::vaults))
        .route("/tokens", get(pages::tokens))
        .route("/events", get(live::events))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_login,
        ));
    Router::new()
        .merge(pages)
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/app.js", get(|| asset("text/javascript", APP_JS)))
        .route("/static/style.css", get(|| asset("text/css", STYLE_CSS)))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Only our own script and style run, the pages cannot be framed, and nothing is sniffed.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // Pages carry the session's CSRF token and the fleet's state: never cached.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Pages need a session; without one the browser goes to the login page and comes back.
async fn require_login(
    State(s): State<Arc<ServerState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match auth::session_of(&s.db, req.headers()).await {
        Ok(Some(session)) => {
            req.extensions_mut().insert(session);
            next.run(req).await
        }
        Ok(None) if req.uri().path() == "/events" => {
            (StatusCode::UNAUTHORIZED, "log in first").into_response()
        }
        Ok(None) => {
            let next_path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            Redirect::to(&format!("/login?next={}", url_encode(&next_path))).into_response()
        }
        Err(e) => layout::failure(&e.to_string()),
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    failed: Option<String>,
}

/// The login form, with a fresh double-submit CSRF cookie (there is no session yet).
async fn login_page(State(s): State<Arc<ServerState>>, Query(q): Query<LoginQuery>) -> Response {
    let csrf = auth::random_secret();
    let next = safe_next(q.next.as_deref());
    let body = html! {
        main id="main" class="login" {
            h1 { "Lifeboat" }
            p { "Disaster recovery for your virtual machines. Log in to continue." }
            @if q.failed.is_some() {
                p role="alert" class="error" { "Wrong user name or password." }
            }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label for="user" { "User name" }
                input id="user" name="user" type="text" value=(auth::ADMIN) autocomplete="username" required;
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required autofocus;
                button type="submit" { "Log in" }
            }
            p class="hint" { "The password was printed when the server first started (and saved in its HOME/server/admin.password); set another by restarting the server with LIFEBOAT_ADMIN_PASSWORD." }
        }
    };
    let mut resp = Html(layout::bare("Log in", body).into_string()).into_response();
    set_cookie(
        &mut resp,
        &auth::set_cookie(auth::LOGIN_CSRF_COOKIE, &csrf, s.tls, 3600),
    );
    resp
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    csrf: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(s): State<Arc<ServerState>>,
    headers: axum::http::HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let cookie_csrf = auth::cookie(&headers, auth::LOGIN_CSRF_COOKIE).unwrap_or("");
    if !auth::same_secret(cookie_csrf, &f.csrf) {
        return layout::refused(
            StatusCode::FORBIDDEN,
            "The login form had no valid CSRF token. Reload the login page and try again.",
        );
    }
    let next = safe_next(Some(&f.next));
    match auth::log_in(&s.db, &f.user, &f.password).await {
        Ok(Some((value, _))) => {
            tracing::info!(user = ?f.user, "dashboard login");
            let mut resp = Redirect::to(&next).into_response();
            set_cookie(
                &mut resp,
                &auth::set_cookie(
                    auth::SESSION_COOKIE,
                    &value,
                    s.tls,
                    auth::SESSION_HOURS * 3600,
                ),
            );
            set_cookie(
                &mut resp,
                &auth::set_cookie(auth::LOGIN_CSRF_COOKIE, "", s.tls, 0),
            );
            resp
        }
        Ok(None) => {
            // Debug-formatted: the name is what the client typed, newlines included.
            tracing::warn!(user = ?f.user, "dashboard login refused: wrong user or password");
            // Slows a password guesser down; an operator who mistyped barely notices.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            Redirect::to(&format!("/login?failed=1&next={}", url_encode(&next))).into_response()
        }
        Err(e) => layout::failure(&e.to_string()),
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(
    State(s): State<Arc<ServerState>>,
    headers: axum::http::HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    if let Ok(Some(session)) = auth::session_of(&s.db, &headers).await {
        if !auth::same_secret(&f.csrf, &session.csrf) {
            return layout::refused(
                StatusCode::FORBIDDEN,
                "Missing or wrong CSRF token: reload the page and try again.",
            );
        }
        if let Err(e) = s.db.delete_session(&session.id_sha256).await {
            return layout::failure(&e.to_string());
        }
    }
    let mut resp = Redirect::to("/login").into_response();
    set_cookie(
        &mut resp,
        &auth::set_cookie(auth::SESSION_COOKIE, "", s.tls, 0),
    );
    resp
}

fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Where to go after login: a path on this server only, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Browsers drop tabs and newlines inside URLs, so `/\t/evil` would become
        // `//evil`: no control characters or spaces at all.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            n.to_string()
        }
        _ => "/".into(),
    }
}

pub(crate) fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The session a page handler runs for (put there by `require_login`).
pub type CurrentSession = axum::Extension<Session>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_returns_only_to_this_server() {
        assert_eq!(safe_next(Some("/hosts?x=1")), "/hosts?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("/\t/evil.example")), "/");
        assert_eq!(safe_next(Some("/\n/evil.example")), "/");
        assert_eq!(safe_next(Some("/ /evil.example")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(url_encode("/a b?c=d&e"), "/a%20b%3Fc%3Dd%26e");
    }
}
