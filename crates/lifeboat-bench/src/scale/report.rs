//! The `scale` bench's output: per fleet size, the server's CPU with the scheduler
//! driving every VM, the syncs it drove, each page's latency, its peak RSS.

use serde::Serialize;

use crate::dashboard::PageResult;
use crate::report::align;

#[derive(Debug, Serialize)]
pub struct Report {
    pub policy: String,
    pub requests: usize,
    pub fleets: Vec<ScaleResult>,
}

#[derive(Debug, Serialize)]
pub struct ScaleResult {
    pub vms: usize,
    pub database: String,
    pub hosts: usize,
    pub seed_secs: f64,
    pub window_secs: f64,
    /// Server CPU, % of one core, with no page open.
    pub cpu_percent: f64,
    pub syncs_per_sec: f64,
    /// Every call of the server to an agent (sync, status, fence…), per second.
    pub agent_requests_per_sec: f64,
    /// Server CPU per sync it drove, ms (start, poll, record the point, retention).
    pub cpu_ms_per_sync: f64,
    pub pages: Vec<PageResult>,
    /// The server's VmHWM at the end, bytes.
    pub peak_rss: u64,
}

pub fn table(r: &Report) -> String {
    let mut rows = vec![vec![
        "VMs".to_string(),
        "database".into(),
        "hosts".into(),
        "server CPU (no page)".into(),
        "syncs/s".into(),
        "agent calls/s".into(),
        "CPU per sync".into(),
        "worst page p99".into(),
        "peak RSS".into(),
    ]];
    for f in &r.fleets {
        let worst = f
            .pages
            .iter()
            .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
            .map(|p| format!("{:.0} ms ({})", p.p99_ms, p.path))
            .unwrap_or_default();
        rows.push(vec![
            f.vms.to_string(),
            f.database.clone(),
            f.hosts.to_string(),
            format!("{:.1}% of a core", f.cpu_percent),
            format!("{:.1}", f.syncs_per_sec),
            format!("{:.1}", f.agent_requests_per_sec),
            format!("{:.2} ms", f.cpu_ms_per_sync),
            worst,
            format!("{} MiB", f.peak_rss >> 20),
        ]);
    }
    let mut out = format!(
        "Scale: every VM on policy {}, simulated agents (50 VMs each); pages timed {} times each\n",
        r.policy, r.requests
    );
    out.push_str(&align(&rows));
    out.push_str("\nPages (p50 / p99):\n");
    let mut rows = vec![vec![
        "VMs".to_string(),
        "page".into(),
        "p50".into(),
        "p99".into(),
        "bytes".into(),
    ]];
    for f in &r.fleets {
        for p in &f.pages {
            rows.push(vec![
                f.vms.to_string(),
                p.path.clone(),
                format!("{:.1} ms", p.p50_ms),
                format!("{:.1} ms", p.p99_ms),
                p.bytes.to_string(),
            ]);
        }
    }
    out.push_str(&align(&rows));
    out
}
