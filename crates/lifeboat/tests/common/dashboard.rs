//! Driving the dashboard in headless Chromium: checks every page must pass, and the way
//! an action is taken (its dialog, its outcome).

use std::time::{Duration, Instant};

use lifeboat_testkit::browser::Browser;
use serde_json::{json, Value};

pub const PASSWORD: &str = "dashboard-test-password";
pub const LONG: Duration = Duration::from_secs(300);
pub const SHORT: Duration = Duration::from_secs(30);

pub fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder()
        // The server's self-signed certificate; what is under test is the refusal.
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Checks what every page must have (one h1, a main landmark, a label for every
/// control, nothing wider than the window) and saves its screenshot.
pub async fn check_page(b: &Browser, name: &str) {
    let facts = b
        .execute(
            "const unlabelled = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                .map(e => e.outerHTML);
             return { unlabelled, h1: document.querySelectorAll('h1').length,
                      main: !!document.querySelector('main'),
                      overflow: document.documentElement.scrollWidth - window.innerWidth };",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        facts["unlabelled"],
        json!([]),
        "{name}: controls without a label"
    );
    assert_eq!(facts["h1"], 1, "{name}: one h1");
    assert_eq!(facts["main"], true, "{name}: a main landmark");
    assert!(
        facts["overflow"].as_i64().unwrap() <= 1,
        "{name}: the page is wider than the window by {}px",
        facts["overflow"]
    );
    b.screenshot(name).await.unwrap();
}

/// Opens an action's dialog and submits it with its fields as they are; returns the
/// success message.
pub async fn act(b: &Browser, dialog: &str, limit: Duration) -> String {
    b.click(&format!("button[data-open=\"{dialog}\"]"))
        .await
        .unwrap();
    b.wait_for(&format!("dialog#{dialog}[open]"), SHORT)
        .await
        .unwrap();
    submit(b, dialog, limit).await
}

/// Submits the form in `scope` (a dialog's id) and waits for the page to come back with
/// the success message, which it returns.
pub async fn submit(b: &Browser, scope: &str, limit: Duration) -> String {
    // The last action's message must not pass for this one's.
    b.execute(
        "document.querySelectorAll('.flash').forEach(e => e.remove());",
        &[],
    )
    .await
    .unwrap();
    b.click(&format!("#{scope} button[type=submit]"))
        .await
        .unwrap();
    submitted(b, scope, limit).await
}

/// Waits for a submitted form's outcome: the flash after the reload, or its error shown
/// as the server gave it (a panic that quotes it).
async fn submitted(b: &Browser, form_scope: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        // The page may be reloading between the two calls: try again then.
        if b.exists(".flash").await.unwrap_or(false) {
            if let Ok(message) = b.text(".flash").await {
                return message;
            }
        }
        let error = b
            .execute(
                "const e = document.querySelector('#' + arguments[0] + ' [role=alert]');
                 return e && !e.hidden ? e.textContent : null;",
                &[json!(form_scope)],
            )
            .await
            .unwrap_or(Value::Null);
        if let Some(e) = error.as_str() {
            let _ = b.screenshot(&format!("failed-{form_scope}")).await;
            panic!("{form_scope}: the server refused: {e}");
        }
        if Instant::now() > deadline {
            let _ = b.screenshot(&format!("failed-{form_scope}")).await;
            panic!("{form_scope}: no outcome after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Logs in as admin with the dashboard's password, from wherever the browser is sent to
/// log in.
pub async fn log_in(b: &Browser, url: &str) {
    b.goto(&format!("{url}/")).await.unwrap();
    b.wait_for("#password", SHORT).await.unwrap();
    b.fill("#user", "admin").await.unwrap();
    b.fill("#password", PASSWORD).await.unwrap();
    b.click("button[type=submit]").await.unwrap();
    b.wait_for_text("h1", "Overview", SHORT).await.unwrap();
}
