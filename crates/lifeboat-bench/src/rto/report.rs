//! The `rto` bench's output: a row per size and run (or JSON), the details of each run
//! below, then the targets as PASS/MISS — a report, not a test.

use serde::Serialize;

use super::failover::RunResult;
use crate::report::align;

const MIB: f64 = (1u64 << 20) as f64;
/// The largest size's RTO may be at most this many times the smallest's.
pub const FLAT_RATIO: f64 = 1.5;
/// The RTO every run should stay under on this machine (TCG boot included).
pub const RTO_TARGET_SECS: f64 = 20.0;

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    /// Whether the page cache was dropped before each failover.
    pub cache: String,
    pub sizes: Vec<SizeResult>,
    pub verdict: Verdict,
}

#[derive(Debug, Serialize)]
pub struct SizeResult {
    /// vdb's size, bytes (all of it data).
    pub vdb_size: u64,
    /// Seconds to write vdb (raw, then `qemu-img convert` to qcow2).
    pub disk_prep_secs: f64,
    /// Seconds of `lifeboat protect web … --wait`: the initial full sync to the vault.
    pub initial_sync_secs: f64,
    /// Bytes the first point read from the disks and added to the vault.
    pub initial_bytes_read: u64,
    pub initial_bytes_stored: u64,
    pub runs: Vec<RunResult>,
}

impl SizeResult {
    pub fn median_rto(&self) -> f64 {
        let mut v: Vec<f64> = self.runs.iter().map(|r| r.rto_secs).collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AgentUsage {
    /// CPU seconds (user + system) of beta's agent from the failover until the copy was
    /// both hydrated (as `failover list` saw it) and answering HTTP.
    pub cpu_secs: f64,
    /// `cpu_secs` over that time, in % of one core.
    pub cpu_percent: f64,
    /// That time, seconds.
    pub window_secs: f64,
    /// VmHWM at the end of hydration, bytes.
    pub peak_rss: u64,
    pub rss_at_end: u64,
    /// VmHWM was reset just before the failover (`clear_refs` 5); when false it is the
    /// peak since the agent started.
    pub peak_since_failover: bool,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    /// Median RTO of the largest size over the smallest's (with at least two sizes).
    pub rto_ratio: Option<f64>,
    pub flat: Option<bool>,
    pub rto_max_secs: f64,
    pub under_target: bool,
}

impl Verdict {
    pub fn of(sizes: &[SizeResult]) -> Verdict {
        let by_size = |pick: fn(u64, u64) -> bool| {
            sizes
                .iter()
                .reduce(|a, b| if pick(b.vdb_size, a.vdb_size) { b } else { a })
        };
        let rto_ratio = match (by_size(|a, b| a < b), by_size(|a, b| a > b)) {
            (Some(s), Some(l)) if l.vdb_size > s.vdb_size => Some(l.median_rto() / s.median_rto()),
            _ => None,
        };
        let rto_max_secs = sizes
            .iter()
            .flat_map(|s| s.runs.iter().map(|r| r.rto_secs))
            .fold(0.0, f64::max);
        Verdict {
            rto_ratio,
            flat: rto_ratio.map(|r| r <= FLAT_RATIO),
            rto_max_secs,
            under_target: rto_max_secs <= RTO_TARGET_SECS,
        }
    }
}

pub fn gib_label(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

pub fn table(r: &Report) -> String {
    let mut out = format!("{}\n{}\n\n", r.target, r.cache);
    let header = [
        "vdb (all data)",
        "run",
        "initial sync s",
        "failover cmd s",
        "RTO s (HTTP)",
        "hydration s",
        "hydration MiB/s",
        "agent peak RSS MiB",
        "agent CPU %",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for s in &r.sizes {
        for (i, run) in s.runs.iter().enumerate() {
            rows.push(vec![
                gib_label(s.vdb_size),
                (i + 1).to_string(),
                format!("{:.1}", s.initial_sync_secs),
                format!("{:.2}", run.failover_cmd_secs),
                format!("{:.2}", run.rto_secs),
                format!("{:.1}", run.hydration_secs),
                format!("{:.0}", run.hydration_bytes_per_sec / MIB),
                format!("{:.0}", run.agent.peak_rss as f64 / MIB),
                format!("{:.0}", run.agent.cpu_percent),
            ]);
        }
    }
    out.push_str(&align(&rows));
    out.push('\n');
    for s in &r.sizes {
        out.push_str(&format!(
            "{}: disk written in {:.1} s; initial sync {:.1} s ({:.0} MiB/s: {:.0} MiB read, \
             {:.0} MiB added to the vault).\n",
            gib_label(s.vdb_size),
            s.disk_prep_secs,
            s.initial_sync_secs,
            s.initial_bytes_read as f64 / MIB / s.initial_sync_secs,
            s.initial_bytes_read as f64 / MIB,
            s.initial_bytes_stored as f64 / MIB,
        ));
        for (i, run) in s.runs.iter().enumerate() {
            let agent_end = run.agent_hydration_secs.map_or_else(
                || "not found".to_string(),
                |a| {
                    format!(
                        "{a:.1} s ({:.0} MiB/s)",
                        run.hydration_total as f64 / MIB / a
                    )
                },
            );
            out.push_str(&format!(
                "  run {}: boot count {}; {:.0} MiB hydrated; the agent recorded the end at \
                 {agent_end}; copying rate {}; agent {:.1} CPU s in {:.1} s, RSS at the end {:.0} MiB{}; \
                 cleanup {:.1} s; load average before {:.2}{}.\n",
                i + 1,
                run.http_body,
                run.hydration_total as f64 / MIB,
                run.stream_bytes_per_sec
                    .map_or_else(|| "-".into(), |b| format!("{:.0} MiB/s", b / MIB)),
                run.agent.cpu_secs,
                run.agent.window_secs,
                run.agent.rss_at_end as f64 / MIB,
                if run.agent.peak_since_failover {
                    ""
                } else {
                    " (peak since the agent started: VmHWM could not be reset)"
                },
                run.cleanup_secs,
                run.load_before,
                if run.errors.is_empty() {
                    String::new()
                } else {
                    format!("; errors seen: {}", run.errors.join(" | "))
                }
            ));
        }
    }
    let v = &r.verdict;
    out.push('\n');
    match v.rto_ratio {
        Some(ratio) => out.push_str(&format!(
            "RTO flat in disk size: median RTO of the largest disk / the smallest = {ratio:.2}x \
             (target <= {FLAT_RATIO}x): {}\n",
            pass(ratio <= FLAT_RATIO)
        )),
        None => out.push_str("RTO flat in disk size: needs two sizes (--sizes 1,16)\n"),
    }
    out.push_str(&format!(
        "RTO <= {RTO_TARGET_SECS} s: the slowest run answered after {:.2} s: {}\n",
        v.rto_max_secs,
        pass(v.under_target)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(gib: u64, rtos: &[f64]) -> SizeResult {
        SizeResult {
            vdb_size: gib << 30,
            disk_prep_secs: 0.0,
            initial_sync_secs: 0.0,
            initial_bytes_read: 0,
            initial_bytes_stored: 0,
            runs: rtos
                .iter()
                .map(|&rto_secs| RunResult {
                    failover_cmd_secs: 0.0,
                    rto_secs,
                    http_body: String::new(),
                    hydration_secs: 1.0,
                    agent_hydration_secs: None,
                    hydration_total: 0,
                    hydration_bytes_per_sec: 0.0,
                    stream_bytes_per_sec: None,
                    agent: AgentUsage {
                        cpu_secs: 0.0,
                        cpu_percent: 0.0,
                        window_secs: 1.0,
                        peak_rss: 0,
                        rss_at_end: 0,
                        peak_since_failover: true,
                    },
                    cleanup_secs: 0.0,
                    load_before: 0.0,
                    errors: Vec::new(),
                    samples: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn verdict_compares_medians_of_the_smallest_and_largest_size() {
        let v = Verdict::of(&[size(16, &[9.0, 30.0, 10.0]), size(1, &[8.0, 6.0])]);
        assert_eq!(v.rto_ratio, Some(10.0 / 7.0));
        assert_eq!(v.flat, Some(true));
        assert_eq!((v.rto_max_secs, v.under_target), (30.0, false));
        let v = Verdict::of(&[size(4, &[5.0])]);
        assert_eq!((v.rto_ratio, v.flat, v.under_target), (None, None, true));
    }
}
