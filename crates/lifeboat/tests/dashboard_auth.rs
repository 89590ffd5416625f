//! The dashboard's doors, over HTTP with no browser (the browser test is `qemu_dashboard`):
//! the password made at first start, logins, session cookies, CSRF on every
//! state-changing call, API tokens made and revoked, logout, and a password too short to
//! set. The server runs as its own process, on SQLite and on PostgreSQL.

mod common;

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;

use common::start_server;
use lifeboat_testkit::fresh_postgres_database;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of the `Set-Cookie` for `name`, and the whole header.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| (v.split(';').next().unwrap().to_string(), v.to_string()))
}

/// GET `url` with the session `cookie`.
async fn get_as(c: &reqwest::Client, url: String, cookie: &str) -> reqwest::Response {
    c.get(url).header("cookie", cookie).send().await.unwrap()
}

/// The text from just after `marker` up to the next `"` (an attribute's value).
fn quoted_after(html: &str, marker: &str) -> String {
    let rest = html
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    rest.split('"').next().unwrap().to_string()
}

/// Logs in through the form as a browser would: the form's page sets the login CSRF
/// cookie, the post carries it back with the field. Returns the response.
async fn log_in(url: &str, password: &str) -> reqwest::Response {
    let c = http();
    let page = c.get(format!("{url}/login")).send().await.unwrap();
    let (cookie, header) = set_cookie(&page, "lifeboat_login_csrf").unwrap();
    assert!(header.contains("HttpOnly") && header.contains("SameSite=Strict"));
    let html = page.text().await.unwrap();
    let csrf = quoted_after(&html, "name=\"csrf\" value=\"");
    c.post(format!("{url}/login"))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "user=admin&password={password}&csrf={csrf}&next=/hosts"
        ))
        .send()
        .await
        .unwrap()
}

/// The session cookie and its CSRF token (from a page's meta tag).
async fn session(url: &str, password: &str) -> (String, String) {
    let r = log_in(url, password).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/hosts");
    let (cookie, header) = set_cookie(&r, "lifeboat_session").unwrap();
    assert!(
        header.contains("HttpOnly") && header.contains("SameSite=Strict"),
        "{header}"
    );
    // Plain HTTP on loopback here: a Secure cookie would never come back.
    assert!(!header.contains("Secure"), "{header}");
    let page = http()
        .get(format!("{url}/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let csrf = quoted_after(&html, "name=\"csrf-token\" content=\"");
    (cookie, csrf)
}

#[tokio::test]
async fn dashboard_logins_sessions_csrf_and_tokens_on_sqlite() {
    dashboard_logins_sessions_csrf_and_tokens(None).await;
}

#[tokio::test]
async fn dashboard_logins_sessions_csrf_and_tokens_on_postgres() {
    dashboard_logins_sessions_csrf_and_tokens(Some(fresh_postgres_database())).await;
}

async fn dashboard_logins_sessions_csrf_and_tokens(database: Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("server");
    // No LIFEBOAT_ADMIN_PASSWORD: the first start makes a password and says where it is.
    std::env::remove_var("LIFEBOAT_ADMIN_PASSWORD");
    let server = start_server(&home, database.as_deref());
    let url = server.url.clone();
    let password = std::fs::read_to_string(home.join("server/admin.password")).unwrap();
    let mode = std::fs::metadata(home.join("server/admin.password"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert!(password.len() >= 20, "{password}");

    // No session: pages send the browser to the login form, the API and the event
    // stream refuse.
    let c = http();
    let r = c.get(format!("{url}/hosts")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/login?next=/hosts");
    let r = c.get(format!("{url}/api/v1/vms")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c.get(format!("{url}/events")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(format!("{url}/hosts"))
        .header("cookie", "lifeboat_session=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "a forged cookie");

    // A wrong password: the form again, saying so, and no session.
    let r = log_in(&url, "wrong-password-here").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&r, "lifeboat_session").is_none());
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("Wrong user name or password."));
    // A login post without the form's CSRF cookie is refused.
    let r = c
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user=admin&password={password}&csrf=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(&r, "lifeboat_session").is_none());

    // Logged in: pages and reads work; writes need the session's CSRF token.
    let (cookie, csrf) = session(&url, &password).await;
    for (page, _) in lifeboat_server::web::layout::NAV {
        let r = get_as(&c, format!("{url}{page}"), &cookie).await;
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{page}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    }
    let r = get_as(&c, format!("{url}/api/v1/tokens"), &cookie).await;
    assert_eq!(r.status(), StatusCode::OK);
    let make = |csrf: Option<&str>| {
        let mut req = c
            .post(format!("{url}/api/v1/tokens"))
            .header("cookie", &cookie)
            .json(&json!({ "name": "backup-script" }));
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };
    let r = make(None).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("CSRF token"));
    let r = make(Some("0".repeat(64).as_str())).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A bad scan range: the server's message, as is.
    let r = c
        .post(format!("{url}/api/v1/scan"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({ "cidr": "10.0.0.0/8" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("scan at most a /16"));

    // A token made with the session works as a bearer token, and stops when revoked.
    let r = make(Some(&csrf)).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let made: Value = r.json().await.unwrap();
    let token = made["token"].as_str().unwrap();
    let status = |t: String| c.get(format!("{url}/api/v1/status")).bearer_auth(t).send();
    assert_eq!(
        status(token.to_string()).await.unwrap().status(),
        StatusCode::OK
    );
    let listed: Value = c
        .get(format!("{url}/api/v1/tokens"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(
        !listed.to_string().contains(token),
        "tokens are never listed"
    );
    let revoke = || {
        c.delete(format!(
            "{url}/api/v1/tokens/{}",
            made["id"].as_str().unwrap()
        ))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
    };
    assert_eq!(revoke().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status(token.to_string()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(revoke().await.unwrap().status(), StatusCode::NOT_FOUND);

    // The live stream delivers while the session lives...
    let events = get_as(&c, format!("{url}/events"), &cookie).await;
    assert_eq!(events.status(), StatusCode::OK);
    let mut events = events.bytes_stream();
    let first = events.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: fragments"));

    // Logout needs the token too, and ends the session.
    let r = c
        .post(format!("{url}/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .post(format!("{url}/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = get_as(&c, format!("{url}/api/v1/status"), &cookie).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the session ended");
    // ...and ends with it: an open tab stops seeing the fleet.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = events.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived the session");
    drop(server);

    // A restart with LIFEBOAT_ADMIN_PASSWORD replaces the password and ends sessions;
    // the old password no longer logs in, and the saved one is gone.
    let (cookie, _) = {
        let server = start_server(&home, database.as_deref());
        let s = session(&server.url, &password).await;
        drop(server);
        s
    };
    std::env::set_var("LIFEBOAT_ADMIN_PASSWORD", "a-new-password-123");
    let server = start_server(&home, database.as_deref());
    let url = server.url.clone();
    assert!(!home.join("server/admin.password").exists());
    let r = get_as(&c, format!("{url}/api/v1/status"), &cookie).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "old sessions end");
    let r = log_in(&url, &password).await;
    assert!(set_cookie(&r, "lifeboat_session").is_none());
    session(&url, "a-new-password-123").await;
    drop(server);

    // Too short a password: the server does not start, and says why.
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--home")
        .arg(&home)
        .args(["server", "--listen", "127.0.0.1:0", "--insecure-http"])
        // The URL holds a password: in the environment, never on the command line.
        .envs(database.iter().map(|d| ("LIFEBOAT_DATABASE", d.as_str())))
        .env("LIFEBOAT_ADMIN_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 10 characters"), "{err}");
}
