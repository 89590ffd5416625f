//! `lifeboat-bench`: measures Lifeboat's changed-block tracking against the real test
//! guest under QEMU. `cut` times a full cut of a data disk full of data against
//! `qemu-img convert` of the same disk, then incremental cuts after the guest rewrote a
//! share of the disk and a fixed amount, and checks every replica against the live disk.
//! `vault` stores a raw image and a 1%-changed copy in the vault, against borg and
//! restic on the same files, and restores it. `rpo` measures the RPO continuous
//! replication keeps while the guest writes steadily. `rto` measures how soon a test
//! failover answers on the recovery host, and its hydration, for disks of growing size.
//! `dashboard` measures the web dashboard's pages and live stream as the fleet grows.
//! `libvirt` compares cuts through libvirt's backup job with the QEMU driver's.
//! See README.md.

mod bench;
mod dashboard;
mod datagen;
mod guest;
mod libvirt;
mod report;
mod rewrite;
mod rpo;
mod rto;
mod scale;
mod tuned;
mod vault;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::tuned::{Knobs, Writes};

#[derive(Parser)]
#[command(
    name = "lifeboat-bench",
    about = "Benchmarks of Lifeboat's changed-block tracking"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Full and incremental cuts of a VM's data disk, against `qemu-img convert`.
    Cut {
        /// Data disk sizes, comma-separated (suffix K, M, G; whole MiB).
        #[arg(long, value_delimiter = ',', default_value = "2G,8G", value_parser = parse_size)]
        sizes: Vec<u64>,
        /// Where the disks go (needs about 4x the largest size free); a
        /// `lifeboat-bench-<pid>` directory is made in it and removed at the end.
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
        /// Keep the work directory (disks, VM logs) at the end.
        #[arg(long)]
        keep: bool,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// The first rewrite: this percentage of each disk.
        #[arg(long, default_value_t = 1.0)]
        rewrite_percent: f64,
        /// The second rewrite: the same amount on every size, so incremental times
        /// compare fairly.
        #[arg(long, default_value = "20M", value_parser = parse_size)]
        rewrite_fixed: u64,
        /// Before the real full cut, time extra full cuts of vdb with apply's knobs
        /// changed (then aborted): PIECE:IN_FLIGHT:inline|thread|discard, repeatable.
        #[arg(long, value_parser = parse_probe)]
        probe: Vec<Knobs>,
        /// Rounds of (convert, full cut) per size; the median of each is reported.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        repeat: u16,
        /// Seed of the data and of the rewrite offsets.
        #[arg(long, default_value_t = 0x11feb0a7)]
        seed: u64,
    },
    /// Cuts through libvirt's backup job against the QEMU driver's on the same disk, and
    /// libvirt incremental cut time against changed bytes.
    Libvirt {
        /// The data disk's size (suffix K, M, G; whole MiB).
        #[arg(long, default_value = "2G", value_parser = parse_size)]
        size: u64,
        /// Bytes written before each incremental cut, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "16M,64M,256M", value_parser = parse_size)]
        changes: Vec<u64>,
        /// Full cuts per driver; the median is reported.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        repeat: u16,
        /// Where the disks go (needs twice the size free, reachable by libvirt's QEMU).
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The vault: full and incremental `put-image` and restore, against borg and restic.
    Vault {
        /// Image size (suffix K, M, G; whole MiB).
        #[arg(long, default_value = "4G", value_parser = parse_size)]
        size: u64,
        /// Lifeboat vault chunk sizes, comma-separated: a row each (peers run once).
        #[arg(long, value_delimiter = ',', default_value = "128K", value_parser = parse_size)]
        chunk_sizes: Vec<u64>,
        /// Where the images and repositories go (needs about 4x the size free per
        /// tool); a `lifeboat-bench-vault-<pid>` directory is made in it.
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
        /// Keep the work directory (images, repositories, logs) at the end.
        #[arg(long)]
        keep: bool,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Lifeboat only: no borg or restic.
        #[arg(long)]
        skip_peers: bool,
        /// The lifeboat binary (default: `lifeboat` next to this one, i.e.
        /// target/release/lifeboat).
        #[arg(long)]
        lifeboat: Option<PathBuf>,
        /// Seed of the image and of the changed ranges.
        #[arg(long, default_value_t = 0x7a017)]
        seed: u64,
    },
    /// The RPO of continuous replication while the guest writes steadily: server, agent
    /// and folder vault as real `lifeboat` processes, RPO sampled every second.
    Rpo {
        /// Length of the measured period, seconds.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(5..))]
        seconds: u64,
        /// Seconds of churn (and syncs) before the measured period starts.
        #[arg(long, default_value_t = 10)]
        warmup: u64,
        /// What the guest writes to its second disk each second (suffix K, M, G; whole MiB).
        #[arg(long, default_value = "20M", value_parser = parse_size)]
        churn: u64,
        /// Size of the guest's second disk, which the churn rotates over.
        #[arg(long, default_value = "2G", value_parser = parse_size)]
        vdb_size: u64,
        /// Protection policy: frequent (a sync every 5 s), default (30 s) or hourly.
        #[arg(long, default_value = "frequent")]
        policy: String,
        /// Where the cluster's homes, vault and disks go; a `lifeboat-bench-rpo-<pid>`
        /// directory is made in it and removed at the end.
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
        /// Keep the work directory (logs, vault, disks) at the end.
        #[arg(long)]
        keep: bool,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// The lifeboat binary (default: `lifeboat` next to this one, i.e.
        /// target/release/lifeboat).
        #[arg(long)]
        lifeboat: Option<PathBuf>,
    },
    /// The web dashboard as the fleet grows: page latency and size, the live event
    /// stream's first message, server CPU with open pages, peak RSS. A real server
    /// (release build, SQLite) on a database seeded with that many protected VMs.
    Dashboard {
        /// Fleet sizes (protected VMs), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        vms: Vec<usize>,
        /// Timed requests per page.
        #[arg(long, default_value_t = 50)]
        requests: usize,
        /// Where the databases go; a `lifeboat-bench-dashboard-<pid>` directory is made
        /// in it and removed at the end.
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
        /// Keep the work directory at the end.
        #[arg(long)]
        keep: bool,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// The lifeboat binary (default: `lifeboat` next to this one, i.e.
        /// target/release/lifeboat).
        #[arg(long)]
        lifeboat: Option<PathBuf>,
    },
    /// The control plane as the fleet grows, with replication running: server CPU with no
    /// page open while the scheduler drives every VM on its policy, syncs per second, CPU
    /// per sync, page latency, peak RSS. A real server (release build; SQLite, or
    /// PostgreSQL with --postgres); the agents are simulated (this benchmark only).
    Scale {
        /// Fleet sizes (protected VMs), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        vms: Vec<usize>,
        /// The policy of every VM: `hourly` measures the scheduler alone, `default` a
        /// sync every 30 s per VM.
        #[arg(long, default_value = "hourly")]
        policy: String,
        /// Seconds the server's CPU is measured.
        #[arg(long, default_value_t = 30)]
        window: u64,
        /// Timed requests per page.
        #[arg(long, default_value_t = 30)]
        requests: usize,
        /// PostgreSQL instead of SQLite: the URL of a role that may create databases
        /// (read from LIFEBOAT_BENCH_POSTGRES, so a password stays out of the process list).
        #[arg(long, env = "LIFEBOAT_BENCH_POSTGRES", hide_env_values = true)]
        postgres: Option<String>,
        /// Where the databases go; a `lifeboat-bench-scale-<pid>` directory is made in it
        /// and removed at the end.
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
        /// Keep the work directory at the end.
        #[arg(long)]
        keep: bool,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// The lifeboat binary (default: `lifeboat` next to this one, i.e.
        /// target/release/lifeboat).
        #[arg(long)]
        lifeboat: Option<PathBuf>,
    },
    /// The RTO of a test failover with instant recovery, for growing disks full of data:
    /// time to the copy's first HTTP answer, hydration time and rate, beta's agent's
    /// CPU and peak RSS. Server, agents alpha and beta and the vault are real processes.
    Rto {
        /// Sizes of the VM's second disk, comma-separated, in GiB (or with a suffix K,
        /// M, G; whole MiB). Each is written full of pseudo-random data.
        #[arg(long, value_delimiter = ',', default_value = "1,16", value_parser = parse_gib)]
        sizes: Vec<u64>,
        /// Measured failovers per size (each followed by `failover cleanup`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        runs: u16,
        /// Where the clusters, disks and vaults go (needs about 3.5x the largest size
        /// free); a `lifeboat-bench-rto-<pid>` directory is made in it and removed at
        /// the end, each size's part as soon as it is measured.
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
        /// Keep the work directory (logs, vaults, disks) at the end.
        #[arg(long)]
        keep: bool,
        /// Do not drop the page cache before each failover.
        #[arg(long)]
        warm: bool,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// The lifeboat binary (default: `lifeboat` next to this one, i.e.
        /// target/release/lifeboat).
        #[arg(long)]
        lifeboat: Option<PathBuf>,
        /// Seed of the disks' data.
        #[arg(long, default_value_t = 0x4e70)]
        seed: u64,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512M or 2G"))?;
    Ok(n << shift)
}

/// A size in GiB when it is a bare number (`16`), else as `parse_size` (`512M`).
fn parse_gib(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bytes = match s.parse::<u64>() {
        Ok(gib) => gib << 30,
        Err(_) => parse_size(s)?,
    };
    if bytes == 0 || !bytes.is_multiple_of(1 << 20) {
        return Err(format!(
            "{s:?}: a positive whole number of MiB, e.g. 16 (GiB) or 512M"
        ));
    }
    Ok(bytes)
}

fn parse_probe(s: &str) -> Result<Knobs, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [piece, in_flight, writes] = parts[..] else {
        return Err(format!(
            "probe {s:?}: write PIECE:IN_FLIGHT:WRITES, e.g. 16M:4:thread"
        ));
    };
    let writes = <Writes as clap::ValueEnum>::from_str(writes, true)?;
    let in_flight: usize = in_flight
        .parse()
        .map_err(|_| format!("probe {s:?}: bad IN_FLIGHT"))?;
    Ok(Knobs {
        piece: parse_size(piece)?,
        in_flight: in_flight.max(1),
        writes,
    })
}

/// Runs `run` until it ends or Ctrl-C or SIGTERM comes. On a signal the run's future is
/// dropped, and with it the guards that kill the VMs, the agents and the server; then the
/// caller removes the work dir as on any end. The handlers are installed before the run
/// starts: a signal that came before would be lost (a background job of a shell ignores
/// SIGINT).
async fn until_signal<T>(run: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = run => r,
        _ = int.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Libvirt {
            size,
            changes,
            repeat,
            work_dir,
            json,
        } => {
            if size == 0 || !size.is_multiple_of(1 << 20) {
                bail!("--size must be a whole number of MiB");
            }
            let work = work_dir.join(format!("lifeboat-bench-libvirt-{}", std::process::id()));
            std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
            // libvirt's QEMU user must reach the disk's folder.
            std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            let opts = libvirt::Options {
                size,
                changes,
                work: work.clone(),
                repeat: repeat.into(),
            };
            let result = libvirt::run_bench(&opts).await;
            let _ = std::fs::remove_dir_all(&work);
            let report = result?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", libvirt::table(&report));
            }
            Ok(())
        }
        Cmd::Dashboard {
            vms,
            requests,
            work_dir,
            keep,
            json,
            lifeboat,
        } => {
            if vms.is_empty() || vms.contains(&0) || requests == 0 {
                bail!("--vms takes fleet sizes of at least 1, and --requests at least 1");
            }
            let work = work_dir.join(format!("lifeboat-bench-dashboard-{}", std::process::id()));
            std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
            let opts = dashboard::Options {
                vms,
                requests,
                work: work.clone(),
                lifeboat: lifeboat.unwrap_or_else(vault::default_lifeboat),
            };
            let result = until_signal(dashboard::run(&opts)).await;
            finish(&work, keep, result, json, dashboard::table)
        }
        Cmd::Scale {
            vms,
            policy,
            window,
            requests,
            postgres,
            work_dir,
            keep,
            json,
            lifeboat,
        } => {
            if vms.is_empty() || vms.contains(&0) || requests == 0 || window == 0 {
                bail!("--vms takes fleet sizes of at least 1; --requests and --window at least 1");
            }
            let work = work_dir.join(format!("lifeboat-bench-scale-{}", std::process::id()));
            std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
            let opts = scale::Options {
                vms,
                requests,
                policy,
                window: std::time::Duration::from_secs(window),
                postgres,
                work: work.clone(),
                lifeboat: lifeboat.unwrap_or_else(vault::default_lifeboat),
            };
            let result = until_signal(scale::run(&opts)).await;
            finish(&work, keep, result, json, scale::table)
        }
        Cmd::Rto {
            sizes,
            runs,
            work_dir,
            keep,
            warm,
            json,
            lifeboat,
            seed,
        } => {
            let work = work_dir.join(format!("lifeboat-bench-rto-{}", std::process::id()));
            std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
            let opts = rto::Options {
                sizes,
                runs: runs.into(),
                work: work.clone(),
                keep,
                warm,
                lifeboat: lifeboat.unwrap_or_else(vault::default_lifeboat),
                seed,
            };
            let result = until_signal(rto::run(&opts)).await;
            finish(&work, keep, result, json, rto::table)
        }
        Cmd::Rpo {
            seconds,
            warmup,
            churn,
            vdb_size,
            policy,
            work_dir,
            keep,
            json,
            lifeboat,
        } => {
            if churn < 1 << 20 || !churn.is_multiple_of(1 << 20) {
                bail!("churn {churn}: a whole number of MiB, at least 1M");
            }
            if !vdb_size.is_multiple_of(1 << 20) || vdb_size < 2 * churn {
                bail!("vdb size {vdb_size}: a whole number of MiB, at least twice the churn");
            }
            let work = work_dir.join(format!("lifeboat-bench-rpo-{}", std::process::id()));
            std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
            let opts = rpo::Options {
                seconds,
                warmup,
                churn_mib: churn >> 20,
                vdb_size,
                policy,
                work: work.clone(),
                lifeboat: lifeboat.unwrap_or_else(vault::default_lifeboat),
            };
            let result = until_signal(rpo::run(&opts)).await;
            finish(&work, keep, result, json, rpo::table)
        }
        Cmd::Vault {
            size,
            chunk_sizes,
            work_dir,
            keep,
            json,
            skip_peers,
            lifeboat,
            seed,
        } => {
            if size < 64 << 20 || !size.is_multiple_of(1 << 20) {
                bail!("image size {size} must be a whole number of MiB, at least 64M");
            }
            let work = work_dir.join(format!("lifeboat-bench-vault-{}", std::process::id()));
            std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
            let opts = vault::Options {
                size,
                chunk_sizes,
                work: work.clone(),
                json,
                skip_peers,
                lifeboat: lifeboat.unwrap_or_else(vault::default_lifeboat),
                seed,
            };
            // Blocking child processes only: no need for the runtime's threads here.
            let result = tokio::task::block_in_place(|| vault::run(&opts));
            if keep {
                eprintln!("kept {}", work.display());
            } else if let Err(e) = std::fs::remove_dir_all(&work) {
                eprintln!("could not remove {}: {e}", work.display());
            }
            result
        }
        Cmd::Cut {
            sizes,
            work_dir,
            keep,
            json,
            rewrite_percent,
            rewrite_fixed,
            probe,
            repeat,
            seed,
        } => {
            for &s in &sizes {
                if s == 0 || !s.is_multiple_of(1 << 20) {
                    bail!("disk size {s} must be a positive whole number of MiB");
                }
            }
            let work = work_dir.join(format!("lifeboat-bench-{}", std::process::id()));
            std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
            let opts = bench::Options {
                work_dir: work.clone(),
                rewrite_percent,
                rewrite_fixed,
                probes: probe,
                repeat: repeat.into(),
            };
            let started = Instant::now();
            let mut results = Vec::new();
            let mut failure = None;
            for &size in &sizes {
                match bench::run_size(size, &opts, seed ^ size).await {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        failure = Some(
                            e.context(format!("benchmark of the {} disk", bench::label(size))),
                        );
                        break;
                    }
                }
            }
            if keep {
                eprintln!("kept {}", work.display());
            } else if let Err(e) = std::fs::remove_dir_all(&work) {
                eprintln!("could not remove {}: {e}", work.display());
            }
            if let Some(e) = failure {
                return Err(e);
            }
            let report = report::Report {
                results,
                peak_rss: report::peak_rss(),
                repeat: repeat.into(),
                cache: "cold (sync + drop_caches before every timed read)",
                baseline: "qemu-img convert -U qcow2->raw + fsync, VM paused",
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report::table(&report));
            }
            eprintln!("total runtime {:.0}s", started.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

/// Ends a cluster benchmark: its work directory kept or removed, then its report printed
/// as a table or JSON.
fn finish<R: serde::Serialize>(
    work: &std::path::Path,
    keep: bool,
    result: Result<R>,
    json: bool,
    table: impl Fn(&R) -> String,
) -> Result<()> {
    if keep {
        eprintln!("kept {}", work.display());
    } else if let Err(e) = std::fs::remove_dir_all(work) {
        eprintln!("could not remove {}: {e}", work.display());
    }
    let report = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}
