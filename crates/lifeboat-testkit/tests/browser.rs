//! Proves the browser harness really drives Chromium: a tiny page served from this test,
//! typed into, clicked, navigated by keyboard, resized to a phone, and photographed.
//! Fails (never skips) when Chromium or chromedriver is missing.

use std::time::Duration;

use anyhow::{ensure, Context};
use lifeboat_testkit::browser::{artifacts_dir, Browser};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Lifeboat browser harness</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<h1>Harness check</h1>
<form onsubmit="return false">
  <label for="name">Name</label>
  <input id="name" type="text">
  <button id="go" type="button">Go</button>
  <label for="size">Size</label>
  <select id="size">
    <option value="small">Small</option>
    <option value="large">Large</option>
  </select>
</form>
<p id="out"></p>
<p id="clicks">0</p>
<p id="chosen"></p>
<script>
  document.cookie = "lifeboat_test=1; path=/";
  let clicks = 0;
  document.getElementById("go").addEventListener("click", () => {
    document.getElementById("out").textContent =
      "You typed: " + document.getElementById("name").value;
    document.getElementById("clicks").textContent = String(++clicks);
  });
  document.getElementById("size").addEventListener("change", (e) => {
    document.getElementById("chosen").textContent = "chose " + e.target.value;
  });
</script>
</body>
</html>
"#;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn browser_drives_chromium() -> anyhow::Result<()> {
    let url = serve_page().await?;
    let browser = Browser::start(&artifacts_dir("browser_drives_chromium")).await?;

    browser.goto(&url).await?;
    ensure!(browser.current_url().await? == url);
    ensure!(browser.title().await? == "Lifeboat browser harness");
    ensure!(browser.exists("#name").await?);
    ensure!(!browser.exists("#missing").await?);

    // Filling twice proves fill clears before typing.
    browser.fill("#name", "first try").await?;
    browser.fill("#name", "hello lifeboat").await?;
    browser.click("#go").await?;
    let out = browser
        .wait_for_text("#out", "hello lifeboat", WAIT)
        .await?;
    ensure!(out == "You typed: hello lifeboat", "#out says {out:?}");
    ensure!(browser.text("#clicks").await? == "1");

    // Keyboard: Tab from the input reaches the button, Enter activates it, Shift+Tab
    // goes back.
    browser.click("#name").await?;
    ensure!(browser.is_focused("#name").await?);
    browser.press_key("Tab").await?;
    let focused = browser.active_element_description().await?;
    ensure!(
        browser.is_focused("#go").await?,
        "focus after Tab: {focused}"
    );
    ensure!(focused == r#"button#go "Go""#, "focus after Tab: {focused}");
    browser.press_key("Enter").await?;
    browser.wait_for_text("#clicks", "2", WAIT).await?;
    browser.press_key("Shift+Tab").await?;
    ensure!(browser.is_focused("#name").await?);
    let active = browser.active_element().await?;
    let id = browser
        .execute("return arguments[0].id;", &[active.to_arg()])
        .await?;
    ensure!(id == json!("name"), "active element id {id}");

    browser.select("#size", "large").await?;
    browser
        .wait_for_text("#chosen", "chose large", WAIT)
        .await?;

    let sum = browser
        .execute("return arguments[0] + arguments[1];", &[json!(2), json!(3)])
        .await?;
    ensure!(sum == json!(5), "2 + 3 = {sum}");
    let title = browser
        .execute_async(
            "const done = arguments[arguments.length - 1]; setTimeout(() => done(document.title), 10);",
            &[],
        )
        .await?;
    ensure!(title == json!("Lifeboat browser harness"), "title {title}");

    let cookies = browser.cookies().await?;
    ensure!(
        cookies
            .iter()
            .any(|c| c.name == "lifeboat_test" && c.value == "1"),
        "cookies: {cookies:?}"
    );

    browser.set_window_size(390, 844).await?;
    let width = browser.execute("return window.innerWidth;", &[]).await?;
    ensure!(
        width == json!(390),
        "innerWidth after resizing to 390: {width}"
    );

    let shot = browser.screenshot("phone").await?;
    let png = std::fs::read(&shot).with_context(|| format!("reading {}", shot.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        shot.display()
    );

    // A failed wait names the selector, the page and what the page says.
    let error = browser
        .wait_for("#never", Duration::from_millis(300))
        .await
        .err()
        .context("waiting for a missing element succeeded")?;
    let message = format!("{error:#}");
    eprintln!("the expected timeout error: {message}");
    ensure!(
        message.contains("#never") && message.contains(&url) && message.contains("Harness check"),
        "unhelpful timeout error: {message}"
    );

    // Nothing outlives the browser.
    let pids = browser.process_ids();
    ensure!(
        pids.len() > 1,
        "expected chromedriver and Chromium, got {pids:?}"
    );
    drop(browser);
    let alive: Vec<u32> = pids.into_iter().filter(|&pid| running(pid)).collect();
    ensure!(alive.is_empty(), "still running after drop: {alive:?}");
    Ok(())
}

/// Whether `pid` is a process that has not exited (zombies waiting for init to reap them
/// count as exited).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

/// Serves [`PAGE`] at `/` (404 elsewhere) until the test ends; returns its URL.
async fn serve_page() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Err(e) = answer(stream).await {
                    eprintln!("test page server: {e:#}");
                }
            });
        }
    });
    Ok(url)
}

async fn answer(mut stream: TcpStream) -> anyhow::Result<()> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // Chromium opens spare connections it may never use.
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path.split('?').next() {
        Some("/") => ("200 OK", PAGE),
        _ => ("404 Not Found", "not found"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}
