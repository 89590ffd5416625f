//! `lifeboat-bench rpo`: the RPO continuous replication achieves while the guest writes
//! steadily. Every Lifeboat part is a real process of the release `lifeboat` binary: a
//! server, an agent, a folder vault, the test guest protected with a 5 s policy and a
//! second disk the guest churns. The RPO is what the server reports (`lifeboat --json
//! status`, age of the newest point), sampled every second. See README.md.

pub(crate) mod guest;
pub(crate) mod procs;
mod report;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use procs::Lifeboat;
pub use report::{table, Report};
use report::{AgentUsage, ChurnResult, RpoStats};

const VM: &str = "web";
const HOST: &str = "alpha";

pub struct Options {
    /// The measured period.
    pub seconds: u64,
    /// Churn before the measured period, so that it starts in steady state.
    pub warmup: u64,
    /// MiB the guest writes to vdb each second.
    pub churn_mib: u64,
    pub vdb_size: u64,
    pub policy: String,
    /// The `lifeboat-bench-rpo-<pid>` directory to work in.
    pub work: PathBuf,
    pub lifeboat: PathBuf,
}

/// The sync interval of a built-in policy (crates/lifeboat-server/src/policy.rs); the
/// CLI has no command that lists policies.
pub fn policy_interval(policy: &str) -> Result<u64> {
    Ok(match policy {
        "frequent" => 5,
        "default" => 30,
        "hourly" => 3600,
        other => bail!("unknown policy {other:?}: frequent, default or hourly"),
    })
}

/// One `lifeboat --json status` reading of the VM's protection.
#[derive(Debug)]
struct Sample {
    rpo: Option<f64>,
    state: String,
    syncs: i64,
    last_sync_secs: f64,
}

async fn sample(lb: &Lifeboat) -> Result<Sample> {
    let status = lb.client_json(&["status"]).await?;
    let p = status["protections"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["vm"] == VM))
        .ok_or_else(|| anyhow!("`lifeboat --json status` lists no protection of {VM}: {status}"))?;
    Ok(Sample {
        rpo: p["rpo_seconds"].as_f64(),
        state: p["state"].as_str().unwrap_or("?").to_string(),
        syncs: p["syncs_committed"].as_i64().unwrap_or(0),
        last_sync_secs: p["last_sync_seconds"].as_f64().unwrap_or(0.0),
    })
}

/// The VM's recovery points (`lifeboat --json points`).
async fn points(lb: &Lifeboat) -> Result<Vec<Value>> {
    let v = lb.client_json(&["points", VM]).await?;
    v.as_array()
        .cloned()
        .ok_or_else(|| anyhow!("`lifeboat --json points {VM}` is not an array: {v}"))
}

fn step(what: &str) {
    eprintln!("[rpo] {what}");
}

pub async fn run(opts: &Options) -> Result<Report> {
    let interval_secs = policy_interval(&opts.policy)?;
    if !opts.lifeboat.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p lifeboat` (or pass --lifeboat)",
            opts.lifeboat.display()
        );
    }
    let disk_mib = opts.vdb_size >> 20;
    let work = &opts.work;
    let mut lb = Lifeboat {
        bin: opts.lifeboat.clone(),
        client_home: work.join("client"),
        server: None,
    };
    std::fs::create_dir_all(&lb.client_home)?;

    let vault = format!("file://{}", work.join("vault").display());
    let mut c = lb.on_home(&lb.client_home);
    c.args(["vault", "--vault", &vault, "init"]);
    procs::run_ok(c).context("lifeboat vault init")?;

    // Declared in this order so that they drop in the reverse one: the VM is killed
    // first (its agent may be cutting it), then the agent, then the server. Drop runs
    // on every early return and on a panic, so nothing outlives the bench.
    step("starting the server and the agent");
    let mut server = procs::start_server(&lb, &work.join("server"), &work.join("server.log"))?;
    lb.server = Some((server.url.clone(), server.token.clone()));
    let agent_home = work.join("agent");
    let mut agent = procs::start_agent(&lb, &agent_home, HOST, &work.join("agent.log"))?;
    lb.enroll(&agent.address, &agent.code, &agent.fingerprint)
        .await
        .context("enroll the agent")?;

    step("booting the guest");
    let mut vm = guest::boot(&lb, &agent_home, VM, opts.vdb_size).await?;
    let churn = vm.prepare_churn(opts.churn_mib, disk_mib).await?;
    step(&format!(
        "guest up; churn buffer filled in {:.1} s; protecting {VM} (policy {})",
        churn.buffer_secs, opts.policy
    ));
    // Protected before the churn starts: the measured period is about steady-state
    // incremental syncs, not the initial full one.
    lb.client_ok(&[
        "protect",
        VM,
        "--vault",
        &vault,
        "--recovery-host",
        HOST,
        "--policy",
        &opts.policy,
        "--wait",
        "--timeout",
        "10m",
    ])
    .await
    .context("protect")?;
    vm.start_churn(&churn, disk_mib).await?;
    step(&format!(
        "churning {} MiB/s; warm-up {} s, then {} s measured",
        opts.churn_mib, opts.warmup, opts.seconds
    ));
    tokio::time::sleep(Duration::from_secs(opts.warmup)).await;

    let agent_pid = agent.daemon.pid();
    let before: HashSet<String> = points(&lb)
        .await?
        .iter()
        .filter_map(|p| p["point"].as_str().map(str::to_string))
        .collect();
    let syncs_at_start = sample(&lb).await?.syncs;
    let mut syncs_seen = syncs_at_start;
    let (written0, _) = vm.vdb_written().await?;
    let churn_t0 = Instant::now();
    let cpu0 = procs::cpu_seconds(agent_pid)?;
    let t0 = Instant::now();

    let mut rpos = Vec::new();
    let mut syncs = Vec::new();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut no_rpo = 0;
    let mut failures = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // A slow status command delays the next sample instead of bunching two together.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = t0 + Duration::from_secs(opts.seconds);
    let mut last_report = t0;
    while Instant::now() < end {
        tick.tick().await;
        let s = match sample(&lb).await {
            Ok(s) => s,
            Err(e) => {
                // One failed poll is a gap in the samples; several in a row mean the
                // server is gone and the rest would measure nothing.
                failures += 1;
                eprintln!("[rpo] status failed: {e:#}");
                server.daemon.check_alive("lifeboat server")?;
                if failures >= 5 {
                    return Err(e.context("5 status polls in a row failed"));
                }
                continue;
            }
        };
        failures = 0;
        match s.rpo {
            Some(r) => rpos.push(r),
            None => no_rpo += 1,
        }
        *states.entry(s.state.clone()).or_default() += 1;
        // A new commit since the last sample: its duration is `last_sync_seconds`.
        // (Two commits within one second would show only the second; with syncs that
        // start at least 5 s apart that does not happen.)
        if s.syncs > syncs_seen {
            syncs.push(s.last_sync_secs);
            syncs_seen = s.syncs;
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            step(&format!(
                "{:.0} s: RPO {:.1} s, {} syncs so far, the last took {:.1} s, {}",
                t0.elapsed().as_secs_f64(),
                s.rpo.unwrap_or(f64::NAN),
                syncs_seen - syncs_at_start,
                s.last_sync_secs,
                s.state
            ));
        }
    }
    agent.daemon.check_alive("lifeboat agent")?;
    server.daemon.check_alive("lifeboat server")?;
    let cpu1 = procs::cpu_seconds(agent_pid)?;
    let measured_secs = t0.elapsed().as_secs_f64();
    let (written1, churn_failed) = vm.vdb_written().await?;
    let churn_secs = churn_t0.elapsed().as_secs_f64();
    let peak_rss = procs::status_kb(agent_pid, "VmHWM")?;
    let rss_at_end = procs::status_kb(agent_pid, "VmRSS")?;
    let after = points(&lb).await?;
    vm.stop_churn().await?;

    let new: Vec<&Value> = after
        .iter()
        .filter(|p| p["point"].as_str().is_some_and(|id| !before.contains(id)))
        .collect();
    let sum = |field: &str| -> u64 { new.iter().filter_map(|p| p[field].as_u64()).sum() };
    let mut point_kinds: BTreeMap<String, usize> = BTreeMap::new();
    for p in &new {
        let kind = format!(
            "{}/{}",
            p["kind"].as_str().unwrap_or("?"),
            p["consistency"].as_str().unwrap_or("?")
        );
        *point_kinds.entry(kind).or_default() += 1;
    }
    let bytes_written = written1.saturating_sub(written0);
    let achieved = bytes_written as f64 / (1u64 << 20) as f64 / churn_secs;
    let mut notes = Vec::new();
    if achieved < 0.9 * opts.churn_mib as f64 {
        notes.push(format!(
            "the guest wrote {achieved:.1} MiB/s, short of the {} MiB/s asked: under TCG its \
             vCPU, QEMU's block layer and the agent share this machine's {} cores",
            opts.churn_mib,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ));
    }
    if churn_failed {
        notes.push("a churn write failed in the guest (/tmp/churn.err)".into());
    }
    if no_rpo > 0 {
        notes.push(format!("{no_rpo} sample(s) had no RPO (no point yet)"));
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    Ok(Report {
        policy: opts.policy.clone(),
        interval_secs,
        measured_secs,
        churn: ChurnResult {
            target_mib_per_s: opts.churn_mib as f64,
            achieved_mib_per_s: achieved,
            bytes_written,
            secs: churn_secs,
            buffer_fill_secs: churn.buffer_secs,
        },
        rpo: RpoStats::of(&rpos),
        points: new.len(),
        point_kinds,
        syncs: syncs_seen - syncs_at_start,
        mean_sync_secs: mean(&syncs),
        max_sync_secs: syncs.iter().copied().reduce(f64::max),
        bytes_read: sum("bytes_read"),
        bytes_stored: sum("new_bytes"),
        agent: AgentUsage {
            cpu_secs: cpu1 - cpu0,
            cpu_percent: 100.0 * (cpu1 - cpu0) / measured_secs,
            peak_rss,
            rss_at_end,
        },
        states,
        vdb_size: opts.vdb_size,
        notes,
    })
}
