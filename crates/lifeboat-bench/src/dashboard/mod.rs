//! `dashboard`: what the web dashboard costs as the fleet grows. For each fleet size a
//! real `lifeboat server` (release build, SQLite) starts on a database seeded with that
//! many protected VMs (`seed`); the bench logs in like a browser and measures each page's
//! latency and size, the live event stream's first message, and the server's CPU with
//! no page open and while ten pages hold their event streams open (the fragments are
//! redrawn every second), and its peak RSS.

mod report;
mod seed;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;

pub use report::{table, FleetResult, PageResult, Report};

const PASSWORD: &str = "bench-dashboard-password";
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

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        let seeded = seed::seed(&home, vms).await?;
        let seed_secs = started.elapsed().as_secs_f64();
        let server = start(&opts.lifeboat, &home)?;
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

fn start(lifeboat: &std::path::Path, home: &std::path::Path) -> Result<Server> {
    let mut child = Command::new(lifeboat)
        .arg("--home")
        .arg(home)
        .args(["server", "--listen", "127.0.0.1:0", "--insecure-http"])
        .env("LIFEBOAT_ADMIN_PASSWORD", PASSWORD)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", lifeboat.display()))?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let mut url = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(u) = line.strip_prefix("API on ") {
            url = Some(u.to_string());
        }
        if line == "Ready" {
            break;
        }
    }
    let url = url.context("the server printed no address")?;
    Ok(Server { child, url })
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
async fn log_in(http: &reqwest::Client, url: &str) -> Result<String> {
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

async fn measure(
    server: &Server,
    seeded: &seed::Seeded,
    vms: usize,
    requests: usize,
    seed_secs: f64,
) -> Result<FleetResult> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = log_in(&http, &server.url).await?;
    let mut pages = Vec::new();
    for path in [
        "/",
        "/operations",
        "/vaults",
        "/recovery-site",
        &seeded.chart_page,
    ] {
        let url = format!("{}{path}", server.url);
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        for i in 0..requests + 3 {
            let t = Instant::now();
            let resp = http.get(&url).header("cookie", &cookie).send().await?;
            if !resp.status().is_success() {
                bail!("GET {path}: HTTP {}", resp.status());
            }
            bytes = resp.bytes().await?.len();
            // The first three warm the server's caches and connections.
            if i >= 3 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        pages.push(PageResult::new(path, times, bytes));
    }
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
    let pid = server.child.id();
    let cpu_before = cpu_secs(pid)?;
    let window = Instant::now();
    tokio::time::sleep(STREAM_WINDOW).await;
    let idle_cpu_percent = 100.0 * (cpu_secs(pid)? - cpu_before) / window.elapsed().as_secs_f64();
    let cpu_before = cpu_secs(pid)?;
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
    let cpu = cpu_secs(pid)? - cpu_before;
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
        peak_rss: peak_rss(pid),
    })
}

/// User + system CPU seconds of `pid`, from /proc.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
