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
//! - `pages`: one function per page; `fragments`: the parts of them that change;
//!   `paging`: long tables a page at a time.
//! - `vm_page`: a VM's detail page and its actions.
//! - `admin`: the Users and Audit pages.
//! - `login`: logging in (throttled) and out.
//! - `live`: the event stream.
//! - `chart`: the RPO chart, inline SVG.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::access;
use crate::http::ServerState;

pub mod admin;
pub mod chart;
pub mod fragments;
pub mod layout;
pub mod live;
pub mod login;
pub mod pages;
pub mod paging;
pub mod vm_page;

use crate::auth::{Caller, Session, Via};

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
        .route("/users", get(admin::users))
        .route("/audit", get(admin::audit))
        .route("/events", get(live::events))
        .route_layer(axum::middleware::from_fn(require_login));
    Router::new()
        .merge(pages)
        // Anyone may post it: a login form is a few hundred bytes.
        .route(
            "/login",
            get(login::login_page)
                .post(login::login)
                .layer(axum::extract::DefaultBodyLimit::max(
                    lifeboat_agent::api::UNAUTHENTICATED_BODY,
                )),
        )
        .route("/logout", post(login::logout))
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

/// Pages need a session (an API token is for the API) and the role the page needs
/// (`api::access`); without a session the browser goes to the login page and comes back.
async fn require_login(mut req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().cloned();
    let Some(Caller {
        via: Via::Session(session),
        ..
    }) = caller
    else {
        if req.uri().path() == "/events" {
            return (StatusCode::UNAUTHORIZED, "log in first").into_response();
        }
        let next_path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        return Redirect::to(&login::login_then(next_path)).into_response();
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", |m| m.as_str());
    let needed = access::required_role(req.method(), route);
    if session.role < needed {
        return layout::refused(
            StatusCode::FORBIDDEN,
            &format!(
                "This page needs the {needed} role; {} is {}. An admin can change roles on the Users page.",
                session.user,
                session.role.with_article()
            ),
        );
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

pub(crate) fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
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
