//! `lifeboat vault verify|prune|gc|stats`: the vault's maintenance from the command line.

use anyhow::{bail, Result};
use chrono::Utc;
use indicatif::ProgressBar;
use lifeboat_vault::format::{Name, PointId};
use lifeboat_vault::store::retention::parse_duration;
use lifeboat_vault::store::{
    execute_prune, gc, plan_prune, stats, verify, PointStatus, RetentionPolicy, VerifyProgress,
};
use lifeboat_vault::Vault;

use crate::output::{bytes as human, table, Output};

pub async fn run_verify(
    vault: &Vault,
    out: Output,
    points: &[String],
    name: Option<&str>,
) -> Result<u8> {
    let name = name.map(Name::new).transpose()?;
    let mut chosen = vault.list_points(name.as_ref()).await?;
    if !points.is_empty() {
        let wanted: Vec<PointId> = points.iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
        for w in &wanted {
            if !chosen.iter().any(|p| &p.point == w) {
                bail!("no point {w} in this vault (see `lifeboat vault list`)");
            }
        }
        chosen.retain(|p| wanted.contains(&p.point));
    }
    let bar = if out.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    let report = verify(vault, &chosen, |p: VerifyProgress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(format!("{:?}", p.phase));
    })
    .await?;
    bar.finish_and_clear();
    out.show(&report, |r| {
        println!(
            "Checked {} point(s): {} manifests, {} pages, {} chunks ({} of data).",
            r.points.len(),
            r.manifests_checked,
            r.pages_checked,
            r.chunks_checked,
            human(r.chunk_bytes_plain)
        );
        for p in r.damaged() {
            println!("DAMAGED: point {} of {}:", p.point, p.name);
            for problem in &p.problems {
                println!("  {}", serde_json::to_string(problem).unwrap_or_default());
            }
        }
        if r.is_clean() {
            println!("Every point is intact.");
        }
    });
    Ok(
        if report.points.iter().all(|p| p.status == PointStatus::Ok) {
            0
        } else {
            crate::exit::DAMAGED
        },
    )
}

#[allow(clippy::too_many_arguments)]
pub async fn run_prune(
    vault: &Vault,
    out: Output,
    within: Option<&str>,
    hourly: Option<&str>,
    daily: Option<&str>,
    weekly: Option<&str>,
    name: Option<&str>,
    dry_run: bool,
) -> Result<()> {
    let dur = |s: Option<&str>| {
        s.map(parse_duration)
            .transpose()
            .map_err(anyhow::Error::msg)
    };
    let policy = RetentionPolicy {
        keep_within: dur(within)?,
        keep_hourly: dur(hourly)?,
        keep_daily: dur(daily)?,
        keep_weekly: dur(weekly)?,
    };
    let names = name.map(Name::new).transpose()?.map(|n| vec![n]);
    let plan = plan_prune(vault, &policy, names.as_deref(), Utc::now()).await?;
    let delete = plan.to_delete();
    if dry_run {
        out.show(&plan, |_| {
            println!(
                "Would delete {} point(s), keep {}:",
                delete.len(),
                plan.to_keep().len()
            );
            for p in &delete {
                println!("  delete {} of {}", p.point, p.name);
            }
        });
        return Ok(());
    }
    let report = execute_prune(vault, &plan).await?;
    out.show(&report, |r| {
        println!(
            "Deleted {} point(s); kept {}. Run `lifeboat vault gc` to free their data.",
            r.deleted.len(),
            plan.to_keep().len() + r.spared.len()
        );
    });
    Ok(())
}

pub async fn run_gc(vault: &Vault, out: Output, grace: &str, dry_run: bool) -> Result<()> {
    let grace = parse_duration(grace).map_err(anyhow::Error::msg)?;
    let report = gc(vault, grace, dry_run).await?;
    if report.blocked {
        out.show(&report, |r| {
            println!("gc deleted nothing: these objects cannot be read, so what they reference is unknown:");
            for u in &r.plan.unreadable {
                println!("  {}: {}", u.object, u.reason);
            }
        });
        bail!("gc blocked by unreadable objects; run `lifeboat vault verify`");
    }
    out.show(&report, |r| {
        println!(
            "{} {} pack(s) ({}), kept {}; {} of dead data sits in partly used packs.",
            if r.dry_run { "Would delete" } else { "Deleted" },
            if r.dry_run {
                r.plan.delete_packs.len() as u64
            } else {
                r.packs_deleted
            },
            human(if r.dry_run {
                r.plan.bytes_to_free()
            } else {
                r.bytes_freed
            }),
            r.packs_kept,
            human(r.waste_bytes)
        );
    });
    Ok(())
}

pub async fn run_stats(vault: &Vault, out: Output) -> Result<()> {
    let s = stats(vault).await?;
    out.show(&s, |s| {
        let ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into());
        println!(
            "{} point(s) of {} name(s) in {} pack(s): {} stored for {} logical ({} of data).",
            s.points,
            s.names,
            s.packs,
            human(s.stored_bytes),
            human(s.logical_bytes),
            human(s.logical_data_bytes)
        );
        println!(
            "Dedup {}, compression {} ({} unique chunks).",
            ratio(s.dedup_ratio),
            ratio(s.compression_ratio),
            s.unique_chunks
        );
        let mut rows = vec![[
            "POINT",
            "NAME",
            "TIME (UTC)",
            "SIZE",
            "NEW (PLAIN)",
            "NEW (STORED)",
        ]
        .map(String::from)
        .to_vec()];
        for p in &s.per_point {
            rows.push(vec![
                p.point.to_string(),
                p.name.to_string(),
                p.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                human(p.logical_bytes),
                human(p.new_bytes_plain),
                human(p.new_bytes_stored),
            ]);
        }
        table(&rows);
    });
    Ok(())
}
