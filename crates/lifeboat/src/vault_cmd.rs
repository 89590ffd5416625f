//! `lifeboat vault …`: the vault used offline — create it, store images as recovery
//! points, list and restore them, manage keys.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use lifeboat_vault::backend::{Backend, BackendOptions, VaultUrl};
use lifeboat_vault::format::config::CONFIG_VERSION;
use lifeboat_vault::format::{
    Consistency, KdfParams, KeyFile, MasterKey, Name, PointId, VaultConfig, VaultKey, CONFIG_KEY,
};
use lifeboat_vault::{
    align_to_chunks, PointOptions, PointReader, PointRef, PointWriter, Unlock, Vault,
};
use serde::Serialize;

use crate::cli::{KeyCommand, VaultArgs, VaultCommand};
use crate::image_source::{parse_ranges, ImageFormat, ImageSource};
use crate::maintenance_cmd as maintenance;
use crate::output::{bytes as human, table, Output};
use crate::secrets;

/// The disk name `put-image` gives the one disk of the points it writes.
const IMAGE_DISK: &str = "disk";
/// Bytes read from the source per write: whole chunks, a few MiB.
const READ_PIECE: u64 = 4 << 20;
/// Pieces read ahead of the writer.
const READ_AHEAD: usize = 3;
/// Reads of the image in flight at once (direct reads have no kernel readahead).
const READS_IN_FLIGHT: usize = 2;

async fn backend(args: &VaultArgs) -> Result<Backend> {
    let url = args
        .vault
        .as_deref()
        .context("which vault? pass --vault URL (or set LIFEBOAT_VAULT)")?;
    let url = VaultUrl::parse(url)?;
    Ok(Backend::open(&url, BackendOptions::default()).await?)
}

async fn open(args: &VaultArgs) -> Result<Vault> {
    let backend = backend(args).await?;
    let unlock = match &args.key_file {
        Some(path) => Unlock::KeyFile(secrets::read_key_file(path)?),
        None => Unlock::Passphrase(secrets::passphrase("Vault passphrase", false)?),
    };
    Ok(Vault::open(backend, unlock).await?)
}

pub fn parse_size(text: &str) -> Result<u32> {
    let t = text.trim().to_ascii_uppercase();
    let (num, mult) = match t.strip_suffix('K') {
        Some(n) => (n, 1u64 << 10),
        None => match t.strip_suffix('M') {
            Some(n) => (n, 1 << 20),
            None => (t.as_str(), 1),
        },
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("{text:?} is not a size like 128K or 1M"))?;
    u32::try_from(n * mult).with_context(|| format!("{text:?} is too large"))
}

pub fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

async fn resolve_point(vault: &Vault, text: &str, name: Option<&str>) -> Result<PointRef> {
    if text == "latest" {
        let name = Name::new(name.context("`latest` needs --name NAME")?)?;
        return vault
            .latest_point(&name)
            .await?
            .with_context(|| format!("{name} has no recovery point yet"));
    }
    let id: PointId = text
        .parse()
        .with_context(|| format!("{text:?} is not a point id (see `lifeboat vault list`)"))?;
    Ok(vault.find_point(&id).await?)
}

#[derive(Serialize)]
struct PutReport {
    point: PointRef,
    parent: Option<PointId>,
    size: u64,
    bytes_read: u64,
    new_chunks: u64,
    new_bytes_plain: u64,
    new_bytes_stored: u64,
    seconds: f64,
}

async fn put_image(
    vault: &Vault,
    out: Output,
    name: &str,
    file: &Path,
    parent: Option<&str>,
    changed: Option<&Path>,
    format: Option<ImageFormat>,
) -> Result<()> {
    let started = Instant::now();
    let name = Name::new(name)?;
    let parent = match parent {
        Some(p) => Some(resolve_point(vault, p, Some(name.as_str())).await?),
        None => None,
    };
    let format = format.unwrap_or_else(|| ImageFormat::from_name(file));
    let source = ImageSource::open(file, format).await?;
    let size = source.size();
    let cs = u64::from(vault.chunk_size());
    let disk = Name::new(IMAGE_DISK)?;
    let mut writer = PointWriter::begin(
        vault,
        PointOptions::one_disk(name.clone(), parent.clone(), disk.clone(), size),
    )
    .await?;
    // What to read: the given changed ranges; or, without them, the data ranges — and,
    // on top of the parent's disk, the holes as well, since they may hide its data.
    let from_parent = writer.has_parent(&disk);
    let (reads, fill_holes) = match changed {
        Some(path) => {
            if !from_parent {
                writer.abort().await;
                bail!(
                    "--changed needs the parent's disk to be this image's size ({size} bytes), and it is not \
                     (resized?); store the image in full: drop --changed"
                );
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (
                align_to_chunks(&parse_ranges(&text, path)?, cs, size),
                false,
            )
        }
        None => (
            align_to_chunks(&source.data_ranges().await?, cs, size),
            from_parent,
        ),
    };
    let total: u64 = reads.iter().map(|r| r.1).sum();
    let bar = if out.json {
        ProgressBar::hidden()
    } else {
        progress(total, "storing")
    };
    let piece = READ_PIECE.max(cs) / cs * cs;
    // A reader task stays a few pieces ahead, with several reads in flight, so reading
    // the image overlaps sealing and keeps the device busy.
    let source = std::sync::Arc::new(source);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(u64, bytes::Bytes)>>(READ_AHEAD);
    let reader = tokio::spawn({
        let source = source.clone();
        let pieces = split_into_pieces(reads.clone(), piece);
        async move {
            use futures::StreamExt;
            let mut reads = futures::stream::iter(pieces)
                .map(|(pos, n)| {
                    let source = source.clone();
                    async move { source.read(pos, n as usize).await.map(|b| (pos, b)) }
                })
                .buffered(READS_IN_FLIGHT);
            while let Some(r) = reads.next().await {
                let failed = r.is_err();
                if tx.send(r).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    let mut at = 0u64;
    let written = async {
        while let Some(piece) = rx.recv().await {
            let (pos, data) = piece?;
            if fill_holes && pos > at {
                writer.write_zeroes(&disk, at, pos - at).await?;
            }
            at = pos + data.len() as u64;
            let n = data.len() as u64;
            writer.write(&disk, pos, data).await?;
            bar.inc(n);
        }
        if fill_holes && at < size {
            writer.write_zeroes(&disk, at, size - at).await?;
        }
        anyhow::Ok(())
    }
    .await;
    drop(rx);
    let _ = reader.await;
    if let Err(e) = written {
        writer.abort().await;
        return Err(e);
    }
    let manifest = writer.commit().await?;
    bar.finish_and_clear();
    if let Ok(source) = std::sync::Arc::try_unwrap(source) {
        source.close().await;
    }
    let report = PutReport {
        point: PointRef {
            name: manifest.name.clone(),
            point: manifest.point,
        },
        parent: manifest.parent,
        size,
        bytes_read: total,
        new_chunks: manifest.stats.new_chunks,
        new_bytes_plain: manifest.stats.new_bytes_plain,
        new_bytes_stored: manifest.stats.new_bytes_stored,
        seconds: started.elapsed().as_secs_f64(),
    };
    out.show(&report, |r| {
        println!(
            "Stored point {} of {} in {:.2} s: read {}, {} new chunks, {} new in the vault.",
            r.point.point,
            r.point.name,
            r.seconds,
            human(r.bytes_read),
            r.new_chunks,
            human(r.new_bytes_stored)
        );
    });
    Ok(())
}

#[derive(Serialize)]
struct ListRow {
    point: PointId,
    name: Name,
    created: chrono::DateTime<Utc>,
    parent: Option<PointId>,
    consistency: Consistency,
    size: u64,
    new_bytes_stored: u64,
}

async fn list(vault: &Vault, out: Output, name: Option<&str>) -> Result<()> {
    // Opened with one VM's key: that VM's points (others' do not open).
    let name = name.map(Name::new).transpose()?.or(vault.scope().cloned());
    let mut rows = Vec::new();
    for p in vault.list_points(name.as_ref()).await? {
        let m = vault.manifest(&p).await?;
        rows.push(ListRow {
            point: m.point,
            name: m.name,
            created: m.created,
            parent: m.parent,
            consistency: m.consistency,
            size: m.stats.logical_bytes,
            new_bytes_stored: m.stats.new_bytes_stored,
        });
    }
    out.show(&rows, |rows| {
        if rows.is_empty() {
            println!("No recovery points yet. Store one with `lifeboat vault put-image --name NAME FILE`.");
            return;
        }
        let mut t = vec![["POINT", "NAME", "TIME (UTC)", "SIZE", "NEW", "CONSISTENCY"]
            .map(String::from)
            .to_vec()];
        for r in rows {
            t.push(vec![
                r.point.to_string(),
                r.name.to_string(),
                r.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                human(r.size),
                human(r.new_bytes_stored),
                format!("{:?}", r.consistency).to_lowercase(),
            ]);
        }
        table(&t);
    });
    Ok(())
}

async fn restore(
    vault: &Vault,
    out: Output,
    point: &str,
    target: &Path,
    disk: Option<&str>,
) -> Result<()> {
    let started = Instant::now();
    let point = resolve_point(vault, point, None).await?;
    let reader = PointReader::open(
        vault,
        &point,
        lifeboat_vault::store::reader::DEFAULT_CHUNK_CACHE,
    )
    .await?;
    let disk = match disk {
        Some(d) => Name::new(d)?,
        None => reader.manifest().disks[0].name.clone(),
    };
    let qcow2 = target.extension().is_some_and(|e| e == "qcow2");
    let raw_target = if qcow2 {
        target.with_extension("raw.tmp")
    } else {
        target.to_path_buf()
    };
    let size = reader
        .manifest()
        .disks
        .iter()
        .find(|d| d.name == disk)
        .map_or(0, |d| d.size);
    let bar = if out.json {
        ProgressBar::hidden()
    } else {
        progress(size, "restoring")
    };
    let stats = reader
        .restore_raw_with_progress(&disk, &raw_target, |done| bar.set_position(done))
        .await?;
    bar.finish_and_clear();
    if qcow2 {
        // Made 0600 here, the image keeps that mode when qemu-img writes it in place.
        lifeboat_hypervisor::private::open_private(target, true)
            .with_context(|| format!("creating {}", target.display()))?;
        let status = std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw_target)
            .arg(target)
            .status()
            .context("running qemu-img (install qemu-utils)")?;
        let _ = std::fs::remove_file(&raw_target);
        if !status.success() {
            bail!("qemu-img convert to {} failed", target.display());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    out.show(&serde_json::json!({"point": point, "disk": disk, "out": target, "stats": stats, "seconds": seconds}), |_| {
        println!(
            "Restored {} of point {} to {} in {seconds:.2} s: {} of data, {} of holes kept as holes.",
            disk,
            point.point,
            target.display(),
            human(stats.data_bytes),
            human(stats.hole_bytes)
        );
    });
    Ok(())
}

/// The master key, from --key-file (which must hold it) or the passphrase.
fn master_key(args: &VaultArgs, config: &VaultConfig) -> Result<MasterKey> {
    match &args.key_file {
        Some(p) => match secrets::read_key_file(p)?.unlock(config)? {
            VaultKey::Master(k) => Ok(k),
            VaultKey::Scope { name, .. } => bail!(
                "{} holds the key of {name}'s points only; this needs the vault's master key (its passphrase or a full key file)",
                p.display()
            ),
        },
        None => {
            let pass = secrets::passphrase("Vault passphrase", false)?;
            Ok(config.unlock(&pass)?)
        }
    }
}

async fn key(args: &VaultArgs, out: Output, cmd: &KeyCommand) -> Result<()> {
    let backend = backend(args).await?;
    let mut config = Vault::read_config(&backend).await?;
    match cmd {
        KeyCommand::Export { file, vm } => {
            let master = master_key(args, &config)?;
            let Some(vm) = vm else {
                secrets::write_key_file(file, &KeyFile::new(&config, master)?)?;
                out.show(&serde_json::json!({"exported": file}), |_| {
                    println!("Wrote the vault's key to {} (mode 0600). Keep it safe and away from the vault: anyone with it can read every point.", file.display());
                });
                return Ok(());
            };
            let name: Name = vm.parse()?;
            secrets::write_key_file(file, &KeyFile::scope(&config, &master, &name)?)?;
            out.show(&serde_json::json!({"exported": file, "vm": name}), |_| {
                println!("Wrote the key of {name}'s points to {} (mode 0600). It opens {name}'s points and no other VM's.", file.display());
            });
        }
        KeyCommand::AddPassphrase => {
            let path = args
                .key_file
                .as_ref()
                .context("add-passphrase needs --key-file FILE")?;
            let key = match secrets::read_key_file(path)?.unlock(&config)? {
                VaultKey::Master(k) => k,
                VaultKey::Scope { name, .. } => bail!(
                    "{} holds the key of {name}'s points only; adding a passphrase needs the vault's master key",
                    path.display()
                ),
            };
            let pass = secrets::passphrase("New passphrase", true)?;
            config.add_slot(&key, &pass, KdfParams::DEFAULT)?;
            backend.put(CONFIG_KEY, config.encode()?.into()).await?;
            out.show(
                &serde_json::json!({"key_slots": config.key_slots.len()}),
                |_| {
                    println!(
                        "Added a passphrase; the vault now has {} key slot(s).",
                        config.key_slots.len()
                    );
                },
            );
        }
        KeyCommand::Passwd => {
            let old = secrets::passphrase("Current passphrase", false)?;
            let new = match std::env::var("LIFEBOAT_NEW_PASSPHRASE") {
                Ok(p) if !p.is_empty() => p,
                _ => {
                    if std::env::var(secrets::PASSPHRASE_ENV).is_ok() {
                        bail!("set LIFEBOAT_NEW_PASSPHRASE too, or run on a terminal");
                    }
                    secrets::passphrase("New passphrase", true)?
                }
            };
            config.change_passphrase(&old, &new, KdfParams::DEFAULT)?;
            backend.put(CONFIG_KEY, config.encode()?.into()).await?;
            out.show(&serde_json::json!({"changed": true}), |_| {
                println!("Passphrase changed. No data was rewritten; key files stay valid.");
            });
        }
    }
    Ok(())
}

pub async fn run(out: Output, args: VaultArgs) -> Result<()> {
    match &args.command {
        VaultCommand::Init {
            chunk_size,
            pack_size,
            shared_key,
        } => {
            let backend = backend(&args).await?;
            let cs = parse_size(chunk_size)?;
            let pack = parse_size(pack_size)?;
            let pass = secrets::passphrase("New vault passphrase", true)?;
            let version = if *shared_key { 1 } else { CONFIG_VERSION };
            let (vault, _) =
                Vault::init_version(backend, &pass, cs, Some(pack), KdfParams::DEFAULT, version)
                    .await?;
            out.show(&serde_json::json!({"vault": vault.url(), "vault_id": vault.config().vault_id, "chunk_size": cs}), |_| {
                println!("Created vault {} (id {}, chunk size {}).", vault.url(), vault.config().vault_id, human(u64::from(cs)));
                println!("Lose the passphrase and every key file, and the data is gone: export a key file now with");
                println!("  lifeboat vault key export --vault {} KEYFILE", vault.url());
            });
        }
        VaultCommand::PutImage {
            name,
            file,
            parent,
            changed,
            format,
        } => {
            let vault = open(&args).await?;
            put_image(
                &vault,
                out,
                name,
                file,
                parent.as_deref(),
                changed.as_deref(),
                *format,
            )
            .await?;
        }
        VaultCommand::List { name } => list(&open(&args).await?, out, name.as_deref()).await?,
        VaultCommand::Restore {
            point,
            out: target,
            disk,
        } => restore(&open(&args).await?, out, point, target, disk.as_deref()).await?,
        VaultCommand::Verify { points, name } => {
            let code =
                maintenance::run_verify(&open(&args).await?, out, points, name.as_deref()).await?;
            if code != 0 {
                return Err(anyhow::Error::new(Damaged));
            }
        }
        VaultCommand::Prune {
            keep_within,
            keep_hourly,
            keep_daily,
            keep_weekly,
            name,
            dry_run,
        } => {
            maintenance::run_prune(
                &open(&args).await?,
                out,
                keep_within.as_deref(),
                keep_hourly.as_deref(),
                keep_daily.as_deref(),
                keep_weekly.as_deref(),
                name.as_deref(),
                *dry_run,
            )
            .await?
        }
        VaultCommand::Gc { grace, dry_run } => {
            maintenance::run_gc(&open(&args).await?, out, grace, *dry_run).await?
        }
        VaultCommand::Stats => maintenance::run_stats(&open(&args).await?, out).await?,
        VaultCommand::Key(cmd) => key(&args, out, cmd).await?,
    }
    Ok(())
}

/// `verify` found damage (exit code 3; the report says what).
#[derive(Debug)]
pub struct Damaged;

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the vault has damaged points (listed above)")
    }
}

impl std::error::Error for Damaged {}

/// `ranges` cut into pieces of at most `piece` bytes, in order (lazily: a 10 TiB disk
/// has millions of pieces).
fn split_into_pieces(ranges: Vec<(u64, u64)>, piece: u64) -> impl Iterator<Item = (u64, u64)> {
    ranges.into_iter().flat_map(move |(off, len)| {
        let end = off + len;
        (off..end)
            .step_by(piece as usize)
            .map(move |pos| (pos, piece.min(end - pos)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_each_range_exactly() {
        let got: Vec<_> = split_into_pieces(vec![(0, 10), (20, 4), (30, 0)], 4).collect();
        assert_eq!(got, vec![(0, 4), (4, 4), (8, 2), (20, 4)]);
    }
}
