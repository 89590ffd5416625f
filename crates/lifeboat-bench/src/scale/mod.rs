//! `scale`: what the control plane costs as the fleet grows, with replication running.
//! For each fleet size a real `lifeboat server` (release build; SQLite, or PostgreSQL with
//! `--postgres`) starts on a database seeded with that many protected VMs, whose hosts are
//! simulated agents (`agents`: this benchmark only) that answer every sync at once. The
//! bench measures the server's CPU with no page open while its scheduler runs every VM on
//! its policy, the syncs it drove, each page's latency, and its peak RSS.

mod agents;
mod report;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::dashboard::seed::{seed_into, Spec};
use crate::dashboard::{log_in, time_pages, PASSWORD};
use crate::rpo::procs::{cpu_seconds, start_server_on, status_kb, Lifeboat};
pub use report::{table, Report, ScaleResult};

/// VMs per simulated host.
const VMS_PER_HOST: usize = 50;
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
        let spec_hosts = vms.div_ceil(VMS_PER_HOST).max(2);
        let agents = agents::start(&home.join("agent"), spec_hosts).await?;
        let (url, database) = match &opts.postgres {
            Some(base) => (lifeboat_testkit::new_postgres_database(base)?, "PostgreSQL"),
            None => (
                format!("sqlite://{}", home.join("server/lifeboat.db").display()),
                "SQLite",
            ),
        };
        let addresses = agents.addresses.clone();
        let spec = Spec {
            vms_per_host: VMS_PER_HOST,
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
        let status = "/api/v1/status".to_string();
        let paths = [
            "/",
            "/operations",
            "/vaults",
            "/recovery-site",
            &seeded.chart_page,
            &status,
        ];
        let pages = time_pages(&http, &server.url, &cookie, &paths, opts.requests).await?;
        fleets.push(ScaleResult {
            vms,
            database: database.into(),
            hosts: spec_hosts,
            seed_secs,
            window_secs: secs,
            cpu_percent: 100.0 * cpu / secs,
            syncs_per_sec: syncs as f64 / secs,
            agent_requests_per_sec: agent_requests as f64 / secs,
            cpu_ms_per_sync: if syncs > 0 {
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
