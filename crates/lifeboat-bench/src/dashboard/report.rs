//! The `dashboard` bench's output: per fleet size, each page's latency and size, the
//! event stream's first message, the CPU that open streams cost, the server's peak RSS.

use serde::Serialize;

use crate::report::align;

#[derive(Debug, Serialize)]
pub struct Report {
    pub requests: usize,
    pub streams: usize,
    pub fleets: Vec<FleetResult>,
}

#[derive(Debug, Serialize)]
pub struct FleetResult {
    pub vms: usize,
    /// Seconds to seed the database (not the dashboard's cost).
    pub seed_secs: f64,
    pub pages: Vec<PageResult>,
    pub first_event_ms: f64,
    pub first_event_bytes: usize,
    /// Server CPU, % of one core, with no page open.
    pub idle_cpu_percent: f64,
    /// Server CPU, % of one core, while `streams` pages held their event streams open.
    pub streams_cpu_percent: f64,
    /// The server's VmHWM at the end, bytes.
    pub peak_rss: u64,
}

#[derive(Debug, Serialize)]
pub struct PageResult {
    pub path: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub bytes: usize,
}

impl PageResult {
    pub fn new(path: &str, mut times: Vec<f64>, bytes: usize) -> PageResult {
        times.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if times.is_empty() {
                f64::NAN
            } else {
                times[((times.len() - 1) as f64 * q).round() as usize]
            }
        };
        PageResult {
            path: path.to_string(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            bytes,
        }
    }
}

pub fn table(r: &Report) -> String {
    let mut rows = vec![vec![
        "VMs".to_string(),
        "page".into(),
        "p50 ms".into(),
        "p99 ms".into(),
        "KiB".into(),
    ]];
    for f in &r.fleets {
        for p in &f.pages {
            let page = if p.path.starts_with("/hosts/") {
                "VM page (24 h chart, 2880 points)".to_string()
            } else {
                p.path.clone()
            };
            rows.push(vec![
                f.vms.to_string(),
                page,
                format!("{:.1}", p.p50_ms),
                format!("{:.1}", p.p99_ms),
                format!("{:.0}", p.bytes as f64 / 1024.0),
            ]);
        }
        rows.push(vec![
            f.vms.to_string(),
            "/events, first message".into(),
            format!("{:.1}", f.first_event_ms),
            "-".into(),
            format!("{:.0}", f.first_event_bytes as f64 / 1024.0),
        ]);
    }
    let mut out = align(&rows);
    out.push('\n');
    let mut rows = vec![vec![
        "VMs".to_string(),
        "server CPU, no page open".into(),
        format!("server CPU, {} open pages", r.streams),
        "server peak RSS MiB".into(),
    ]];
    for f in &r.fleets {
        rows.push(vec![
            f.vms.to_string(),
            format!("{:.1}% of a core", f.idle_cpu_percent),
            format!("{:.1}% of a core", f.streams_cpu_percent),
            format!("{:.0}", f.peak_rss as f64 / (1u64 << 20) as f64),
        ]);
    }
    out += &align(&rows);
    out += &format!(
        "\nEach page: {} timed requests after 3 warm-up ones, one at a time, logged in, over loopback HTTP.\n",
        r.requests
    );
    out
}
