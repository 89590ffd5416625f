//! The `rpo` bench's output: one table row for the run (or JSON), then what limits the
//! numbers. A measurement, not a test: nothing here fails the run.

use serde::Serialize;

use crate::report::align;

const MIB: f64 = (1u64 << 20) as f64;

#[derive(Debug, Serialize)]
pub struct Report {
    pub policy: String,
    pub interval_secs: u64,
    /// Seconds measured (from the first to the last sample).
    pub measured_secs: f64,
    pub churn: ChurnResult,
    pub rpo: RpoStats,
    /// Recovery points cut during the measured period.
    pub points: usize,
    /// Those points by `kind/consistency` (`incremental/crash`…).
    pub point_kinds: std::collections::BTreeMap<String, usize>,
    /// Syncs the server counted as committed during the period (`syncs_committed`).
    pub syncs: i64,
    /// Mean of the sync durations seen (`last_sync_seconds` of each new sync).
    pub mean_sync_secs: Option<f64>,
    pub max_sync_secs: Option<f64>,
    /// Changed bytes the period's points carried (sum of their `bytes_read`).
    pub bytes_read: u64,
    /// Bytes those points added to the vault (compressed, encrypted, deduplicated).
    pub bytes_stored: u64,
    pub agent: AgentUsage,
    /// Samples per protection state (protected, degraded…).
    pub states: std::collections::BTreeMap<String, usize>,
    pub vdb_size: u64,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ChurnResult {
    pub target_mib_per_s: f64,
    /// Bytes written to vdb by the guest (its kernel's count) / seconds.
    pub achieved_mib_per_s: f64,
    pub bytes_written: u64,
    pub secs: f64,
    /// Seconds the guest took to fill its source buffer (churn + 4 MiB) from /dev/urandom.
    pub buffer_fill_secs: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct RpoStats {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
}

impl RpoStats {
    /// Nearest-rank percentiles of the samples (seconds).
    pub fn of(samples: &[f64]) -> RpoStats {
        if samples.is_empty() {
            return RpoStats::default();
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[i.clamp(1, s.len()) - 1]
        };
        RpoStats {
            samples: s.len(),
            p50: rank(50.0),
            p99: rank(99.0),
            max: s[s.len() - 1],
            min: s[0],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AgentUsage {
    /// CPU seconds (user + system) of the agent process over the measured period.
    pub cpu_secs: f64,
    /// `cpu_secs` / measured seconds, in % of one core.
    pub cpu_percent: f64,
    /// VmHWM at the end: the agent's peak resident set since it started, bytes.
    pub peak_rss: u64,
    pub rss_at_end: u64,
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

pub fn table(r: &Report) -> String {
    let header = [
        "interval s",
        "churn MiB/s target",
        "churn MiB/s achieved",
        "samples",
        "RPO p50 s",
        "RPO p99 s",
        "RPO max s",
        "points",
        "mean sync s",
        "agent CPU %",
        "agent peak RSS MiB",
    ];
    let rows = vec![
        header.iter().map(|s| s.to_string()).collect(),
        vec![
            r.interval_secs.to_string(),
            format!("{:.1}", r.churn.target_mib_per_s),
            format!("{:.1}", r.churn.achieved_mib_per_s),
            r.rpo.samples.to_string(),
            format!("{:.1}", r.rpo.p50),
            format!("{:.1}", r.rpo.p99),
            format!("{:.1}", r.rpo.max),
            r.points.to_string(),
            opt(r.mean_sync_secs),
            format!("{:.0}", r.agent.cpu_percent),
            format!("{:.0}", r.agent.peak_rss as f64 / MIB),
        ],
    ];
    let mut out = align(&rows);
    let states: Vec<String> = r.states.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let kinds: Vec<String> = r
        .point_kinds
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    out.push_str(&format!(
        "\npolicy {} (a sync every {} s), {:.0} s measured, RPO sampled every 1 s from \
         `lifeboat --json status` (min {:.1} s, mean {:.1} s); samples by state: {}.\n\
         {} points ({}; {} syncs committed), slowest sync {} s; they carried {:.1} MiB of \
         changed blocks and added {:.1} MiB to the vault.\n\
         churn: {:.1} MiB written to vdb ({} MiB qcow2) by the guest in {:.1} s (its \
         kernel's count); source buffer filled from /dev/urandom in {:.1} s.\n\
         agent: {:.1} CPU s ({:.0}% of one core), peak RSS {:.0} MiB, RSS at the end {:.0} MiB.\n",
        r.policy,
        r.interval_secs,
        r.measured_secs,
        r.rpo.min,
        r.rpo.mean,
        states.join(", "),
        r.points,
        kinds.join(", "),
        r.syncs,
        opt(r.max_sync_secs),
        r.bytes_read as f64 / MIB,
        r.bytes_stored as f64 / MIB,
        r.churn.bytes_written as f64 / MIB,
        r.vdb_size >> 20,
        r.churn.secs,
        r.churn.buffer_fill_secs,
        r.agent.cpu_secs,
        r.agent.cpu_percent,
        r.agent.peak_rss as f64 / MIB,
        r.agent.rss_at_end as f64 / MIB,
    ));
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::RpoStats;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = RpoStats::of(&samples);
        assert_eq!((s.p50, s.p99, s.max, s.min), (50.0, 99.0, 100.0, 1.0));
        let s = RpoStats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.p50, s.p99, s.max), (2.0, 3.0, 3.0));
        assert_eq!(RpoStats::of(&[]).samples, 0);
    }
}
