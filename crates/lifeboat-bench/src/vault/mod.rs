//! `lifeboat-bench vault`: Lifeboat's vault against borg and restic on the same images,
//! same machine, same run. Builds a sparse raw disk and a copy with ~1% rewritten,
//! then for each tool times the full backup, the incremental, and the restore of the
//! changed copy (cold page cache before each), with each child's peak RSS and the
//! repository's size; Lifeboat once per chunk size. See README.md.

mod child;
mod image;
mod report;
mod tools;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::datagen::Rng;
use image::Layout;
use tools::Inputs;

pub struct Options {
    pub size: u64,
    pub chunk_sizes: Vec<u64>,
    /// The `lifeboat-bench-vault-<pid>` directory to work in.
    pub work: PathBuf,
    pub json: bool,
    pub skip_peers: bool,
    pub lifeboat: PathBuf,
    pub seed: u64,
}

/// `target/release/lifeboat`, next to this binary.
pub fn default_lifeboat() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("lifeboat")))
        .unwrap_or_else(|| PathBuf::from("target/release/lifeboat"))
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    if !opts.lifeboat.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p lifeboat` (or pass --lifeboat)",
            opts.lifeboat.display()
        );
    }
    for &cs in &opts.chunk_sizes {
        if !cs.is_power_of_two() || !(64 << 10..=4 << 20).contains(&cs) {
            bail!("chunk size {cs}: a power of two from 64K to 4M");
        }
    }
    if !opts.skip_peers {
        tools::require("borg", "--version", "borgbackup")?;
        tools::require("restic", "version", "restic")?;
    }
    let data_dir = opts.work.join("images");
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let inputs = Inputs {
        data_dir: data_dir.clone(),
        base: "disk.raw",
        changed: "disk-changed.raw",
        ranges: data_dir.join("changed-ranges.txt"),
    };

    let mut rng = Rng::new(opts.seed);
    let layout = Layout::new(opts.size, &mut rng);
    image::write_image(&data_dir.join(inputs.base), &layout, &mut rng)?;
    let change = image::write_changed(
        &data_dir.join(inputs.base),
        &data_dir.join(inputs.changed),
        &inputs.ranges,
        &layout,
        opts.size / 100,
        &mut rng,
    )?;
    let generate_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "[vault] images ready in {generate_secs:.1}s: {} regions, {} changed bytes in {} ranges",
        layout.regions.len(),
        change.bytes,
        change.ranges.len()
    );

    let mut results = Vec::new();
    for &cs in &opts.chunk_sizes {
        eprintln!("[vault] lifeboat, chunk size {} KiB", cs >> 10);
        results.push(tools::lifeboat(&opts.lifeboat, &opts.work, &inputs, cs)?);
    }
    let lifeboat_rows = results.len();
    let mut borg = None;
    if !opts.skip_peers {
        eprintln!("[vault] borg");
        let b = tools::borg(&opts.work, &inputs)?;
        borg = Some(b.clone());
        results.push(b);
        eprintln!("[vault] restic");
        results.push(tools::restic(&opts.work, &inputs)?);
    }
    let targets = results[..lifeboat_rows]
        .iter()
        .map(|t| report::targets(t, borg.as_ref(), change.bytes))
        .collect();
    let report = report::Report {
        size: opts.size,
        layout: "40% holes, 35% text, 25% random, in 1-8 MiB regions",
        regions: layout.regions.len(),
        change: (&change).into(),
        generate_secs,
        tools: results,
        targets,
        cache: "cold (sync + drop_caches before every timed step, every tool)",
        total_secs: started.elapsed().as_secs_f64(),
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::table(&report));
    }
    Ok(())
}
