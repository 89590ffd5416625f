//! The benchmark's output: one aligned text table (or JSON) of every size measured.

use serde::Serialize;

use crate::bench::{label, SizeResult};

#[derive(Serialize)]
pub struct Report {
    pub results: Vec<SizeResult>,
    /// The process's peak resident set (VmHWM), in bytes.
    pub peak_rss: u64,
    pub repeat: usize,
    pub cache: &'static str,
    pub baseline: &'static str,
}

/// VmHWM of this process, from /proc/self/status.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn secs(s: f64) -> String {
    format!("{s:.2}")
}

fn rate(r: f64) -> String {
    format!("{r:.0}")
}

pub fn table(report: &Report) -> String {
    let header = [
        "size",
        "full s",
        "full MiB/s",
        "full bytes",
        "vdb s",
        "vdb MiB/s",
        "convert s",
        "convert MiB/s",
        "cut/convert",
        "1% asked",
        "inc s",
        "inc bytes",
        "inc MiB/s",
        "fixed asked",
        "inc s",
        "inc bytes",
        "inc MiB/s",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in &report.results {
        let (p, f) = (&r.incremental_percent, &r.incremental_fixed);
        rows.push(vec![
            label(r.disk_size),
            secs(r.full.total.secs),
            rate(r.full.total.mib_per_s),
            r.full.total.bytes.to_string(),
            secs(r.full.vdb_apply.secs),
            rate(r.full.vdb_apply.mib_per_s),
            secs(r.convert.secs),
            rate(r.convert.mib_per_s),
            format!("{:.0}%", r.full_vs_convert_pct),
            p.asked.to_string(),
            secs(p.cut.total.secs),
            p.cut.total.bytes.to_string(),
            rate(p.cut.total.mib_per_s),
            f.asked.to_string(),
            secs(f.cut.total.secs),
            f.cut.total.bytes.to_string(),
            rate(f.cut.total.mib_per_s),
        ]);
    }
    let mut out = align(&rows);
    out.push_str(&format!(
        "\nfull/inc = begin..apply vda+vdb..commit; vdb = vdb's apply_to_raw alone; \
         cut/convert = vdb MiB/s / convert MiB/s;\n\
         full and convert are the median of {} alternating rounds; inc bytes = bytes the incremental cut carried.\n\
         page cache: {}; baseline: {}.\n",
        report.repeat, report.cache, report.baseline
    ));
    let probes: Vec<_> = report
        .results
        .iter()
        .flat_map(|r| r.probes.iter().map(move |p| (r, p)))
        .collect();
    if !probes.is_empty() {
        let mut rows = vec![[
            "size",
            "piece",
            "in flight",
            "writes",
            "vdb s",
            "vdb MiB/s",
            "write s",
            "fsync s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
        for (r, p) in probes {
            rows.push(vec![
                label(r.disk_size),
                format!("{} KiB", p.knobs.piece >> 10),
                p.knobs.in_flight.to_string(),
                format!("{:?}", p.knobs.writes).to_lowercase(),
                secs(p.vdb_apply.secs),
                rate(p.vdb_apply.mib_per_s),
                secs(p.breakdown.write_secs),
                secs(p.breakdown.sync_secs),
            ]);
        }
        out.push_str("\nprobes (full cut of vdb with apply's knobs changed, then aborted):\n");
        out.push_str(&align(&rows));
    }
    out.push_str(&format!(
        "\npeak RSS (VmHWM): {:.1} MiB\n",
        report.peak_rss as f64 / (1u64 << 20) as f64
    ));
    out
}

/// Right-aligns every column but the first.
pub(crate) fn align(rows: &[Vec<String>]) -> String {
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c == 0 {
                    format!("{v:<w$}", w = widths[c])
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
