//! The `vault` benchmark's output: one table of every tool (a row per Lifeboat chunk
//! size), then the targets of the vault issue as ratios from the same run, each marked
//! PASS or MISS. A report, not a test: a MISS does not fail the run.

use serde::Serialize;

use super::image::Change;
use super::tools::ToolResult;
use crate::bench::label;
use crate::report::align;

const MIB: f64 = (1u64 << 20) as f64;

/// Lifeboat's peak RSS budget.
pub const RSS_BUDGET: u64 = 256 << 20;

#[derive(Serialize)]
pub struct Report {
    pub size: u64,
    pub layout: &'static str,
    pub regions: usize,
    pub change: ChangeSummary,
    pub generate_secs: f64,
    pub tools: Vec<ToolResult>,
    pub targets: Vec<Targets>,
    pub cache: &'static str,
    pub total_secs: f64,
}

#[derive(Serialize)]
pub struct ChangeSummary {
    pub ranges: usize,
    pub bytes: u64,
    pub over_holes: u64,
    pub over_text: u64,
    pub over_random: u64,
}

impl From<&Change> for ChangeSummary {
    fn from(c: &Change) -> Self {
        ChangeSummary {
            ranges: c.ranges.len(),
            bytes: c.bytes,
            over_holes: c.over_holes,
            over_text: c.over_text,
            over_random: c.over_random,
        }
    }
}

#[derive(Serialize)]
pub struct Target {
    /// The measured ratio (or MiB for RSS); `None` when the peer was not run.
    pub value: Option<f64>,
    pub pass: Option<bool>,
}

impl Target {
    fn at_least(value: Option<f64>, goal: f64) -> Target {
        Target {
            value,
            pass: value.map(|v| v >= goal),
        }
    }
    fn at_most(value: Option<f64>, goal: f64) -> Target {
        Target {
            value,
            pass: value.map(|v| v <= goal),
        }
    }
}

/// The targets for one Lifeboat chunk size.
#[derive(Serialize)]
pub struct Targets {
    pub tool: String,
    /// borg full s / Lifeboat full s, goal ≥ 3.
    pub full_vs_borg: Target,
    /// borg incremental s / Lifeboat incremental (with ranges) s, goal ≥ 10.
    pub incremental_vs_borg: Target,
    /// Lifeboat growth / changed bytes, goal ≤ 2.
    pub growth_vs_changed: Target,
    /// borg restore s / Lifeboat restore s, goal ≥ 2.
    pub restore_vs_borg: Target,
    /// Lifeboat peak RSS in MiB, goal ≤ 256.
    pub peak_rss_mib: Target,
}

pub fn targets(lifeboat: &ToolResult, borg: Option<&ToolResult>, changed: u64) -> Targets {
    let ratio = |f: fn(&ToolResult) -> f64| borg.map(|b| f(b) / f(lifeboat));
    Targets {
        tool: lifeboat.tool.clone(),
        full_vs_borg: Target::at_least(ratio(|t| t.full.secs), 3.0),
        incremental_vs_borg: Target::at_least(ratio(|t| t.incremental.secs), 10.0),
        growth_vs_changed: Target::at_most(Some(lifeboat.growth as f64 / changed as f64), 2.0),
        restore_vs_borg: Target::at_least(ratio(|t| t.restore.secs), 2.0),
        peak_rss_mib: Target::at_most(
            Some(lifeboat.peak_rss as f64 / MIB),
            RSS_BUDGET as f64 / MIB,
        ),
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

fn secs(s: f64) -> String {
    format!("{s:.2}")
}

fn verdict(t: &Target, unit: &str) -> String {
    match (t.value, t.pass) {
        (Some(v), Some(p)) => format!("{v:.2}{unit} {}", if p { "PASS" } else { "MISS" }),
        _ => "n/a".into(),
    }
}

pub fn table(r: &Report) -> String {
    let header = [
        "tool",
        "full s",
        "inc s",
        "inc no-hint s",
        "stored MB",
        "growth MB",
        "no-hint growth MB",
        "restore s",
        "restored alloc MB",
        "peak RSS MiB",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for t in &r.tools {
        rows.push(vec![
            t.tool.clone(),
            secs(t.full.secs),
            secs(t.incremental.secs),
            t.incremental_digest.map_or("-".into(), |s| secs(s.secs)),
            mb(t.stored_after_full),
            mb(t.growth),
            t.growth_digest.map_or("-".into(), mb),
            secs(t.restore.secs),
            mb(t.restore_allocated),
            format!("{:.0}", t.peak_rss as f64 / MIB),
        ]);
    }
    let c = &r.change;
    let mut out = format!(
        "image {} ({}, {} regions); changed {} bytes ({:.1} MB) in {} ranges: \
         {:.1} MB over holes, {:.1} over text, {:.1} over random\n\n",
        label(r.size),
        r.layout,
        r.regions,
        c.bytes,
        c.bytes as f64 / 1e6,
        c.ranges,
        c.over_holes as f64 / 1e6,
        c.over_text as f64 / 1e6,
        c.over_random as f64 / 1e6,
    );
    out.push_str(&align(&rows));
    out.push_str(
        "\ninc = the changed image on top of the full backup (Lifeboat: --changed RANGES); \
         inc no-hint = Lifeboat without --changed (whole image read, digests compared, as borg and restic always do);\n\
         stored/growth = repository bytes allocated on disk (du); MB = 10^6 bytes; \
         restore = the changed image, compared with it byte for byte (cmp).\n",
    );
    out.push_str(&format!("page cache: {}.\n", r.cache));

    let mut rows = vec![[
        "targets",
        "full vs borg (>=3x)",
        "inc vs borg (>=10x)",
        "growth/changed (<=2x)",
        "restore vs borg (>=2x)",
        "peak RSS (<=256 MiB)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for t in &r.targets {
        rows.push(vec![
            t.tool.clone(),
            verdict(&t.full_vs_borg, "x"),
            verdict(&t.incremental_vs_borg, "x"),
            verdict(&t.growth_vs_changed, "x"),
            verdict(&t.restore_vs_borg, "x"),
            verdict(&t.peak_rss_mib, ""),
        ]);
    }
    out.push('\n');
    out.push_str(&align(&rows));
    out.push_str(&format!(
        "\nratios from this run; n/a = peers skipped. total runtime {:.0}s \
         (images made in {:.0}s).\n",
        r.total_secs, r.generate_secs
    ));
    out
}
