//! `prune`: forgets recovery points by a retention policy (docs/vault-format.md,
//! "Maintenance"). Plan first — [`plan_prune`] decides per name with `retention::plan`,
//! from the time in each point id, without reading a manifest — then [`execute_prune`]
//! deletes only the manifests the plan names. Data stays until `gc` finds it unreferenced.
//!
//! Never deleted: a name's newest point (`retention::plan`), and any point a live lease
//! names as the parent of a writer — checked when planning and again just before
//! deleting, since a writer may have started in between.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::format::{Name, PointId};
use crate::store::error::{Result, VaultError};
use crate::store::lease::live_leases;
use crate::store::retention::{self, Decision, RetentionPolicy};
use crate::store::vault::{PointRef, Vault};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamePlan {
    pub name: Name,
    /// Newest first; an empty `keep` means the point is deleted.
    pub decisions: Vec<Decision<PointId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrunePlan {
    pub now: DateTime<Utc>,
    pub policy: RetentionPolicy,
    /// Parents of live writers when the plan was made.
    pub protected: Vec<PointId>,
    pub names: Vec<NamePlan>,
}

impl PrunePlan {
    /// Oldest first, like `Vault::list_points`.
    fn by_keep(&self, keep: bool) -> Vec<PointRef> {
        let mut out: Vec<PointRef> = self
            .names
            .iter()
            .flat_map(|n| {
                n.decisions
                    .iter()
                    .filter(move |d| d.keep.is_empty() != keep)
                    .map(|d| PointRef {
                        name: n.name.clone(),
                        point: d.point,
                    })
            })
            .collect();
        out.sort_by(|a, b| a.point.cmp(&b.point).then(a.name.cmp(&b.name)));
        out
    }

    pub fn to_delete(&self) -> Vec<PointRef> {
        self.by_keep(false)
    }

    pub fn to_keep(&self) -> Vec<PointRef> {
        self.by_keep(true)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub deleted: Vec<PointRef>,
    /// Planned for deletion but kept: a writer started on top of them after planning.
    pub spared: Vec<PointRef>,
}

/// Decides which points of `names` (every name when `None`) `policy` keeps at `now`.
/// Refuses an empty policy, which would delete all but each name's newest point.
pub async fn plan_prune(
    vault: &Vault,
    policy: &RetentionPolicy,
    names: Option<&[Name]>,
    now: DateTime<Utc>,
) -> Result<PrunePlan> {
    let mut points = vault.list_points(None).await?;
    if let Some(names) = names {
        points.retain(|p| names.contains(&p.name));
    }
    plan_prune_of(vault, policy, names.unwrap_or_default(), points, now).await
}

/// `plan_prune` over `points` only (a subset of the vault's): points not given are
/// neither deleted nor counted. The control plane passes the points its agents reported,
/// so a point someone else created under a VM's name cannot take a retention slot (the
/// newest of an hour, of a day) from a real one. `names` are planned even with no point.
pub async fn plan_prune_of(
    vault: &Vault,
    policy: &RetentionPolicy,
    names: &[Name],
    points: Vec<PointRef>,
    now: DateTime<Utc>,
) -> Result<PrunePlan> {
    if policy.is_empty() {
        return Err(VaultError::Usage(
            "prune needs at least one of --keep-within, --keep-hourly, --keep-daily, \
             --keep-weekly; without one it would delete every point but the newest"
                .into(),
        ));
    }
    let mut by_name: BTreeMap<Name, Vec<(PointId, DateTime<Utc>)>> = BTreeMap::new();
    for n in names {
        by_name.entry(n.clone()).or_default();
    }
    for p in points {
        by_name
            .entry(p.name)
            .or_default()
            .push((p.point, p.point.time()));
    }
    let protected: HashSet<PointId> = live_leases(vault)
        .await?
        .into_iter()
        .filter_map(|l| l.parent)
        .collect();
    let names = by_name
        .into_iter()
        .map(|(name, points)| NamePlan {
            decisions: retention::plan(&points, policy, &protected, now),
            name,
        })
        .collect();
    let mut protected: Vec<PointId> = protected.into_iter().collect();
    protected.sort();
    Ok(PrunePlan {
        now,
        policy: *policy,
        protected,
        names,
    })
}

/// Deletes the manifests `plan` marks, except points that became parents of a live
/// writer since the plan was made.
pub async fn execute_prune(vault: &Vault, plan: &PrunePlan) -> Result<PruneReport> {
    let protected: HashSet<PointId> = live_leases(vault)
        .await?
        .into_iter()
        .filter_map(|l| l.parent)
        .collect();
    let mut report = PruneReport {
        deleted: Vec::new(),
        spared: Vec::new(),
    };
    for p in plan.to_delete() {
        if protected.contains(&p.point) {
            report.spared.push(p);
            continue;
        }
        vault.delete_point(&p).await?;
        tracing::info!(name = %p.name, point = %p.point, "pruned");
        report.deleted.push(p);
    }
    Ok(report)
}
