//! Logging in over HTTP from a chosen loopback address (any 127.x binds on Linux), and
//! the CLI with environment of its own: for the users, roles, throttle and audit tests.

use std::net::IpAddr;

use reqwest::StatusCode;

use super::Server;

/// The login form's double-submit token: any value the cookie and the field share.
const FORM_CSRF: &str = "0123456789abcdef0123456789abcdef";

/// A client whose connections come from `from` (e.g. 127.0.0.2), following no redirects.
pub fn http_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Posts the login form as `user`.
pub async fn post_login(
    c: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    try_post_login(c, url, user, password).await.unwrap()
}

/// `post_login`, for a flood: the listener may close a connection over its per-address
/// limit before answering.
pub async fn try_post_login(
    c: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> reqwest::Result<reqwest::Response> {
    let form = [
        ("user", user),
        ("password", password),
        ("csrf", FORM_CSRF),
        ("next", "/"),
    ];
    c.post(format!("{url}/login"))
        .header("cookie", format!("lifeboat_login_csrf={FORM_CSRF}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&form))
        .send()
        .await
}

/// `application/x-www-form-urlencoded`: every byte but letters and digits escaped.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `lifeboat_session=…` from a login's answer, if it opened a session.
pub fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("lifeboat_session=") && !v.starts_with("lifeboat_session=;"))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// Logs `user` in from `from`; the session cookie and its CSRF token (from a page).
pub async fn session_as(url: &str, from: &str, user: &str, password: &str) -> (String, String) {
    let c = http_from(from);
    let r = post_login(&c, url, user, password).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{user} logs in");
    let cookie = session_cookie(&r).unwrap();
    let page = c
        .get(format!("{url}/tokens"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    (cookie, csrf)
}

/// Runs a client command against `server` with `token` and extra environment;
/// (success, stdout, stderr).
pub fn cli(
    server: &Server,
    token: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    c.args(args)
        .env("LIFEBOAT_SERVER", &server.url)
        .env("LIFEBOAT_HOME", "/nonexistent-lifeboat-home")
        .env("LIFEBOAT_TOKEN", token)
        .env_remove("LIFEBOAT_USER_PASSWORD");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
