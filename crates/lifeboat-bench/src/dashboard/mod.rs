//! `dashboard`: what the web dashboard costs as the fleet grows. For each fleet size a
//! real `lifeboat server` (release build, SQLite) starts on a database seeded with that
//! many protected VMs (`seed`); the bench logs in like a browser and measures each page's
//! latency and size, the live event stream's first message, and the server's CPU with
//! no page open and while ten pages hold their event streams open (the fragments are
//! redrawn every second), and its peak RSS.

mod report;
pub(crate) mod seed;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;

pub use report::{table, FleetResult, PageResult, Report};

use crate::rpo::procs::{self, cpu_seconds, start_server, status_kb, Lifeboat};

pub(crate) const PASSWORD: &str = "bench-dashboard-password";
/// Pages whose streams are held open while the server's CPU is measured.
pub const STREAMS: usize = 10;
/// How long they are held.
const STREAM_WINDOW: Duration = Duration::from_secs(10);

pub struct Options {
    pub vms: Vec<usize>,
    /// Timed requests per page.
    pub requests: usize,
    pub work: PathBuf,
    pub lifeboat: PathBuf,
}

pub async fn run(opts: &Options) -> Result<Report> {
    if !opts.lifeboat.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p lifeboat` (or pass --lifeboat)",
            opts.lifeboat.display()
        );
    }
    let mut fleets = Vec::new();
    for &vms in &opts.vms {
        let home = opts.work.join(format!("vms-{vms}"));
        let started = Instant::now();
        let seeded = seed::seed(&home, vms, PASSWORD).await?;
        let seed_secs = started.elapsed().as_secs_f64();
        let lb = Lifeboat {
            bin: opts.lifeboat.clone(),
            client_home: home.join("client"),
            server: None,
        };
        let server = start_server(&lb, &home, &home.join("server.log"))?;
        let result = measure(&server, &seeded, vms, opts.requests, seed_secs).await;
        drop(server);
        fleets.push(result?);
        eprintln!("measured {vms} VMs");
    }
    Ok(Report {
        requests: opts.requests,
        streams: STREAMS,
        fleets,
    })
}

/// `name=value` of the cookie `resp` sets under `name`.
fn cookie_named(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|c| c.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
        .map(str::to_string)
}

/// Logs in as the login form does; returns the session cookie.
pub(crate) async fn log_in(http: &reqwest::Client, url: &str) -> Result<String> {
    let page = http.get(format!("{url}/login")).send().await?;
    let cookie = cookie_named(&page, "lifeboat_login_csrf").context("no login CSRF cookie")?;
    // The double-submit token is the cookie's own value.
    let csrf = cookie
        .split_once('=')
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let resp = http
        .post(format!("{url}/login"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user=admin&password={PASSWORD}&csrf={csrf}&next=/"))
        .send()
        .await?;
    cookie_named(&resp, "lifeboat_session").context("the login made no session")
}

/// Each page's latency over `requests` requests, one at a time, after three that warm
/// the server's caches and connections.
pub(crate) async fn time_pages(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    paths: &[&str],
    requests: usize,
) -> Result<Vec<PageResult>> {
    let mut pages = Vec::new();
    for path in paths {
        let url = format!("{base}{path}");
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        for i in 0..requests + 3 {
            let t = Instant::now();
            let resp = http.get(&url).header("cookie", cookie).send().await?;
            if !resp.status().is_success() {
                bail!("GET {path}: HTTP {}", resp.status());
            }
            bytes = resp.bytes().await?.len();
            if i >= 3 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        pages.push(PageResult::new(path, times, bytes));
    }
    Ok(pages)
}

async fn measure(
    server: &procs::Server,
    seeded: &seed::Seeded,
    vms: usize,
    requests: usize,
    seed_secs: f64,
) -> Result<FleetResult> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // Below the server's 15 s idle close, so no request races it.
        .pool_idle_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let cookie = log_in(&http, &server.url).await?;
    let paths = [
        "/",
        "/operations",
        "/vaults",
        "/recovery-site",
        &seeded.chart_page,
    ];
    let pages = time_pages(&http, &server.url, &cookie, &paths, requests).await?;
    // The event stream: its first message holds every live fragment.
    let t = Instant::now();
    let resp = http
        .get(format!("{}/events", server.url))
        .header("cookie", &cookie)
        .send()
        .await?;
    let mut body = resp.bytes_stream();
    let mut first = Vec::new();
    while !first.windows(2).any(|w| w == b"\n\n") {
        match body.next().await {
            Some(chunk) => first.extend_from_slice(&chunk?),
            None => bail!("the event stream ended"),
        }
    }
    let first_event_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(body);
    // The server with no page open (its reconciler walking the fleet), then with ten
    // open pages: their difference is what the live stream costs.
    let pid = server.daemon.pid();
    let cpu_before = cpu_seconds(pid)?;
    let window = Instant::now();
    tokio::time::sleep(STREAM_WINDOW).await;
    let idle_cpu_percent =
        100.0 * (cpu_seconds(pid)? - cpu_before) / window.elapsed().as_secs_f64();
    let cpu_before = cpu_seconds(pid)?;
    let window = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let resp = http
            .get(format!("{}/events", server.url))
            .header("cookie", &cookie)
            .send()
            .await?;
        streams.push(tokio::spawn(async move {
            let mut s = resp.bytes_stream();
            while let Some(Ok(_)) = s.next().await {}
        }));
    }
    tokio::time::sleep(STREAM_WINDOW).await;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let elapsed = window.elapsed().as_secs_f64();
    for s in streams {
        s.abort();
    }
    Ok(FleetResult {
        vms,
        seed_secs,
        pages,
        first_event_ms,
        first_event_bytes: first.len(),
        idle_cpu_percent,
        streams_cpu_percent: 100.0 * cpu / elapsed,
        peak_rss: status_kb(pid, "VmHWM")?,
    })
}
