//! `lifeboat-bench rto`: how soon a failover gives service back, and whether that depends
//! on the size of the VM's disks. With instant recovery it should not: the recovery host
//! serves the point's disks over NBD straight from the vault as the backing of local
//! overlays, boots the VM at once and hydrates in the background, so the guest answers as
//! soon as it has read what booting needs. Every Lifeboat step is a process of the
//! release `lifeboat` binary (`crate::rpo::procs`): a server, agents alpha and beta, a
//! folder vault, VM `web` on alpha whose vdb is a disk full of incompressible data
//! (1 GiB, then 16 GiB), protected with beta as its recovery host; then `failover web
//! --test`, timed to the copy's first HTTP answer and to the end of its hydration.
//! The guest never reads vdb to answer: it boots from vda. See README.md.

mod cluster;
mod disk;
mod failover;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use cluster::{Cluster, VmGuard, COPY, VM};
use report::{gib_label, SizeResult, Verdict, FLAT_RATIO, RTO_TARGET_SECS};
pub use report::{table, Report};

/// Free space asked for per byte of vdb: the disk on alpha, the vault, the hydrated copy
/// on beta, and the raw scratch the disk is made from (gone before the others exist),
/// with some room to spare.
const SPACE_FACTOR: f64 = 3.5;
/// A copy that gives no HTTP answer within this has failed (the boot is ~5 s).
const RTO_LIMIT: Duration = Duration::from_secs(600);

pub struct Options {
    /// vdb sizes, bytes; a cluster of its own each, in this order.
    pub sizes: Vec<u64>,
    /// Measured failovers per size.
    pub runs: usize,
    /// The `lifeboat-bench-rto-<pid>` directory to work in.
    pub work: PathBuf,
    /// Keep each size's directory (else removed once the size is measured, to free its
    /// space for the next).
    pub keep: bool,
    /// Leave the page cache as it is (else dropped before each failover, when root).
    pub warm: bool,
    pub lifeboat: PathBuf,
    pub seed: u64,
}

fn step(what: &str) {
    eprintln!("[rto] {what}");
}

/// Bytes of free space the run needs: the largest size's share, or all of them when
/// every size's directory is kept.
fn space_needed(opts: &Options, sizes: &[u64]) -> u64 {
    let bytes = if opts.keep {
        sizes.iter().sum()
    } else {
        sizes.iter().copied().max().unwrap_or(0)
    };
    (bytes as f64 * SPACE_FACTOR) as u64
}

pub async fn run(opts: &Options) -> Result<Report> {
    if !opts.lifeboat.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p lifeboat -p \
             lifeboat-bench` (or pass --lifeboat)",
            opts.lifeboat.display()
        );
    }
    if opts.sizes.is_empty() || opts.runs == 0 {
        bail!("nothing to measure: give --sizes and at least one run");
    }
    disk::check_space(
        &opts.work,
        space_needed(opts, &opts.sizes),
        &format!(
            "a vdb of {}",
            gib_label(*opts.sizes.iter().max().expect("sizes"))
        ),
    )?;
    let cold = !opts.warm && failover::drop_caches();
    let mut sizes = Vec::new();
    for (i, &size) in opts.sizes.iter().enumerate() {
        let dir = opts.work.join(format!("{}-vdb-{}m", i + 1, size >> 20));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // What the sizes still to come need (the kept ones hold space already).
        disk::check_space(
            &dir,
            space_needed(opts, &opts.sizes[i..]),
            &format!("a vdb of {}", gib_label(size)),
        )?;
        let result = run_size(opts, size, &dir, cold)
            .await
            .with_context(|| format!("the {} disk", gib_label(size)));
        if !opts.keep {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("could not remove {}: {e}", dir.display());
            }
        }
        sizes.push(result?);
    }
    Ok(Report {
        target: format!(
            "RTO of a test failover with instant recovery (`lifeboat failover web --test` to \
             the copy's first HTTP answer on beta). Target: RTO flat in disk size (the \
             largest within {FLAT_RATIO}x of the smallest) and <= {RTO_TARGET_SECS} s here, \
             the ~5 s TCG boot included."
        ),
        cache: if cold {
            "Page cache dropped before each failover: the copy reads the vault from disk.".into()
        } else {
            "Page cache left warm (--warm, or not root): the vault may be read from memory.".into()
        },
        verdict: Verdict::of(&sizes),
        sizes,
    })
}

async fn run_size(opts: &Options, size: u64, dir: &Path, cold: bool) -> Result<SizeResult> {
    let gib = size as f64 / (1u64 << 30) as f64;
    let alpha_home = dir.join("alpha");
    std::fs::create_dir_all(&alpha_home)?;
    let vdb = alpha_home.join("web-vdb.qcow2");
    step(&format!(
        "writing vdb: {} of pseudo-random data",
        gib_label(size)
    ));
    let started = Instant::now();
    let (scratch, seed) = (dir.join("vdb.raw"), opts.seed ^ size);
    tokio::task::block_in_place(|| disk::make_full_qcow2(&vdb, &scratch, size, seed))?;
    let disk_prep_secs = started.elapsed().as_secs_f64();

    step("starting the server and agents alpha and beta");
    let mut cl = Cluster::start(&opts.lifeboat, dir).await?;
    // Made after the cluster, so dropped before it: the VMs die before their agents.
    let http = lifeboat_testkit::free_tcp_port();
    let _web = cl.start_web(&vdb, http)?;
    let _copy = VmGuard::new(&cl.lb, &cl.beta_home, COPY)?;
    step(&format!(
        "{VM} started on alpha; waiting for its HTTP answer"
    ));
    lifeboat_testkit::wait_http(http, "/boot-count", lifeboat_testkit::boot_timeout())
        .await
        .context("the production guest did not answer HTTP")?;

    // Generous: the initial sync reads and stores every byte of vdb.
    let sync_limit = Duration::from_secs(600 + (120.0 * gib) as u64);
    step(&format!(
        "protecting {VM} (recovery host beta, policy frequent): the initial sync"
    ));
    let initial_sync_secs = cl.protect_web(sync_limit).await?;
    cl.check_alive()?;
    let points = cl.lb.client_json(&["points", VM]).await?;
    let first = points
        .as_array()
        .and_then(|p| p.first())
        .cloned()
        .unwrap_or_default();
    step(&format!("initial sync done in {initial_sync_secs:.1} s"));

    let hydration_limit = Duration::from_secs(900 + (240.0 * gib) as u64);
    let mut runs = Vec::new();
    for i in 1..=opts.runs {
        if cold {
            tokio::task::block_in_place(failover::drop_caches);
        }
        step(&format!(
            "run {i}/{}: failover {VM} --test to beta",
            opts.runs
        ));
        let r = failover::measure(&cl, RTO_LIMIT, hydration_limit)
            .await
            .with_context(|| format!("run {i}"))?;
        cl.check_alive()?;
        step(&format!(
            "run {i}: RTO {:.2} s, hydrated in {:.1} s",
            r.rto_secs, r.hydration_secs
        ));
        runs.push(r);
    }
    Ok(SizeResult {
        vdb_size: size,
        disk_prep_secs,
        initial_sync_secs,
        initial_bytes_read: first["bytes_read"].as_u64().unwrap_or(0),
        initial_bytes_stored: first["new_bytes"].as_u64().unwrap_or(0),
        runs,
    })
}
