//! Logging in and out. Any user logs in with a name and password; the throttle
//! (`auth::throttle`) answers 429 or 503 at once, with the time left, when it does not
//! let a login through to its password check.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::{layout, set_cookie, url_encode};
use crate::audit::{client_address, AuditNote};
use crate::auth::{self, Caller, Login, Via};
use crate::http::ServerState;

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// The login form, with a fresh double-submit CSRF cookie (there is no session yet).
pub(super) async fn login_page(
    State(s): State<Arc<ServerState>>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let csrf = auth::random_secret();
    let mut resp = form(StatusCode::OK, &csrf, q.next.as_deref(), "", None);
    set_cookie(
        &mut resp,
        &auth::set_cookie(auth::LOGIN_CSRF_COOKIE, &csrf, s.tls, 3600),
    );
    resp
}

/// The login page with `status`, the user name typed, and why the last try failed.
fn form(
    status: StatusCode,
    csrf: &str,
    next: Option<&str>,
    user: &str,
    alert: Option<&str>,
) -> Response {
    let next = safe_next(next);
    let body = html! {
        main id="main" class="login" {
            h1 { "Lifeboat" }
            p { "Disaster recovery for your virtual machines. Log in to continue." }
            @if let Some(a) = alert {
                p role="alert" class="error" { (a) }
            }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label for="user" { "User name" }
                input id="user" name="user" type="text" value=(user) autocomplete="username" required autofocus[user.is_empty()];
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required autofocus[!user.is_empty()];
                button type="submit" { "Log in" }
            }
            p class="hint" { "The first user is admin: its password was printed when the server first started (and saved in its HOME/server/admin.password); whoever runs the server can reset it by restarting it with LIFEBOAT_ADMIN_PASSWORD. Admins add other users on the Users page or with " code { "lifeboat users add" } "." }
        }
    };
    (status, Html(layout::bare("Log in", body).into_string())).into_response()
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    user: String,
    password: String,
    csrf: String,
    #[serde(default)]
    next: String,
}

/// Longer names are refused before anything else: no user has one.
const MAX_USER: usize = 128;

pub(super) async fn login(
    State(s): State<Arc<ServerState>>,
    ext: Extensions,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let cookie_csrf = auth::cookie(&headers, auth::LOGIN_CSRF_COOKIE).unwrap_or("");
    if !auth::same_secret(cookie_csrf, &f.csrf) {
        return layout::refused(
            StatusCode::FORBIDDEN,
            "The login form had no valid CSRF token. Reload the login page and try again.",
        );
    }
    // The audit layer put the note there; without it (no layer) notes go nowhere.
    let note = ext.get::<AuditNote>().cloned().unwrap_or_default();
    let address = client_address(&ext);
    let user = f.user.trim();
    let again = |status, alert: &str| form(status, &f.csrf, Some(&f.next), user, Some(alert));
    if user.chars().count() > MAX_USER {
        note.skip();
        return again(StatusCode::BAD_REQUEST, "That user name is too long.");
    }
    match auth::log_in(&s.db, &s.throttle, user, &f.password, address).await {
        Ok(Login::Opened(value, session)) => {
            tracing::info!(user = %session.user, %address, "dashboard login");
            note.login(&session.user, "logged in");
            let mut resp = Redirect::to(&safe_next(Some(&f.next))).into_response();
            let max_age = auth::SESSION_HOURS * 3600;
            set_cookie(
                &mut resp,
                &auth::set_cookie(auth::SESSION_COOKIE, &value, s.tls, max_age),
            );
            set_cookie(
                &mut resp,
                &auth::set_cookie(auth::LOGIN_CSRF_COOKIE, "", s.tls, 0),
            );
            resp
        }
        Ok(Login::Wrong {
            user_exists,
            locked,
        }) => {
            // Debug-formatted: the name is what the client typed, newlines included.
            tracing::warn!(user = ?user, %address, "dashboard login refused: wrong user or password");
            // A name that is no user may be a password typed in the wrong field: it stays
            // out of the audit log.
            let (who, what) = if user_exists {
                (user, "wrong password")
            } else {
                ("", "no such user")
            };
            let mut alert = "Wrong user name or password.".to_string();
            let detail = match &locked {
                Some(lock) => {
                    alert = format!("{alert} {}", lock.message(user, address));
                    format!(
                        "{what}; now locked for {}",
                        auth::throttle::minutes(lock.retry_after())
                    )
                }
                None => what.to_string(),
            };
            note.login(who, detail);
            let mut resp = again(StatusCode::UNAUTHORIZED, &alert);
            if let Some(lock) = locked {
                retry_after(&mut resp, lock.retry_after());
            }
            resp
        }
        Ok(Login::NotChecked(refusal)) => {
            tracing::debug!(user = ?user, %address, ?refusal, "dashboard login not checked");
            note.skip();
            let status = if refusal.is_busy() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            let mut resp = again(status, &refusal.message(user, address));
            retry_after(&mut resp, refusal.retry_after());
            resp
        }
        Err(e) => layout::failure(&e.to_string()),
    }
}

fn retry_after(resp: &mut Response, after: std::time::Duration) {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    csrf: String,
}

pub(super) async fn logout(
    State(s): State<Arc<ServerState>>,
    ext: Extensions,
    Form(f): Form<LogoutForm>,
) -> Response {
    if let Some(Via::Session(session)) = ext.get::<Caller>().map(|c| &c.via) {
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

/// `/login?next=…`, back to `path` after.
pub(super) fn login_then(path: &str) -> String {
    format!("/login?next={}", url_encode(path))
}

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
