//! A real headless Chromium for the web dashboard's end-to-end tests, driven over the
//! W3C WebDriver protocol through Debian's `chromedriver`.
//!
//! Why a hand-written client: WebDriver is a handful of JSON-over-HTTP calls to a
//! chromedriver on loopback, and `reqwest` (with the workspace's features) is already
//! built for the other crates, so this costs no new dependency tree and no OpenSSL.
//!
//! Why the waits: the dashboard renders asynchronously, so every element action
//! ([`Browser::click`], [`Browser::fill`], ...) retries for up to
//! [`Browser::DEFAULT_TIMEOUT`] while the element is missing, stale, covered or not yet
//! interactable, instead of failing on the first try. Timeout errors name the selector
//! and add the page's URL and the start of its text, which usually says what went wrong.
//!
//! Why the process handling: chromedriver's Chromium does not exit when chromedriver
//! dies, so dropping a [`Browser`] first asks chromedriver to end the session (it closes
//! Chromium cleanly), then SIGKILLs whatever is left of chromedriver's process tree.
//! (Chromium's two `chrome_crashpad_handler`s daemonize out of that tree; they exit by
//! themselves once the browser is gone.)
//! chromedriver stays in the test's process group on purpose: nextest and a terminal's
//! Ctrl-C signal the whole group, so a killed test takes its browser with it.
//!
//! Install: `./scripts/test` installs the Debian packages `chromium` and
//! `chromium-driver` (`need_test_tools` in `scripts/lib.sh`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use crate::free_tcp_port;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's `/usr/bin/chromium` is a shell wrapper that adds flags from
/// `/etc/chromium.d` (GPU rasterization, extension loading) and prints shell noise; the
/// real binary behind it is preferred so the browser runs with exactly our flags.
const CHROMIUM: [&str; 2] = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"];
const INSTALL_HINT: &str = "run ./scripts/test, or apt-get install chromium chromium-driver";

/// The key under which WebDriver serializes an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(30);
const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(60);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than the page-load timeout, so chromedriver reports a slow page itself
/// (with a clear error) before our HTTP client gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

/// WebDriver errors that mean "not yet": the page is still rendering or re-rendering.
const TRANSIENT: [&str; 5] = [
    "no such element",
    "stale element reference",
    "element not interactable",
    "element click intercepted",
    "invalid element state",
];

/// Where a test keeps its screenshots and the chromedriver log:
/// `$LIFEBOAT_ARTIFACTS/<test_name>` when `LIFEBOAT_ARTIFACTS` is set (CI points it at
/// the directory it uploads), else `<target dir>/artifacts/<test_name>`, the target dir
/// being `$CARGO_TARGET_DIR` (relative to the workspace root) or the workspace's
/// `target`. Not created here; [`Browser::start`] creates it.
pub fn artifacts_dir(test_name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("LIFEBOAT_ARTIFACTS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join(test_name);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        // `join` keeps an absolute CARGO_TARGET_DIR as it is.
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    target.join("artifacts").join(test_name)
}

/// An element found by [`Browser::wait_for`]. WebDriver references go stale when the page
/// re-renders, which is why [`Browser`]'s actions take CSS selectors and look the element
/// up again on every try; use this to pass an element to [`Browser::execute`].
#[derive(Debug, Clone)]
pub struct Element {
    id: String,
    css: String,
}

impl Element {
    /// The selector this element was found by.
    pub fn css(&self) -> &str {
        &self.css
    }

    /// This element as a script argument (`arguments[i]` is the DOM element).
    pub fn to_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }
}

/// A cookie as the browser holds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cookie {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub secure: bool,
    #[serde(default)]
    pub http_only: bool,
    /// Seconds since the epoch; `None` for a session cookie.
    #[serde(default)]
    pub expiry: Option<u64>,
    /// `Strict`, `Lax` or `None`.
    #[serde(default)]
    pub same_site: Option<String>,
}

/// A WebDriver error reply, kept as a type so the retry loops can tell "not yet" from
/// "wrong".
#[derive(Debug)]
struct ProtocolError {
    code: String,
    message: String,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProtocolError {}

fn has_code(error: &anyhow::Error, codes: &[&str]) -> bool {
    error
        .downcast_ref::<ProtocolError>()
        .is_some_and(|e| codes.contains(&e.code.as_str()))
}

/// One headless Chromium with a fresh profile, and the chromedriver driving it. Dropping
/// it ends the session and kills both.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session_url: String,
    session_id: String,
    artifacts: PathBuf,
    // Drop order matters: the driver (and Chromium) must be dead before the profile
    // directory is deleted under them.
    driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// How long element actions and [`Browser::text`] wait for their element.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

    /// Starts chromedriver on a free port and opens a Chromium session on a fresh
    /// profile. `artifacts` (created if needed) receives screenshots and
    /// `chromedriver.log`.
    pub async fn start(artifacts: &Path) -> anyhow::Result<Browser> {
        if !Path::new(CHROMEDRIVER).is_file() {
            bail!("{CHROMEDRIVER} not found: {INSTALL_HINT}");
        }
        let chromium = CHROMIUM
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .with_context(|| format!("/usr/bin/chromium not found: {INSTALL_HINT}"))?;
        std::fs::create_dir_all(artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        let http = reqwest::Client::builder()
            // chromedriver is on loopback: a proxy from the environment must not apply.
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let driver = Driver::start(&http, artifacts).await?;
        let profile = tempfile::Builder::new()
            .prefix("lifeboat-chromium-")
            .tempdir()
            .context("creating Chromium's profile directory")?;
        let args = [
            "--headless=new".to_string(),
            // Tests run as root in containers, where the sandbox cannot start.
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            // Without these Chromium keeps trying to reach Google on the closed network.
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            // /dev/shm is small in containers; Chromium crashes tabs when it fills.
            "--disable-dev-shm-usage".into(),
            // Not --disable-crashpad-for-testing: with it Chromium 156's network service
            // crash-loops and no page ever loads.
            format!("--user-data-dir={}", profile.path().display()),
            "--window-size=1280,900".into(),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    // The server under test may use a self-signed certificate.
                    "acceptInsecureCerts": true,
                    "pageLoadStrategy": "normal",
                    "timeouts": {
                        // Waiting is explicit (wait_for and the retry loops): an implicit
                        // wait would also slow down `exists` on absent elements.
                        "implicit": 0,
                        "pageLoad": PAGE_LOAD_TIMEOUT.as_millis() as u64,
                        "script": SCRIPT_TIMEOUT.as_millis() as u64,
                    },
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": args,
                    },
                },
            },
        });
        let reply = send(
            &http,
            Method::POST,
            &format!("{}/session", driver.url),
            Some(capabilities),
        )
        .await
        .with_context(|| {
            format!(
                "starting Chromium ({}) through chromedriver; see {}",
                chromium.display(),
                driver.log.display()
            )
        })?;
        let session_id = reply
            .get("sessionId")
            .and_then(Value::as_str)
            .with_context(|| format!("chromedriver's new-session reply has no sessionId: {reply}"))?
            .to_string();
        Ok(Browser {
            http,
            session_url: format!("{}/session/{session_id}", driver.url),
            session_id,
            artifacts: artifacts.to_path_buf(),
            driver,
            _profile: profile,
        })
    }

    /// The directory screenshots go to.
    pub fn artifacts(&self) -> &Path {
        &self.artifacts
    }

    /// chromedriver's and Chromium's process ids right now, for tests that check nothing
    /// outlives the browser.
    pub fn process_ids(&self) -> Vec<u32> {
        let Some(driver) = self.driver.child.as_ref() else {
            return Vec::new();
        };
        let mut pids = vec![driver.id()];
        pids.extend(
            descendants(driver.id() as i32)
                .into_iter()
                .map(|p| p as u32),
        );
        pids
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .with_context(|| format!("opening {url}"))?;
        Ok(())
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        let url = self.cmd(Method::GET, "/url", None).await?;
        url.as_str()
            .map(str::to_string)
            .with_context(|| format!("chromedriver answered a non-string URL: {url}"))
    }

    pub async fn title(&self) -> anyhow::Result<String> {
        let title = self.cmd(Method::GET, "/title", None).await?;
        title
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("chromedriver answered a non-string title: {title}"))
    }

    /// Reloads the page.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        self.cmd(Method::POST, "/refresh", Some(json!({})))
            .await
            .context("reloading the page")?;
        Ok(())
    }

    /// Waits until an element matches `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> anyhow::Result<Element> {
        self.retry(css, "find", timeout, async |element| Ok(element.clone()))
            .await
    }

    /// Whether an element matches `css` now (no waiting).
    pub async fn exists(&self, css: &str) -> anyhow::Result<bool> {
        let found = self
            .cmd(Method::POST, "/elements", Some(by_css(css)))
            .await
            .with_context(|| format!("looking for `{css}`"))?;
        let found = found
            .as_array()
            .with_context(|| format!("chromedriver answered a non-list for `{css}`: {found}"))?;
        Ok(!found.is_empty())
    }

    /// Clicks the element matching `css` once it is there and clickable.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.retry(css, "click", Self::DEFAULT_TIMEOUT, async |element| {
            self.element_cmd(element, Method::POST, "/click", Some(json!({})))
                .await
                .map(drop)
        })
        .await
    }

    /// Replaces the value of the input matching `css` with `text`, typed as keystrokes
    /// (so the page sees real input events).
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        self.retry(css, "fill", Self::DEFAULT_TIMEOUT, async |element| {
            self.element_cmd(element, Method::POST, "/clear", Some(json!({})))
                .await?;
            self.element_cmd(
                element,
                Method::POST,
                "/value",
                Some(json!({ "text": text })),
            )
            .await
            .map(drop)
        })
        .await
    }

    /// Picks the `<option value="value">` of the `<select>` matching `css` by clicking
    /// it, as a user would (the page gets its `input` and `change` events). Waits for the
    /// option too, since options are often loaded after the page.
    pub async fn select(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let option = format!("option[value=\"{}\"]", css_string(value));
        let what = format!("select {value:?} in");
        self.retry(css, &what, Self::DEFAULT_TIMEOUT, async |select| {
            let found = self
                .element_cmd(select, Method::POST, "/element", Some(by_css(&option)))
                .await?;
            let option = element_from(&found, &option)?;
            self.element_cmd(&option, Method::POST, "/click", Some(json!({})))
                .await
                .map(drop)
        })
        .await
    }

    /// The rendered text of the element matching `css` (what a user sees: empty for a
    /// hidden element), once it is there.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        self.retry(
            css,
            "read the text of",
            Self::DEFAULT_TIMEOUT,
            async |element| self.element_text(element).await,
        )
        .await
    }

    /// Waits until the rendered text of the element matching `css` contains `needle`,
    /// and returns that text.
    pub async fn wait_for_text(
        &self,
        css: &str,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let mut last: Option<String> = None;
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = match self.find(css).await {
                Ok(element) => self.element_text(&element).await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(text) if text.contains(needle) => return Ok(text),
                Ok(text) => last = Some(text),
                Err(e) if has_code(&e, &TRANSIENT) => {}
                Err(e) => {
                    let what = format!("could not read the text of `{css}`: {e:#}");
                    return Err(self.page_error(what).await);
                }
            }
            if Instant::now() >= deadline {
                let seen = match last {
                    Some(text) => format!("its text was {:?}", prefix(&text, 300)),
                    None => "no element matched".to_string(),
                };
                let what = format!(
                    "the text of `{css}` did not contain {needle:?} within {timeout:?} ({seen})"
                );
                return Err(self.page_error(what).await);
            }
            sleep(POLL).await;
        }
    }

    /// Runs `script` as a function body with `args` as `arguments` and returns what it
    /// returns (`return ...;`). Elements go in as [`Element::to_arg`].
    pub async fn execute(&self, script: &str, args: &[Value]) -> anyhow::Result<Value> {
        self.cmd(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
        .with_context(|| format!("running script {:?}", prefix(script, 200)))
    }

    /// Like [`Browser::execute`], but the result is what the script passes to its last
    /// argument, a callback: `arguments[arguments.length - 1](result)`. Times out after
    /// 30 s.
    pub async fn execute_async(&self, script: &str, args: &[Value]) -> anyhow::Result<Value> {
        self.cmd(
            Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
        .await
        .with_context(|| format!("running async script {:?}", prefix(script, 200)))
    }

    /// Resizes the window; in headless mode that is the viewport (`innerWidth`).
    pub async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.cmd(
            Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .with_context(|| format!("resizing the window to {width}x{height}"))?;
        Ok(())
    }

    /// Presses and releases a key on whatever has the keyboard focus: a single character,
    /// a key name (`Tab`, `Enter`, `Escape`, `Space`, `Backspace`, `Delete`, `ArrowUp`,
    /// `ArrowDown`, `ArrowLeft`, `ArrowRight`, `Home`, `End`, `PageUp`, `PageDown`), or a
    /// chord with modifiers (`Shift+Tab`, `Control+a`; modifiers `Shift`, `Control`,
    /// `Alt`, `Meta`).
    pub async fn press_key(&self, key: &str) -> anyhow::Result<()> {
        let codes = key
            .split('+')
            .map(key_code)
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("unknown key {key:?}"))?;
        let mut actions: Vec<Value> = codes
            .iter()
            .map(|c| json!({ "type": "keyDown", "value": c }))
            .collect();
        actions.extend(
            codes
                .iter()
                .rev()
                .map(|c| json!({ "type": "keyUp", "value": c })),
        );
        let body = json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] });
        self.cmd(Method::POST, "/actions", Some(body))
            .await
            .with_context(|| format!("pressing {key}"))?;
        // Releasing clears chromedriver's record of held keys for the next action.
        self.cmd(Method::DELETE, "/actions", None)
            .await
            .with_context(|| format!("releasing {key}"))?;
        Ok(())
    }

    /// The element with the keyboard focus (`<body>` when nothing has it).
    pub async fn active_element(&self) -> anyhow::Result<Element> {
        let found = self.cmd(Method::GET, "/element/active", None).await?;
        element_from(&found, ":focus")
    }

    /// Whether the element matching `css` has the keyboard focus.
    pub async fn is_focused(&self, css: &str) -> anyhow::Result<bool> {
        let focused = self
            .execute(
                "const e = document.querySelector(arguments[0]); \
                 return e !== null && e === document.activeElement;",
                &[json!(css)],
            )
            .await
            .with_context(|| format!("checking whether `{css}` has the focus"))?;
        Ok(focused == Value::Bool(true))
    }

    /// A short description of the focused element for assertions and failure messages:
    /// `tag#id "name"`, the name being its aria-label, label, text or value.
    pub async fn active_element_description(&self) -> anyhow::Result<String> {
        let description = self
            .execute(
                "const e = document.activeElement; \
                 if (!e) return '(nothing)'; \
                 const label = e.getAttribute('aria-label') \
                     || (e.labels && e.labels.length ? e.labels[0].innerText : '') \
                     || e.innerText || e.value || ''; \
                 return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') \
                     + ' \"' + label.trim().slice(0, 80) + '\"';",
                &[],
            )
            .await
            .context("describing the focused element")?;
        Ok(description.as_str().unwrap_or_default().to_string())
    }

    /// Saves a PNG of the viewport as `<artifacts>/<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let encoded = self
            .cmd(Method::GET, "/screenshot", None)
            .await
            .with_context(|| format!("taking screenshot {name}"))?;
        let encoded = encoded
            .as_str()
            .context("chromedriver answered a non-string screenshot")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .context("decoding chromedriver's screenshot")?;
        let path = self.artifacts.join(format!("{name}.png"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The cookies visible to the current page.
    pub async fn cookies(&self) -> anyhow::Result<Vec<Cookie>> {
        let cookies = self.cmd(Method::GET, "/cookie", None).await?;
        serde_json::from_value(cookies.clone())
            .with_context(|| format!("chromedriver's cookies do not parse: {cookies}"))
    }

    /// Runs `op` on the element matching `css` until it succeeds, retrying while the
    /// element is missing or not ready, up to `timeout`.
    async fn retry<T>(
        &self,
        css: &str,
        what: &str,
        timeout: Duration,
        op: impl AsyncFn(&Element) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = match self.find(css).await {
                Ok(element) => op(&element).await,
                Err(e) => Err(e),
            };
            let not_yet = match attempt {
                Ok(value) => return Ok(value),
                Err(e) if has_code(&e, &TRANSIENT) => e,
                Err(e) => {
                    let what = format!("could not {what} `{css}`: {e:#}");
                    return Err(self.page_error(what).await);
                }
            };
            if Instant::now() >= deadline {
                let why = if has_code(&not_yet, &["no such element"]) {
                    "no element matched".to_string()
                } else {
                    format!("{not_yet:#}")
                };
                let what = format!("could not {what} `{css}` within {timeout:?} ({why})");
                return Err(self.page_error(what).await);
            }
            sleep(POLL).await;
        }
    }

    async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let found = self
            .cmd(Method::POST, "/element", Some(by_css(css)))
            .await?;
        element_from(&found, css)
    }

    async fn element_text(&self, element: &Element) -> anyhow::Result<String> {
        let text = self
            .element_cmd(element, Method::GET, "/text", None)
            .await?;
        text.as_str()
            .map(str::to_string)
            .with_context(|| format!("chromedriver answered non-string text: {text}"))
    }

    /// An error about the current page: `what`, then the page's URL and the start of its
    /// text (fetched best-effort: the page may be what is broken).
    async fn page_error(&self, what: String) -> anyhow::Error {
        let url = match self.current_url().await {
            Ok(url) => url,
            Err(e) => format!("(unknown: {e:#})"),
        };
        let text = self
            .execute(
                "return document.body ? document.body.innerText.slice(0, 500) : '';",
                &[],
            )
            .await
            .map(|t| t.as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|e| format!("(unknown: {e:#})"));
        anyhow!("{what}; page {url} says: {:?}", prefix(&text, 500))
    }

    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        send(
            &self.http,
            method,
            &format!("{}{path}", self.session_url),
            body,
        )
        .await
    }

    async fn element_cmd(
        &self,
        element: &Element,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.cmd(method, &format!("/element/{}{path}", element.id), body)
            .await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver close Chromium and reap its processes;
        // the driver's own Drop then kills whatever did not go. Blocking std I/O because
        // Drop cannot await (and may run outside the runtime, during a panic).
        if let Err(e) = delete_session(self.driver.port, &self.session_id) {
            tracing::debug!(error = %e, "ending the WebDriver session");
        }
    }
}

/// A running chromedriver, killed with its whole process tree on drop.
struct Driver {
    child: Option<Child>,
    port: u16,
    /// `http://127.0.0.1:<port>`
    url: String,
    log: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a port that was free a moment ago and waits for its
    /// `/status` to say ready. Another process may take the port first: then
    /// chromedriver exits and we try another.
    async fn start(http: &reqwest::Client, artifacts: &Path) -> anyhow::Result<Driver> {
        let log = artifacts.join("chromedriver.log");
        let output_path = artifacts.join("chromedriver.out");
        for _ in 0..3 {
            let port = free_tcp_port();
            let output = std::fs::File::create(&output_path)
                .with_context(|| format!("creating {}", output_path.display()))?;
            let child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(output.try_clone()?)
                .stderr(output)
                .spawn()
                .with_context(|| format!("starting {CHROMEDRIVER}"))?;
            let mut driver = Driver {
                child: Some(child),
                port,
                url: format!("http://127.0.0.1:{port}"),
                log: log.clone(),
            };
            let deadline = Instant::now() + DRIVER_START_TIMEOUT;
            loop {
                if let Some(status) = driver.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                    let output = std::fs::read_to_string(&output_path).unwrap_or_default();
                    tracing::warn!(%status, %output, port, "chromedriver exited at start; trying another port");
                    break;
                }
                let status_url = format!("{}/status", driver.url);
                let status = send(http, Method::GET, &status_url, None);
                let ready = tokio::time::timeout(Duration::from_secs(5), status).await;
                if let Ok(Ok(status)) = ready {
                    if status.get("ready") == Some(&Value::Bool(true)) {
                        return Ok(driver);
                    }
                }
                if Instant::now() > deadline {
                    let output = std::fs::read_to_string(&output_path).unwrap_or_default();
                    bail!(
                        "chromedriver was not ready on port {port} within {DRIVER_START_TIMEOUT:?}; \
                         output: {output}"
                    );
                }
                sleep(POLL).await;
            }
        }
        let output = std::fs::read_to_string(&output_path).unwrap_or_default();
        bail!("chromedriver would not start; last output: {output}")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Snapshot the tree before killing anything: once chromedriver dies, its
        // Chromium is re-parented and can no longer be told apart from other processes.
        let root = child.id() as i32;
        for pid in descendants(root) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The live descendants of `root`, from `/proc/<pid>/stat` parent links.
fn descendants(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse().ok());
        if let (Some(state), Some(ppid)) = (state, ppid) {
            if state != "Z" && state != "X" {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// `DELETE /session/<id>` over a plain blocking socket (see [`Browser`]'s Drop), with
/// timeouts so a hung chromedriver cannot hang the test.
fn delete_session(port: u16, session_id: &str) -> std::io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        stream,
        "DELETE /session/{session_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    // chromedriver answers once Chromium has quit. It keeps the connection open despite
    // `Connection: close`, so read just the head and the Content-Length body.
    let mut reply = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        reply.extend_from_slice(&chunk[..n]);
        let Some(head_end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&reply[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if reply.len() >= head_end + 4 + length {
            return Ok(());
        }
    }
}

/// One WebDriver command; returns the reply's `value`, or a [`ProtocolError`].
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}: no answer from chromedriver"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("{method} {url}: reading chromedriver's answer"))?;
    let reply: Value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{method} {url}: HTTP {status} with a non-JSON body: {:?}",
            prefix(&String::from_utf8_lossy(&bytes), 300)
        )
    })?;
    let value = match reply {
        Value::Object(mut map) => map.remove("value").unwrap_or(Value::Null),
        other => bail!("{method} {url}: HTTP {status} with an unexpected body: {other}"),
    };
    if status.is_success() {
        return Ok(value);
    }
    let code = value.get("error").and_then(Value::as_str);
    let message = value.get("message").and_then(Value::as_str).unwrap_or("");
    let Some(code) = code else {
        bail!("{method} {url}: HTTP {status}: {value}");
    };
    // chromedriver appends "(Session info: chrome=...)" and more on further lines.
    let message = message.lines().next().unwrap_or("").trim().to_string();
    Err(ProtocolError {
        code: code.to_string(),
        message,
    }
    .into())
}

fn by_css(css: &str) -> Value {
    json!({ "using": "css selector", "value": css })
}

fn element_from(found: &Value, css: &str) -> anyhow::Result<Element> {
    let id = found
        .get(ELEMENT_KEY)
        .and_then(Value::as_str)
        .with_context(|| format!("chromedriver answered a non-element for `{css}`: {found}"))?;
    Ok(Element {
        id: id.to_string(),
        css: css.to_string(),
    })
}

/// `value` escaped for a double-quoted CSS string.
fn css_string(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The first `max` characters of `text`.
fn prefix(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The WebDriver code point for a key name or single character.
fn key_code(name: &str) -> Option<String> {
    let code = match name {
        "Backspace" => '\u{E003}',
        "Tab" => '\u{E004}',
        "Enter" => '\u{E007}',
        "Shift" => '\u{E008}',
        "Control" => '\u{E009}',
        "Alt" => '\u{E00A}',
        "Escape" => '\u{E00C}',
        "Space" => ' ',
        "PageUp" => '\u{E00E}',
        "PageDown" => '\u{E00F}',
        "End" => '\u{E010}',
        "Home" => '\u{E011}',
        "ArrowLeft" => '\u{E012}',
        "ArrowUp" => '\u{E013}',
        "ArrowRight" => '\u{E014}',
        "ArrowDown" => '\u{E015}',
        "Delete" => '\u{E017}',
        "Meta" => '\u{E03D}',
        _ => {
            let mut chars = name.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => c,
                _ => return None,
            }
        }
    };
    Some(code.to_string())
}
