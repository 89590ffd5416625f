//! The `scale` bench's output: per fleet size, the server's CPU with the scheduler
//! driving every VM, the syncs it drove, each page's and API list's latency, its peak
//! RSS.

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
    /// Server CPU per sync it drove, ms (start, poll, record the point, retention); NaN
    /// (`—`, `null` in JSON) when the window saw too few syncs for it to mean that.
    pub cpu_ms_per_sync: f64,
    pub pages: Vec<Timed>,
    /// The server's VmHWM at the end, bytes.
    pub peak_rss: u64,
    /// Inventories the simulated agents listed, over the whole run (the Hosts & VMs page
    /// and `GET /api/v1/vms` ask every host).
    pub inventories: u64,
    /// Calls of the server that no simulated agent answered (should be none).
    pub unanswered: Vec<String>,
}

/// A page or API list, by the name the table gives it.
#[derive(Debug, Serialize)]
pub struct Timed {
    pub name: String,
    #[serde(flatten)]
    pub page: PageResult,
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
            .max_by(|a, b| a.page.p99_ms.total_cmp(&b.page.p99_ms))
            .map(|p| format!("{:.0} ms ({})", p.page.p99_ms, p.name))
            .unwrap_or_default();
        rows.push(vec![
            f.vms.to_string(),
            f.database.clone(),
            f.hosts.to_string(),
            format!("{:.1}% of a core", f.cpu_percent),
            format!("{:.1}", f.syncs_per_sec),
            format!("{:.1}", f.agent_requests_per_sec),
            match f.cpu_ms_per_sync.is_nan() {
                true => "—".to_string(),
                false => format!("{:.2} ms", f.cpu_ms_per_sync),
            },
            worst,
            format!("{} MiB", f.peak_rss >> 20),
        ]);
    }
    let mut out = format!(
        "Scale: every VM on policy {}, simulated agents (50 VMs each, listed in their inventories); pages timed {} times each\n",
        r.policy, r.requests
    );
    out.push_str(&align(&rows));
    out.push_str("\nPages and API lists (p50 / p99):\n");
    let mut rows = vec![vec![
        "VMs".to_string(),
        "page".into(),
        "path".into(),
        "p50".into(),
        "p99".into(),
        "bytes".into(),
    ]];
    for f in &r.fleets {
        for p in &f.pages {
            rows.push(vec![
                f.vms.to_string(),
                p.name.clone(),
                p.page.path.clone(),
                format!("{:.1} ms", p.page.p50_ms),
                format!("{:.1} ms", p.page.p99_ms),
                p.page.bytes.to_string(),
            ]);
        }
    }
    out.push_str(&align(&rows));
    for f in r.fleets.iter().filter(|f| !f.unanswered.is_empty()) {
        out.push_str(&format!(
            "\nAt {} VMs the simulated agents did not answer: {}\n",
            f.vms,
            f.unanswered.join(", ")
        ));
    }
    out
}
