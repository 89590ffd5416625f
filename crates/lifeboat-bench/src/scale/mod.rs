//! `scale`: what the control plane costs as the fleet grows, with replication running.
//! For each fleet size a real `lifeboat server` (release build; SQLite, or PostgreSQL with
//! `--postgres`) starts on a database seeded with that many protected VMs, whose hosts are
//! simulated agents (`agents`: this benchmark only) that list the VMs seeded on their
//! host and answer every sync at once. The bench measures the server's CPU with no page
//! open while its scheduler runs every VM on its policy, the syncs it drove, the latency
//! of each dashboard page and API list ([`timed`]), and its peak RSS.

mod agents;
mod report;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::dashboard::seed::{seed_into, Layout, Seeded, Spec};
use crate::dashboard::{log_in, time_pages, PASSWORD};
use crate::rpo::procs::{cpu_seconds, start_server_on, status_kb, Lifeboat};
pub use report::{table, Report, ScaleResult, Timed};

/// VMs per simulated host.
const VMS_PER_HOST: usize = 50;
/// Fewer syncs in the window give no CPU-per-sync figure: the scheduler's and the host
/// checks' own cost would all be put on those few.
const MIN_SYNCS: u64 = 10;
/// How long the scheduler settles after the server starts (its first round over the
/// fleet) before anything is measured.
const SETTLE: Duration = Duration::from_secs(20);

pub struct Options {
    pub vms: Vec<usize>,
    pub requests: usize,
    /// The policy every VM has (`hourly`: the scheduler's cost alone; `default`: a sync
    /// every 30 s per VM).
    pub policy: String,
    /// How long the server's CPU is measured.
    pub window: Duration,
    /// A PostgreSQL URL of a role that may create databases: each fleet gets a database
    /// of its own there. SQLite when absent.
    pub postgres: Option<String>,
    pub work: PathBuf,
    pub lifeboat: PathBuf,
}

/// What is timed, with the name the report gives it: every dashboard page whose content
/// grows with the fleet, a VM's page, and the API's lists (their first page).
fn timed(seeded: &Seeded) -> Vec<(&'static str, String)> {
    [
        ("overview", "/"),
        ("Hosts & VMs", "/hosts"),
        ("operations", "/operations"),
        ("vaults", "/vaults"),
        ("recovery site", "/recovery-site"),
        ("a VM's page (24 h chart)", seeded.chart_page.as_str()),
        ("GET /api/v1/status", "/api/v1/status"),
        ("GET /api/v1/hosts", "/api/v1/hosts"),
        ("GET /api/v1/vms", "/api/v1/vms"),
        ("GET /api/v1/protections", "/api/v1/protections"),
        ("GET /api/v1/operations", "/api/v1/operations"),
    ]
    .into_iter()
    .map(|(name, path)| (name, path.to_string()))
    .collect()
}

/// That the server sees the fleet as it was seeded: every host greeted, up, of the
/// server's release line, and the first page of `GET /api/v1/vms` full of VMs the agents
/// listed. Otherwise the pages would be timed on a fleet that is not the one described.
async fn check_fleet(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    layout: Layout,
) -> Result<()> {
    use lifeboat_server::api::{page::Page, HostRow, VmList};
    let get = |path: &str| {
        http.get(format!("{url}{path}"))
            .header("cookie", cookie)
            .send()
    };
    let hosts: Vec<HostRow> = get("/api/v1/hosts")
        .await?
        .error_for_status()?
        .json()
        .await?;
    for h in &hosts {
        match &h.health {
            Some(health) if health.up && health.version_skew.is_none() => {}
            other => bail!(
                "the server does not see simulated host {} as a healthy agent: {other:?}",
                h.host.hostname
            ),
        }
    }
    let list: VmList = get("/api/v1/vms").await?.error_for_status()?.json().await?;
    let expected = layout.vms.min(Page::DEFAULT_LIMIT);
    if !list.unreachable.is_empty() || list.vms.len() != expected {
        bail!(
            "GET /api/v1/vms lists {} VMs (expected {expected}), unreachable: {:?}",
            list.vms.len(),
            list.unreachable
        );
    }
    Ok(())
}

pub async fn run(opts: &Options) -> Result<Report> {
    if !opts.lifeboat.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p lifeboat` (or pass --lifeboat)",
            opts.lifeboat.display()
        );
    }
    if lifeboat_server::policy::Policy::find(&opts.policy).is_none() {
        bail!(
            "no policy {}; the policies are: {}",
            opts.policy,
            lifeboat_server::policy::Policy::names()
        );
    }
    let mut fleets = Vec::new();
    for &vms in &opts.vms {
        let home = opts.work.join(format!("vms-{vms}"));
        std::fs::create_dir_all(home.join("server"))?;
        let layout = Layout {
            vms,
            per_host: VMS_PER_HOST,
        };
        let agents = agents::start(&home.join("agent"), layout).await?;
        let (url, database) = match &opts.postgres {
            Some(base) => (lifeboat_testkit::new_postgres_database(base)?, "PostgreSQL"),
            None => (
                format!("sqlite://{}", home.join("server/lifeboat.db").display()),
                "SQLite",
            ),
        };
        let addresses = agents.addresses.clone();
        let spec = Spec {
            vms_per_host: layout.per_host,
            agent: Box::new(move |h| addresses.get(h).cloned()),
            fingerprint: agents.fingerprint.clone(),
            state: lifeboat_server::db::ProtectionState::Protected,
            policy: opts.policy.clone(),
        };
        let started = Instant::now();
        let seeded = seed_into(&url, vms, PASSWORD, &spec).await?;
        let seed_secs = started.elapsed().as_secs_f64();
        let lb = Lifeboat {
            bin: opts.lifeboat.clone(),
            client_home: home.join("client"),
            server: None,
        };
        let database_arg = opts.postgres.as_ref().map(|_| url.as_str());
        let server = start_server_on(&lb, &home, &home.join("server.log"), database_arg)?;
        tokio::time::sleep(SETTLE).await;
        let pid = server.daemon.pid();
        // No page open: the scheduler alone, every VM on its policy.
        let (cpu0, syncs0, requests0) = (
            cpu_seconds(pid)?,
            agents.counts.syncs.load(Ordering::Relaxed),
            agents.counts.requests.load(Ordering::Relaxed),
        );
        let t = Instant::now();
        tokio::time::sleep(opts.window).await;
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid)? - cpu0;
        let syncs = agents.counts.syncs.load(Ordering::Relaxed) - syncs0;
        let agent_requests = agents.counts.requests.load(Ordering::Relaxed) - requests0;
        // Pages, one request at a time, while the scheduler goes on.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(10))
            .build()?;
        let cookie = log_in(&http, &server.url).await?;
        check_fleet(&http, &server.url, &cookie, layout).await?;
        let timed = timed(&seeded);
        let paths: Vec<&str> = timed.iter().map(|(_, path)| path.as_str()).collect();
        let pages = time_pages(&http, &server.url, &cookie, &paths, opts.requests).await?;
        let pages = timed
            .iter()
            .zip(pages)
            .map(|((name, _), page)| Timed {
                name: name.to_string(),
                page,
            })
            .collect();
        let unanswered = agents.counts.unanswered();
        if !unanswered.is_empty() {
            eprintln!(
                "warning: the simulated agents did not answer {}",
                unanswered.join(", ")
            );
        }
        fleets.push(ScaleResult {
            vms,
            database: database.into(),
            hosts: layout.hosts(),
            inventories: agents.counts.inventories.load(Ordering::Relaxed),
            unanswered,
            seed_secs,
            window_secs: secs,
            cpu_percent: 100.0 * cpu / secs,
            syncs_per_sec: syncs as f64 / secs,
            agent_requests_per_sec: agent_requests as f64 / secs,
            cpu_ms_per_sync: if syncs >= MIN_SYNCS {
                1000.0 * cpu / syncs as f64
            } else {
                f64::NAN
            },
            pages,
            peak_rss: status_kb(pid, "VmHWM")?,
        });
        drop(server);
        drop(agents);
        eprintln!("measured {vms} VMs");
    }
    Ok(Report {
        policy: opts.policy.clone(),
        requests: opts.requests,
        fleets,
    })
}
