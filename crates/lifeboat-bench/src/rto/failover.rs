//! One measured test failover: `lifeboat failover web --test`, then, at once and side by
//! side, the copy's HTTP port polled every 100 ms (the RTO) and `failover list` sampled
//! every second until it reports the copy hydrated; beta's agent's CPU time and peak RSS
//! around it; then `failover cleanup web`.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde_json::Value;

use super::cluster::{Cluster, COPY, VM};
use super::report::AgentUsage;
use crate::rpo::procs::{cpu_seconds, status_kb, Lifeboat};

/// How often the copy's HTTP port is tried.
const HTTP_POLL: Duration = Duration::from_millis(100);
/// One try's limit: a guest that accepted the connection answers well within this.
const HTTP_TRY: Duration = Duration::from_secs(5);
/// `failover list` polls that may fail in a row before the run is given up.
const LIST_FAILURES: u32 = 5;

/// A `failover list` reading of the copy, seconds after the failover was issued.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub secs: f64,
    pub hydrated_bytes: u64,
    pub hydration_total: u64,
}

#[derive(Debug, Serialize)]
pub struct RunResult {
    /// Seconds `lifeboat failover web --test` took to answer.
    pub failover_cmd_secs: f64,
    /// Seconds from issuing the failover to the copy's first HTTP 200.
    pub rto_secs: f64,
    /// What the copy answered (its /boot-count).
    pub http_body: String,
    /// Seconds from issuing the failover until `failover list` said hydrated (the
    /// server's watcher refreshes it every 2 s, so this runs up to ~3 s late).
    pub hydration_secs: f64,
    /// The same end as beta's agent recorded it (the mtime of its recovery record when it
    /// wrote `hydrated: true`; the agent looks every 1 s), when found.
    pub agent_hydration_secs: Option<f64>,
    /// Bytes hydrated: every disk's size (vda and vdb), as `failover list` reports it.
    pub hydration_total: u64,
    /// `hydration_total` / `hydration_secs`.
    pub hydration_bytes_per_sec: f64,
    /// The copying rate alone: the slope of `hydrated_bytes` between the first and the
    /// last sample that saw it moving.
    pub stream_bytes_per_sec: Option<f64>,
    pub agent: AgentUsage,
    /// Seconds `failover cleanup web` took.
    pub cleanup_secs: f64,
    /// This machine's 1-minute load average just before the failover: other work that
    /// shared its cores with the run.
    pub load_before: f64,
    /// Errors `failover list` reported for the copy during the run (retried by Lifeboat).
    pub errors: Vec<String>,
    pub samples: Vec<Progress>,
}

/// Drops the page cache (after `sync`), so the copy reads the vault from disk, as it
/// would from a NAS or S3 after a disaster. False when not permitted (not root).
pub fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0).
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The 1-minute load average (/proc/loadavg), NaN when unreadable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The copy's row of `lifeboat --json failover list`, if it is there.
async fn copy_row(lb: &Lifeboat) -> Result<Option<Value>> {
    let all = lb.client_json(&["failover", "list"]).await?;
    let all = all
        .as_array()
        .ok_or_else(|| anyhow!("`failover list` is not an array: {all}"))?;
    Ok(all.iter().find(|r| r["vm"] == COPY).cloned())
}

/// Tries the copy's HTTP port every `HTTP_POLL` until it answers 200; its body. A try
/// does not wait for the one before: while the guest's network is not up, QEMU's
/// user-net may hold a connection for seconds, and waiting for it would add that to
/// the RTO.
async fn wait_answer(port: u16, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    let mut tick = tokio::time::interval(HTTP_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tries = FuturesUnordered::new();
    let mut last = String::from("no try yet");
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= deadline {
                    bail!("the copy's port {port} gave no HTTP 200 within {limit:?}; last: {last}");
                }
                tries.push(lifeboat_testkit::http_get(port, "/boot-count", HTTP_TRY));
            }
            Some(answer) = tries.next(), if !tries.is_empty() => match answer {
                Ok((200, body)) => return Ok(String::from_utf8_lossy(&body).trim().to_string()),
                Ok((code, body)) => {
                    last = format!("status {code}: {}", String::from_utf8_lossy(&body));
                }
                Err(e) => last = format!("{e:#}"),
            },
        }
    }
}

/// Samples `failover list` every second until the copy is hydrated; the samples, the
/// errors seen, and the seconds from `t0` to the sample that said hydrated.
async fn follow_hydration(
    lb: &Lifeboat,
    t0: Instant,
    limit: Duration,
) -> Result<(Vec<Progress>, Vec<String>, f64)> {
    let mut samples: Vec<Progress> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut failures = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if t0.elapsed() > limit {
            let last = samples.last().map_or(0, |p| p.hydrated_bytes);
            bail!("{COPY} not hydrated after {limit:?} ({last} bytes so far); errors: {errors:?}");
        }
        let row = match copy_row(lb).await {
            Ok(Some(row)) => row,
            Ok(None) => bail!("`failover list` lost {COPY} while it hydrated"),
            Err(e) => {
                failures += 1;
                eprintln!("[rto] failover list failed: {e:#}");
                if failures >= LIST_FAILURES {
                    return Err(e.context("5 `failover list` polls in a row failed"));
                }
                continue;
            }
        };
        failures = 0;
        let secs = t0.elapsed().as_secs_f64();
        let error = row["error"].as_str().unwrap_or_default();
        if !error.is_empty() && errors.last().map(String::as_str) != Some(error) {
            eprintln!("[rto] {secs:.1} s: {COPY}: {error}");
            errors.push(error.to_string());
        }
        let p = Progress {
            secs,
            hydrated_bytes: row["hydrated_bytes"].as_u64().unwrap_or(0),
            hydration_total: row["hydration_total"].as_u64().unwrap_or(0),
        };
        let hydrated = row["hydrated"] == true;
        if samples.len() % 15 == 14 && !hydrated {
            eprintln!(
                "[rto] {secs:.0} s: hydrated {} of {} MiB",
                p.hydrated_bytes >> 20,
                p.hydration_total >> 20
            );
        }
        samples.push(p);
        if hydrated {
            return Ok((samples, errors, secs));
        }
    }
}

/// When beta's agent recorded the copy hydrated, as seconds after `wall0`.
fn agent_hydrated_at(beta_home: &Path, wall0: SystemTime) -> Option<f64> {
    let dir = beta_home.join("agent").join("recoveries");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let record: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
        if record["vm"] != COPY || record["hydrated"] != true {
            return None;
        }
        let mtime = e.metadata().ok()?.modified().ok()?;
        Some(mtime.duration_since(wall0).ok()?.as_secs_f64())
    })
}

/// The slope of `hydrated_bytes` between the first and the last sample that saw it
/// part-way, bytes/s; none from fewer than three distinct readings (the server refreshes
/// them every 2 s, so two readings could be one apart in time or two).
pub fn stream_rate(samples: &[Progress]) -> Option<f64> {
    let mut moving: Vec<&Progress> = samples
        .iter()
        .filter(|p| p.hydrated_bytes > 0 && p.hydrated_bytes < p.hydration_total)
        .collect();
    moving.dedup_by_key(|p| p.hydrated_bytes);
    if moving.len() < 3 {
        return None;
    }
    let (first, last) = (moving.first()?, moving.last()?);
    let dt = last.secs - first.secs;
    (dt > 0.0).then(|| (last.hydrated_bytes - first.hydrated_bytes) as f64 / dt)
}

/// One test failover of `web` to beta, measured, then cleaned up.
pub async fn measure(
    cl: &Cluster,
    rto_limit: Duration,
    hydration_limit: Duration,
) -> Result<RunResult> {
    let lb = &cl.lb;
    if let Some(row) = copy_row(lb).await? {
        bail!("a test copy of {VM} is there before the run: {row}");
    }
    let load_before = load_average();
    let pid = cl.beta.daemon.pid();
    let hwm_reset = reset_peak_rss(pid);
    let cpu0 = cpu_seconds(pid)?;
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    let r = lb
        .client_json(&["failover", VM, "--test"])
        .await
        .context("lifeboat failover web --test")?;
    let failover_cmd_secs = t0.elapsed().as_secs_f64();
    let forwards: Vec<Value> = r["forwards"]
        .as_array()
        .cloned()
        .with_context(|| format!("the failover's forwards: {r}"))?;
    let port = forwards
        .iter()
        .find(|f| f["guest_port"] == 80)
        .and_then(|f| f["host_port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| anyhow!("the failover answered no host port for guest port 80: {r}"))?;
    let (http_body, rto_secs, (samples, errors, hydration_secs)) = tokio::try_join!(
        async {
            let body = wait_answer(port, rto_limit).await?;
            let secs = t0.elapsed().as_secs_f64();
            eprintln!("[rto] {COPY} answered HTTP after {secs:.2} s (boot count {body})");
            anyhow::Ok((body, secs))
        },
        follow_hydration(lb, t0, hydration_limit),
    )
    .map(|((body, rto), h)| (body, rto, h))?;
    let cpu1 = cpu_seconds(pid)?;
    let window_secs = t0.elapsed().as_secs_f64();
    let peak_rss = status_kb(pid, "VmHWM")?;
    let rss_at_end = status_kb(pid, "VmRSS")?;
    let agent_hydration_secs = agent_hydrated_at(&cl.beta_home, wall0);
    let hydration_total = samples.last().map_or(0, |p| p.hydration_total);

    let t1 = Instant::now();
    lb.client_json(&["failover", "cleanup", VM])
        .await
        .context("lifeboat failover cleanup web")?;
    let cleanup_secs = t1.elapsed().as_secs_f64();
    if let Some(row) = copy_row(lb).await? {
        bail!("`failover cleanup` left {COPY} in `failover list`: {row}");
    }
    Ok(RunResult {
        failover_cmd_secs,
        rto_secs,
        http_body,
        hydration_secs,
        agent_hydration_secs,
        hydration_total,
        hydration_bytes_per_sec: hydration_total as f64 / hydration_secs,
        stream_bytes_per_sec: stream_rate(&samples),
        agent: AgentUsage {
            cpu_secs: cpu1 - cpu0,
            cpu_percent: 100.0 * (cpu1 - cpu0) / window_secs,
            window_secs,
            peak_rss,
            rss_at_end,
            peak_since_failover: hwm_reset,
        },
        cleanup_secs,
        load_before,
        errors,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(secs: f64, done: u64) -> Progress {
        Progress {
            secs,
            hydrated_bytes: done,
            hydration_total: 100,
        }
    }

    #[test]
    fn stream_rate_uses_the_moving_samples_only() {
        let s = [p(1.0, 0), p(2.0, 10), p(3.0, 30), p(4.0, 50), p(5.0, 100)];
        assert_eq!(stream_rate(&s), Some(20.0));
        // A repeated reading is the server's stale view, not a stall: its first time counts.
        let s = [p(1.0, 10), p(2.0, 10), p(3.0, 30), p(4.0, 30), p(5.0, 50)];
        assert_eq!(stream_rate(&s), Some(10.0));
        assert_eq!(
            stream_rate(&[p(1.0, 0), p(2.0, 10), p(3.0, 20), p(4.0, 100)]),
            None
        );
        assert_eq!(stream_rate(&[]), None);
    }
}
