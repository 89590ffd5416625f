//! prune on a real folder vault, with points at chosen times: the plan keeps what the
//! policy says, always the newest, and the parent of a live writer; execute deletes only
//! those manifests.

mod maintenance_common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, TimeZone, Utc};
use lifeboat_vault::store::retention::KeepReason;
use lifeboat_vault::store::{execute_prune, plan_prune, RetentionPolicy};
use lifeboat_vault::{PointRef, Vault};
use maintenance_common::*;

fn at(day: u32, hour: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, min, 0).unwrap()
}

fn ms(t: DateTime<Utc>) -> u64 {
    t.timestamp_millis() as u64
}

fn set(points: &[PointRef]) -> BTreeSet<String> {
    points
        .iter()
        .map(|p| format!("{}/{}", p.name, p.point))
        .collect()
}

/// web1 with points at 11:50, 11:10, 9:40, 9:05 on the 26th, 23:00 and 01:00 on the 24th
/// and 00:00 on the 1st; db1 with two points. All share the data of one real point.
async fn fixture(vault: &Vault) -> Result<(Vec<PointRef>, Vec<PointRef>)> {
    let base = put(vault, &name("base"), None, &image(1, 4 << 20), None).await?;
    let mut web = Vec::new();
    for (i, t) in [
        at(26, 11, 50),
        at(26, 11, 10),
        at(26, 9, 40),
        at(26, 9, 5),
        at(24, 23, 0),
        at(24, 1, 0),
        at(1, 0, 0),
    ]
    .into_iter()
    .enumerate()
    {
        web.push(clone_point(vault, &base, &name("web1"), ms(t), i as u32).await?);
    }
    let db = vec![
        clone_point(vault, &base, &name("db1"), ms(at(2, 0, 0)), 1).await?,
        clone_point(vault, &base, &name("db1"), ms(at(3, 0, 0)), 2).await?,
    ];
    Ok((web, db))
}

fn policy() -> RetentionPolicy {
    RetentionPolicy {
        keep_within: Some(Duration::from_secs(3600)),
        keep_hourly: Some(Duration::from_secs(6 * 3600)),
        keep_daily: Some(Duration::from_secs(7 * 86_400)),
        keep_weekly: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_the_policy_says_and_deletes_only_manifests() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let vault = folder_vault(&dir).await?;
    let (web, db) = fixture(&vault).await?;
    let packs = pack_keys(&vault).await?;
    let now = at(26, 12, 0);

    let names = [name("web1")];
    let plan = plan_prune(&vault, &policy(), Some(&names), now).await?;
    assert_eq!(plan.names.len(), 1);
    assert_eq!(
        set(&plan.to_keep()),
        set(&[
            web[0].clone(),
            web[1].clone(),
            web[2].clone(),
            web[4].clone()
        ])
    );
    assert_eq!(
        set(&plan.to_delete()),
        set(&[web[3].clone(), web[5].clone(), web[6].clone()])
    );
    let json = serde_json::to_value(&plan)?;
    assert_eq!(json["names"][0]["decisions"][0]["keep"][0], "newest");

    let report = execute_prune(&vault, &plan).await?;
    assert_eq!(set(&report.deleted), set(&plan.to_delete()));
    assert!(report.spared.is_empty());
    let left = vault.list_points(Some(&name("web1"))).await?;
    assert_eq!(set(&left), set(&plan.to_keep()));
    // db1 was not named: untouched. Data is gc's business: no pack went.
    assert_eq!(vault.list_points(Some(&name("db1"))).await?, db);
    assert_eq!(pack_keys(&vault).await?, packs);

    // Every name: db1's older point goes (nothing in the policy's spans), its newest stays.
    let plan = plan_prune(&vault, &policy(), None, now).await?;
    assert_eq!(set(&plan.to_delete()), set(&[db[0].clone()]));
    let kept = plan.to_keep();
    assert!(kept.contains(&db[1]) && kept.contains(&base_point(&vault).await?));

    // An empty policy is refused rather than deleting all but the newest.
    assert!(plan_prune(&vault, &RetentionPolicy::default(), None, now)
        .await
        .is_err());
    Ok(())
}

async fn base_point(vault: &Vault) -> Result<PointRef> {
    Ok(vault.latest_point(&name("base")).await?.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parent_of_a_live_writer_is_kept() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let vault = folder_vault(&dir).await?;
    let (web, _) = fixture(&vault).await?;
    let now = at(26, 12, 0);
    let names = [name("web1")];

    // A writer builds on the oldest point: it is protected.
    let writer = begin(&vault, &name("web1"), Some(&web[6]), 4 << 20).await?;
    let plan = plan_prune(&vault, &policy(), Some(&names), now).await?;
    assert_eq!(plan.protected, vec![web[6].point]);
    let d = plan.names[0]
        .decisions
        .iter()
        .find(|d| d.point == web[6].point)
        .unwrap();
    assert_eq!(d.keep, vec![KeepReason::Protected]);
    assert_eq!(
        set(&plan.to_delete()),
        set(&[web[3].clone(), web[5].clone()])
    );
    drop(writer);

    // A writer that starts after the plan was made spares its parent at execute time.
    let plan2 = plan_prune(&vault, &policy(), Some(&names), now).await?;
    let late = begin(&vault, &name("web1"), Some(&web[5]), 4 << 20).await?;
    let report = execute_prune(&vault, &plan2).await?;
    assert_eq!(report.spared, vec![web[5].clone()]);
    assert_eq!(set(&report.deleted), set(&[web[3].clone()]));
    assert!(vault.manifest(&web[5]).await.is_ok());
    assert!(vault.manifest(&web[6]).await.is_ok());
    drop(late);
    Ok(())
}
