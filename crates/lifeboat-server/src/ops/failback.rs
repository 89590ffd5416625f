//! Failback as an operation: a failed-over VM brought home with only the delta. The
//! recovery VM is shut down in order and its final point taken (only chunks that differ
//! from the vault's newest point are sent). That point is written over the home disks
//! where they differ (the recovery site's writes, and home's own diverged writes), the
//! home disks are proven equal, the VM starts at home, and the recovery VM is removed.
//! Never two running copies: home starts only after the recovery VM stopped.
//!
//! Unplanned (`--unplanned`, the recovery site is lost): the VM comes home from a chosen
//! point of the vault (for a reversed protection, the recovery site's newest); the
//! recovery VM is fenced, now if its host answers, else when it does (the recovery
//! watcher), and kept: its writes after that point stay on its disks.
//!
//! | step | undo |
//! |---|---|
//! | `check-hosts` | — (both hosts must answer before anything stops) |
//! | `mark-failing-back` | back to `failed_over` (or `protected_reversed`) |
//! | `wait-for-sync` | — (a reversed protection's sync that runs ends first) |
//! | `shutdown-recovery` | start the recovery VM again (nothing wrote its disks) |
//! | `final-sync` | — (the point stays: it is a good point) |
//! | `apply-at-home` | — (home stays fenced and stopped; its disks are rewritten next time) |
//! | `start-home` (point of no return) | fence home again (its QEMU killed) |
//! | `remove-recovery` | — |
//! | `record` | — |
//!
//! | step (unplanned) | undo |
//! |---|---|
//! | `check-hosts` | — (home must answer) |
//! | `mark-failing-back` | back to `failed_over` (or `protected_reversed`) |
//! | `fence-recovery` | start the recovery VM again, if this step stopped it |
//! | `apply-at-home` | — |
//! | `start-home` (point of no return) | fence home again |
//! | `record` | — (the recovery VM: `fenced`, or `fencing` until its host answers) |

use std::time::Duration;

use lifeboat_agent::client::ClientError;
use lifeboat_agent::handover::{ApplyPointRequest, FenceRequest, ShutdownRequest};
use lifeboat_agent::sync::SyncRequest;
use serde::{Deserialize, Serialize};

use super::common::{
    agent_failed, client, host, must_answer, protection, start_again, transition, vault,
    wait_for_sync,
};
use super::{Ctx, Saga, StepError, StepInfo};
use crate::db::{Event, Facts, HostAccess, Protection, ProtectionState, Recovery};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailbackParams {
    pub protection_id: lifeboat_types::ProtectionId,
    /// The recovery the VM runs as away from home.
    pub recovery_id: lifeboat_types::RecoveryId,
    pub shutdown_timeout_secs: u64,
    /// It was protected where it ran (`protected_reversed`): an undo goes back to that.
    #[serde(default)]
    pub reversed: bool,
    /// The recovery site is lost: home starts from `point` (id, cut time), the recovery
    /// VM is fenced instead of synced.
    #[serde(default)]
    pub unplanned_point: Option<(String, String)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FailbackMemory {
    pub moved: bool,
    pub shut_down: bool,
    /// The recovery VM's final point (id, cut time).
    pub point: Option<(String, String)>,
    pub home_started: bool,
    /// The unplanned failback stopped and fenced the recovery VM (its host answered).
    pub recovery_fenced: bool,
}

pub struct Failback;

pub const STEPS: &[StepInfo] = &[
    StepInfo::step("check-hosts"),
    StepInfo::with_undo("mark-failing-back"),
    StepInfo::step("wait-for-sync"),
    StepInfo::with_undo("shutdown-recovery"),
    StepInfo::step("final-sync"),
    StepInfo::step("apply-at-home"),
    StepInfo::with_undo("start-home").no_return(),
    StepInfo::step("restore-dns"),
    StepInfo::step("remove-recovery"),
    StepInfo::step("record"),
];

pub const UNPLANNED_STEPS: &[StepInfo] = &[
    StepInfo::step("check-hosts"),
    StepInfo::with_undo("mark-failing-back"),
    StepInfo::with_undo("fence-recovery"),
    StepInfo::step("apply-at-home"),
    StepInfo::with_undo("start-home").no_return(),
    StepInfo::step("restore-dns"),
    StepInfo::step("record"),
];

/// How long a failback waits for a reversed protection's sync that runs to end.
const SYNC_WAIT: Duration = Duration::from_secs(300);
/// How long an unplanned failback gives the lost site's agent to answer a fence.
const FENCE_TRY: Duration = Duration::from_secs(20);

/// How long the recovery VM's final sync and home's apply may take.
const LONG_CALL: Duration = Duration::from_secs(900);

async fn recovery(ctx: &Ctx, params: &FailbackParams) -> Result<Recovery, StepError> {
    ctx.db.recovery(&params.recovery_id).await?.ok_or_else(|| {
        StepError::Permanent("the VM on the recovery host is no longer recorded".into())
    })
}

/// The protection, its home host, the recovery and the recovery host, as they are now.
async fn parts(
    ctx: &Ctx,
    params: &FailbackParams,
) -> Result<(Protection, HostAccess, Recovery, HostAccess), StepError> {
    let p = protection(ctx, &params.protection_id).await?;
    let home = host(ctx, &p.host_id, "home host").await?;
    let rec = recovery(ctx, params).await?;
    let away = host(ctx, &rec.host_id, "recovery host").await?;
    Ok((p, home, rec, away))
}

impl Saga for Failback {
    type Params = FailbackParams;
    type Memory = FailbackMemory;

    fn steps(params: &FailbackParams) -> &'static [StepInfo] {
        if params.unplanned_point.is_some() {
            UNPLANNED_STEPS
        } else {
            STEPS
        }
    }

    async fn run(
        ctx: &Ctx,
        params: &FailbackParams,
        step: &'static str,
        mem: &mut FailbackMemory,
    ) -> Result<(), StepError> {
        if step == "record" {
            return record(ctx, params, mem).await;
        }
        if step == "remove-recovery" && ctx.db.recovery(&params.recovery_id).await?.is_none() {
            // Removed already: the step ran before (twice, or before a restart).
            return Ok(());
        }
        let (p, home, rec, away) = parts(ctx, params).await?;
        match step {
            "check-hosts" => {
                vault(ctx, &p, &home).await?;
                if params.unplanned_point.is_none() {
                    vault(ctx, &p, &away).await?;
                    // A planned failback takes the recovery VM's final point: its host
                    // must answer too.
                    let then = format!(". If it is lost, `lifeboat failback {} --unplanned` brings the VM home from its newest point", p.vm);
                    must_answer(&away, "recovery host", &then).await?;
                }
                // Home must answer before the recovery VM stops.
                must_answer(&home, "home host", "").await
            }
            "mark-failing-back" => {
                if p.state != ProtectionState::FailingBack {
                    transition(ctx, &p.id, Event::FailBack, Facts::reason("failing back")).await?;
                }
                mem.moved = true;
                Ok(())
            }
            // Replication from the recovery site starts no sync now; one that runs ends
            // before the VM stops under it.
            "wait-for-sync" => {
                wait_for_sync(ctx, &params.protection_id, SYNC_WAIT, "failback").await
            }
            "fence-recovery" => {
                let why = FenceRequest {
                    reason: format!(
                        "an unplanned failback brought the VM home to {}; this copy is kept, fenced",
                        home.host.hostname
                    ),
                };
                match client(&away, FENCE_TRY)?.fence(&rec.vm, &why).await {
                    Ok(r) => {
                        mem.recovery_fenced = true;
                        ctx.log(format!(
                            "{} fenced on {}{}",
                            rec.vm,
                            away.host.hostname,
                            if r.killed { " (it was running: killed)" } else { "" }
                        ))
                        .await;
                    }
                    // Not reached at all: the site is lost, and its copy is fenced when
                    // its host answers again (the recovery watcher).
                    Err(ClientError::Request { source, .. }) if source.is_connect() => {
                        ctx.log(format!(
                            "the recovery host {} does not answer ({source}); its copy is fenced when it answers",
                            away.host.hostname
                        ))
                        .await
                    }
                    // Its host has no such VM: nothing runs there.
                    Err(ClientError::Refused { status: 404, .. }) => {
                        ctx.log(format!("{} has no copy of the VM", away.host.hostname))
                            .await
                    }
                    // It answered, or may have (a timeout): the copy may still run, so
                    // home does not start. The step is tried again (a fence is
                    // idempotent), and an undo starts the copy again.
                    Err(e) => {
                        mem.recovery_fenced = true;
                        return Err(agent_failed(
                            format!("fencing {} on {}", rec.vm, away.host.hostname),
                            e,
                        ));
                    }
                }
                Ok(())
            }
            "shutdown-recovery" => {
                let timeout = params.shutdown_timeout_secs.max(1);
                ctx.log(format!(
                    "shutting {} down on {}",
                    rec.vm, away.host.hostname
                ))
                .await;
                client(&away, LONG_CALL)?
                    .shutdown_vm(
                        &rec.vm,
                        &ShutdownRequest {
                            timeout_secs: timeout,
                            job_id: Some(format!("{}-shutdown", ctx.op)),
                        },
                    )
                    .await
                    .map_err(|e| agent_failed("shutting the recovery VM down".into(), e))?;
                mem.shut_down = true;
                lifeboat_agent::failpoint::reached("failback-after-shutdown").await;
                Ok(())
            }
            "final-sync" => {
                ctx.log("final sync of the recovery VM").await;
                let req = SyncRequest {
                    sync_id: format!("{}-final", ctx.op),
                    vault: vault(ctx, &p, &away).await?,
                    point_name: p.point_name.clone(),
                    app_consistent: false,
                };
                let report = client(&away, LONG_CALL)?
                    .final_sync(&rec.vm, &req)
                    .await
                    .map_err(|e| agent_failed("the recovery VM's final sync".into(), e))?;
                crate::failover::record_final_point(&ctx.db, &p.id, &report.result)
                    .await
                    .map_err(|e| StepError::Transient(e.to_string()))?;
                if !report.equal {
                    return Err(StepError::Permanent(format!(
                        "the recovery VM's final point {} does not equal its disks",
                        report.result.point
                    )));
                }
                lifeboat_agent::failpoint::reached("failback-after-final-sync").await;
                ctx.log(format!(
                    "final point {}: {} byte(s) sent from the recovery site; writing it at home where it differs",
                    report.result.point, report.result.new_bytes_stored
                ))
                .await;
                mem.point = Some((
                    report.result.point.clone(),
                    report.result.cut_time.to_rfc3339(),
                ));
                Ok(())
            }
            "apply-at-home" => {
                let point = params
                    .unplanned_point
                    .clone()
                    .or_else(|| mem.point.clone())
                    .ok_or_else(|| {
                        StepError::Permanent("no final point to write at home".into())
                    })?;
                if params.unplanned_point.is_some() {
                    mem.point = Some(point.clone());
                    ctx.log(format!(
                        "writing point {} at home where it differs",
                        point.0
                    ))
                    .await;
                }
                let applied = client(&home, LONG_CALL)?
                    .apply_point(
                        &p.vm,
                        &ApplyPointRequest {
                            // One write per operation: a step run again follows it.
                            job_id: format!("{}-apply", ctx.op),
                            vault: vault(ctx, &p, &home).await?,
                            point: point.0.clone(),
                            point_name: p.point_name.clone(),
                        },
                    )
                    .await
                    .map_err(|e| agent_failed("writing the point at home".into(), e))?;
                lifeboat_agent::failpoint::reached("failback-after-apply").await;
                if !applied.equal {
                    return Err(StepError::Permanent(
                        "the home disks still differ from the point after writing it".into(),
                    ));
                }
                ctx.log(format!(
                    "home disks equal the point ({} chunk(s) written)",
                    applied.disks.iter().map(|d| d.written_chunks).sum::<u64>()
                ))
                .await;
                Ok(())
            }
            "start-home" => {
                // The home address, restored at this boot when the failover changed it
                // (docs/networking.md); a new cloud-init instance per failback.
                let guest_network = crate::network::settings(&p)
                    .map_err(StepError::Permanent)?
                    .for_move(lifeboat_types::MoveKind::Failback);
                if !guest_network.is_empty() {
                    ctx.log(format!(
                        "{} gets its home address at this boot (a cloud-init seed)",
                        p.vm
                    ))
                    .await;
                }
                let req = lifeboat_agent::handover_api::StartRequest {
                    unfence: true,
                    guest_network,
                    instance_id: Some(format!("lifeboat-failback-{}", ctx.op)),
                };
                client(&home, Duration::from_secs(180))?
                    .start_vm_with(&p.vm, &req)
                    .await
                    .map_err(|e| agent_failed(format!("starting {} at home", p.vm), e))?;
                mem.home_started = true;
                ctx.log(format!("{} runs at home on {}", p.vm, home.host.hostname))
                    .await;
                lifeboat_agent::failpoint::reached("failback-after-home-started").await;
                Ok(())
            }
            "restore-dns" => {
                super::common::switch_dns(ctx, &p, lifeboat_types::MoveKind::Failback).await
            }
            "remove-recovery" => {
                // The VM runs at home: a recovery host that does not answer keeps a stopped
                // copy, said in the log, and the failback still ends.
                match client(&away, Duration::from_secs(180))?.remove_recovery(&rec.id).await {
                    Ok(_) => ctx.db.delete_recovery(&rec.id).await?,
                    Err(e) => {
                        ctx.log(format!(
                            "removing the recovery VM failed ({e}); it is stopped — remove it by hand"
                        ))
                        .await
                    }
                }
                Ok(())
            }
            other => Err(StepError::Permanent(format!("no step {other}"))),
        }
    }

    async fn undo(
        ctx: &Ctx,
        params: &FailbackParams,
        step: &'static str,
        mem: &mut FailbackMemory,
    ) -> Result<(), StepError> {
        match step {
            // Neither is guarded by the memory: the step may have acted and the server
            // stopped before its memory was stored. The state, and an idempotent start,
            // make the undo right either way.
            "mark-failing-back" => {
                let p = protection(ctx, &params.protection_id).await?;
                if p.state == ProtectionState::FailingBack {
                    let why = "failed over (a failback was undone)".to_string();
                    let event = Event::FailbackUndone {
                        reversed: params.reversed,
                    };
                    transition(ctx, &p.id, event, Facts::reason(why)).await?;
                }
                mem.moved = false;
                Ok(())
            }
            "fence-recovery" if mem.recovery_fenced => {
                let (_, _, rec, away) = parts(ctx, params).await?;
                start_again(ctx, &away, &rec.vm, true).await?;
                mem.recovery_fenced = false;
                Ok(())
            }
            "shutdown-recovery" => {
                let (_, _, rec, away) = parts(ctx, params).await?;
                start_again(ctx, &away, &rec.vm, false).await?;
                mem.shut_down = false;
                Ok(())
            }
            "start-home" => {
                // The recovery VM starts again next: home must not run beside it.
                let (p, home, _, _) = parts(ctx, params).await?;
                client(&home, Duration::from_secs(60))?
                    .fence(
                        &p.vm,
                        &FenceRequest {
                            reason: "a failback was undone; the VM runs on its recovery host"
                                .into(),
                        },
                    )
                    .await
                    .map_err(|e| agent_failed(format!("fencing {} at home again", p.vm), e))?;
                mem.home_started = false;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn answer(
        ctx: &Ctx,
        params: &FailbackParams,
        mem: &FailbackMemory,
    ) -> Result<serde_json::Value, StepError> {
        let p = protection(ctx, &params.protection_id).await?;
        let home = host(ctx, &p.host_id, "home host").await?;
        let point = mem.point.as_ref().map(|x| x.0.clone()).unwrap_or_default();
        Ok(serde_json::json!({
            "vm": p.vm,
            "operation": ctx.op,
            "state": p.state,
            "message": format!("{} runs at home on {} from point {point}", p.vm, home.host.hostname),
        }))
    }

    fn done_line(_: &FailbackParams, mem: &FailbackMemory) -> String {
        format!(
            "home again from point {}",
            mem.point.as_ref().map(|x| x.0.as_str()).unwrap_or("?")
        )
    }
}

async fn record(ctx: &Ctx, params: &FailbackParams, mem: &FailbackMemory) -> Result<(), StepError> {
    if params.unplanned_point.is_some() {
        // The recovery VM stays, fenced: its writes after the point are on its disks.
        use lifeboat_types::RecoveryState as S;
        let to = if mem.recovery_fenced {
            S::Fenced
        } else {
            S::Fencing
        };
        let from = [S::Starting, S::Running, S::Committed];
        ctx.db.move_recovery(&params.recovery_id, &from, to).await?;
    }
    let p = protection(ctx, &params.protection_id).await?;
    if p.state != ProtectionState::FailingBack {
        return Ok(());
    }
    let point = mem.point.as_ref().map(|x| x.0.clone()).unwrap_or_default();
    let fenced = match (&params.unplanned_point, mem.recovery_fenced) {
        (None, _) => "",
        (Some(_), true) => "; the recovery site's copy is kept, fenced",
        (Some(_), false) => "; the recovery site's copy is fenced when its host answers",
    };
    let facts = Facts {
        reason: format!(
            "back home from point {point}{fenced}; `lifeboat reprotect {}` resumes replication",
            p.vm
        ),
        failover_kind: Some(None),
        fenced_at: Some(None),
        sync_now: false,
    };
    transition(ctx, &p.id, Event::CameHome, facts).await?;
    Ok(())
}
