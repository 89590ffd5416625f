//! Failover as an operation: a test copy beside production, a planned move (ordered
//! shutdown, final sync proven equal, zero data loss) or an unplanned one (from a chosen
//! point, the source fenced). DESIGN.md, "Failover guarantees".
//!
//! | step | test | planned | unplanned | undo |
//! |---|---|---|---|---|
//! | `check-hosts` | ✓ | ✓ | ✓ | — |
//! | `mark-failing-over` | | ✓ | ✓ | back to `protected` |
//! | `wait-for-sync` | | ✓ | | — |
//! | `shutdown-source` | | ✓ | | start the source again (unfenced) |
//! | `final-sync` | | ✓ | | — (the point stays: it is a good point) |
//! | `fence-source` | | ✓ | ✓ | unfence; start it again if it ran |
//! | `start-recovery` | ✓ | ✓ (no return) | ✓ (no return) | remove what was made |
//! | `record` | ✓ | ✓ | ✓ | — |
//!
//! The point of no return of a move is starting the VM on the recovery host: from then on
//! it may take writes, and the source must never run again.

use std::collections::BTreeMap;
use std::time::Duration;

use lifeboat_agent::handover::{FenceRequest, ShutdownRequest};
use lifeboat_agent::recovery::{RecoveryKind, RecoveryRequest};
use lifeboat_agent::sync::SyncRequest;
use lifeboat_types::RecoveryState;
use serde::{Deserialize, Serialize};

use super::common::{agent_failed, client, host, protection, transition, vault, wait_for_sync};
use super::{Ctx, Saga, StepError, StepInfo};
use crate::db::{Event, Facts, HostAccess, Protection, ProtectionState, Recovery};

/// What a failover was asked to do (checked before the operation started).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverParams {
    pub kind: RecoveryKind,
    pub protection_id: lifeboat_types::ProtectionId,
    /// The recovery's id, chosen when the operation started: running a step again
    /// brings up the same recovery, never a second.
    pub recovery_id: lifeboat_types::RecoveryId,
    /// The VM's name on the recovery host.
    pub vm: String,
    /// The point chosen (test, unplanned) and its cut time; a planned move takes its own.
    pub point: Option<(String, String)>,
    pub shutdown_timeout_secs: u64,
    pub network_map: BTreeMap<String, String>,
    pub expose: Vec<u16>,
}

/// What the steps did so far.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FailoverMemory {
    /// The protection went to `failing_over` (undone by going back).
    pub moved: bool,
    /// The source was running before the shutdown or the fence (undone by starting it).
    pub source_was_running: bool,
    pub shut_down: bool,
    /// The fence was set on the source (undone by lifting it).
    pub fenced: bool,
    /// The fence step ended (whether the source answered or not): with `fenced` false,
    /// the source was not reached and nothing there needs undoing.
    pub fence_done: bool,
    /// The point the VM starts from: chosen, or the planned move's final point.
    pub point: Option<(String, String)>,
}

pub struct Failover;

pub const TEST_STEPS: &[StepInfo] = &[
    StepInfo::step("check-hosts"),
    StepInfo::with_undo("start-recovery"),
    StepInfo::step("record"),
];

pub const PLANNED_STEPS: &[StepInfo] = &[
    StepInfo::step("check-hosts"),
    StepInfo::with_undo("mark-failing-over"),
    StepInfo::step("wait-for-sync"),
    StepInfo::with_undo("shutdown-source"),
    StepInfo::step("final-sync"),
    StepInfo::with_undo("fence-source"),
    StepInfo::with_undo("start-recovery").no_return(),
    StepInfo::step("switch-dns"),
    StepInfo::step("record"),
];

pub const UNPLANNED_STEPS: &[StepInfo] = &[
    StepInfo::step("check-hosts"),
    StepInfo::with_undo("mark-failing-over"),
    StepInfo::with_undo("fence-source"),
    StepInfo::with_undo("start-recovery").no_return(),
    StepInfo::step("switch-dns"),
    StepInfo::step("record"),
];

/// How long bringing a VM up may take on the recovery host (opening the vault, making the
/// overlays, starting QEMU): seconds normally, more on a busy host.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a source's final sync may take (a stopped VM; only the last changes).
const FINAL_SYNC_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a move waits for a sync that runs to end.
const SYNC_WAIT: Duration = Duration::from_secs(300);

impl Saga for Failover {
    type Params = FailoverParams;
    type Memory = FailoverMemory;

    fn steps(params: &FailoverParams) -> &'static [StepInfo] {
        match params.kind {
            RecoveryKind::Test => TEST_STEPS,
            RecoveryKind::Planned => PLANNED_STEPS,
            RecoveryKind::Unplanned => UNPLANNED_STEPS,
        }
    }

    async fn run(
        ctx: &Ctx,
        params: &FailoverParams,
        step: &'static str,
        mem: &mut FailoverMemory,
    ) -> Result<(), StepError> {
        let p = protection(ctx, &params.protection_id).await?;
        let source = || host(ctx, &p.host_id, "host");
        let recovery_host = host(ctx, &p.recovery_host_id, "recovery host").await?;
        match step {
            // Nothing is changed yet: a host that does not answer is said at once, for the
            // operator to decide, rather than retried.
            "check-hosts" => check_hosts(ctx, params, &p, &recovery_host)
                .await
                .map_err(|e| StepError::Permanent(e.to_string())),
            "mark-failing-over" => {
                if p.state == ProtectionState::FailingOver {
                    mem.moved = true;
                    return Ok(());
                }
                let facts = Facts {
                    reason: format!("{} failover", params.kind),
                    failover_kind: Some(Some(params.kind)),
                    fenced_at: Some(None),
                    sync_now: false,
                };
                transition(ctx, &params.protection_id, Event::FailOver, facts).await?;
                mem.moved = true;
                Ok(())
            }
            "wait-for-sync" => {
                wait_for_sync(ctx, &params.protection_id, SYNC_WAIT, "failover").await
            }
            "shutdown-source" => {
                let src = source().await?;
                let timeout = params.shutdown_timeout_secs.max(1);
                ctx.log(format!(
                    "shutting {} down (ACPI, forced after {timeout} s)",
                    p.vm
                ))
                .await;
                let down = client(&src, FINAL_SYNC_TIMEOUT)?
                    .shutdown_vm(
                        &p.vm,
                        &ShutdownRequest {
                            timeout_secs: timeout,
                            // One shutdown per operation, however often the step runs.
                            job_id: Some(format!("{}-shutdown", ctx.op)),
                        },
                    )
                    .await
                    .map_err(|e| {
                        agent_failed(
                            format!("shutting {} down on {}", p.vm, src.host.hostname),
                            e,
                        )
                    })?;
                if !mem.shut_down {
                    mem.source_was_running = down.outcome != "already_stopped";
                }
                mem.shut_down = true;
                ctx.log(format!("{} is stopped ({})", p.vm, down.outcome))
                    .await;
                Ok(())
            }
            "final-sync" => final_sync(ctx, params, &p, &source().await?, mem).await,
            "fence-source" => fence(ctx, params, &p, source().await.ok(), mem).await,
            "start-recovery" => start_recovery(ctx, params, &p, &recovery_host, mem).await,
            "switch-dns" => {
                super::common::switch_dns(ctx, &p, lifeboat_types::MoveKind::Failover).await
            }
            "record" => record(ctx, params, &recovery_host).await,
            other => Err(StepError::Permanent(format!("no step {other}"))),
        }
    }

    async fn undo(
        ctx: &Ctx,
        params: &FailoverParams,
        step: &'static str,
        mem: &mut FailoverMemory,
    ) -> Result<(), StepError> {
        let p = protection(ctx, &params.protection_id).await?;
        match step {
            // Not guarded by what the memory says: the step may have acted and the server
            // stopped before its memory was stored. The state says.
            "mark-failing-over" => {
                if p.state == ProtectionState::FailingOver {
                    transition(
                        ctx,
                        &params.protection_id,
                        Event::FailoverUndone,
                        Facts {
                            reason: String::new(),
                            failover_kind: Some(None),
                            fenced_at: Some(None),
                            sync_now: true,
                        },
                    )
                    .await?;
                }
                mem.moved = false;
                Ok(())
            }
            // The source holds every write (a planned move stopped it in order; an
            // unplanned one that never started elsewhere took none away): it runs again,
            // unfenced. Not guarded by the memory (the step may have acted before the
            // server stopped; starting is idempotent), except when it is known the source
            // was stopped before the failover: then it only stays fenced, said in the log.
            // The source was not reached: nothing changed there (and it may be dead).
            "fence-source" if mem.fence_done && !mem.fenced => Ok(()),
            "shutdown-source" | "fence-source" => {
                let src = host(ctx, &p.host_id, "host").await?;
                let known_stopped = (mem.shut_down || mem.fenced) && !mem.source_was_running;
                if known_stopped {
                    ctx.log(format!(
                        "{} was stopped before the failover and stays fenced on {}: starting it through its agent with `unfence` lifts the fence",
                        p.vm, src.host.hostname
                    ))
                    .await;
                } else {
                    ctx.log(format!("starting {} again on {}", p.vm, src.host.hostname))
                        .await;
                    client(&src, PROVISION_TIMEOUT)?
                        .start_vm(&p.vm, true)
                        .await
                        .map_err(|e| agent_failed(format!("starting {} again", p.vm), e))?;
                }
                mem.shut_down = false;
                mem.fenced = false;
                Ok(())
            }
            "start-recovery" => {
                let rhost = host(ctx, &p.recovery_host_id, "recovery host").await?;
                ctx.log(format!(
                    "removing {} from {}",
                    params.vm, rhost.host.hostname
                ))
                .await;
                client(&rhost, PROVISION_TIMEOUT)?
                    .remove_recovery(&params.recovery_id)
                    .await
                    .map_err(|e| {
                        agent_failed(
                            format!("removing {} from {}", params.vm, rhost.host.hostname),
                            e,
                        )
                    })?;
                ctx.db.delete_recovery(&params.recovery_id).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn answer(
        ctx: &Ctx,
        params: &FailoverParams,
        _mem: &FailoverMemory,
    ) -> Result<serde_json::Value, StepError> {
        let rec = ctx
            .db
            .recovery(&params.recovery_id)
            .await?
            .ok_or_else(|| StepError::Permanent("the recovery vanished".into()))?;
        let hosts = ctx.db.hosts_with_access().await?;
        serde_json::to_value(crate::failover::recovery_view(rec, &hosts))
            .map_err(|e| StepError::Permanent(e.to_string()))
    }

    fn done_line(params: &FailoverParams, mem: &FailoverMemory) -> String {
        let point = mem.point.as_ref().or(params.point.as_ref());
        format!(
            "{} runs on the recovery host from point {}",
            params.vm,
            point.map(|p| p.0.as_str()).unwrap_or("?")
        )
    }
}

/// The VM's network settings for this move against its NICs and the recovery host's
/// networks (docs/networking.md): refused before anything changes. With the source
/// silent (an unplanned failover), its NICs are unknown: said in the log, and the
/// recovery host still refuses a NIC on a network it lacks when it starts the VM.
async fn check_network(
    ctx: &Ctx,
    params: &FailoverParams,
    p: &Protection,
    rhost: &HostAccess,
) -> Result<(), StepError> {
    use crate::network::CheckError;
    let kind = if params.kind == RecoveryKind::Test {
        lifeboat_types::MoveKind::Test
    } else {
        lifeboat_types::MoveKind::Failover
    };
    let nics = match host(ctx, &p.host_id, "host").await {
        Ok(src) => crate::network::vm_nics(&src, &p.vm, crate::network::ASK).await,
        Err(e) => Err(CheckError::Unreachable(e.to_string())),
    };
    let nics = match nics {
        Ok(n) => n,
        Err(e) => {
            ctx.log(format!(
                "network settings not checked against the VM's NICs: {e}; the recovery host checks each NIC's network when it starts the VM"
            ))
            .await;
            return Ok(());
        }
    };
    let settings = crate::network::settings(p)
        .map_err(|e| StepError::Permanent(format!("{e}; {} was not touched", p.vm)))?;
    match crate::network::check_move(&settings, &[kind], &nics, &params.network_map, rhost).await {
        Ok(notes) => {
            for n in notes {
                ctx.log(n).await;
            }
            Ok(())
        }
        Err(e) => Err(StepError::Permanent(format!(
            "{e}; {} was not touched",
            p.vm
        ))),
    }
}

/// Both hosts answer (the recovery host before anything is touched), the recovery host's
/// vault key is there, and a move run again after an interrupted one finds no copy left.
async fn check_hosts(
    ctx: &Ctx,
    params: &FailoverParams,
    p: &Protection,
    rhost: &HostAccess,
) -> Result<(), StepError> {
    vault(ctx, p, rhost).await?;
    let agent = client(rhost, Duration::from_secs(10))?;
    agent.recoveries().await.map_err(|e| {
        agent_failed(
            format!(
                "the recovery host {} does not answer; {} was not touched",
                rhost.host.hostname, p.vm
            ),
            e,
        )
    })?;
    check_network(ctx, params, p, rhost).await?;
    if params.kind == RecoveryKind::Test {
        // A test copy never touches the production record.
        return Ok(());
    }
    super::common::check_dns(ctx, p, params.kind == RecoveryKind::Planned).await?;
    // What an earlier, interrupted failover left on the recovery host goes first. A copy
    // that runs may hold writes: it is never removed here.
    let stale: Vec<Recovery> = ctx
        .db
        .recoveries_of(&p.id)
        .await?
        .into_iter()
        // A copy fenced after an unplanned failback holds writes no point has: it stays
        // (adding the new one is refused until `failover cleanup` removes it).
        .filter(|r| r.kind != RecoveryKind::Test && r.id != params.recovery_id && r.is_the_vm())
        .collect();
    let agent = client(rhost, PROVISION_TIMEOUT)?;
    for old in stale {
        if let Ok(st) = agent.recovery_status(&old.id).await {
            if st.vm_state == "running" {
                return Err(StepError::Permanent(format!(
                    "{} already runs on {} from an interrupted failover; it is recorded as failed over in a moment (see `lifeboat status`)",
                    old.vm, rhost.host.hostname
                )));
            }
        }
        agent.remove_recovery(&old.id).await.map_err(|e| {
            agent_failed(
                format!(
                    "removing what an earlier failover left on {}",
                    rhost.host.hostname
                ),
                e,
            )
        })?;
        ctx.db.delete_recovery(&old.id).await?;
    }
    Ok(())
}

/// The stopped source's final point, proven equal to its disks.
async fn final_sync(
    ctx: &Ctx,
    params: &FailoverParams,
    p: &Protection,
    src: &HostAccess,
    mem: &mut FailoverMemory,
) -> Result<(), StepError> {
    let access = vault(ctx, p, src).await?;
    lifeboat_agent::failpoint::reached("planned-after-shutdown").await;
    ctx.log("final sync of the stopped VM").await;
    let req = SyncRequest {
        // One id per operation: the agent's journal knows a final sync asked twice.
        sync_id: format!("{}-final", ctx.op),
        vault: access,
        point_name: p.point_name.clone(),
        app_consistent: false,
    };
    let report = client(src, FINAL_SYNC_TIMEOUT)?
        .final_sync(&p.vm, &req)
        .await
        .map_err(|e| agent_failed(format!("the final sync of {}", p.vm), e))?;
    // The point is in the vault: the server knows it from now on, whatever comes next.
    crate::failover::record_final_point(&ctx.db, &params.protection_id, &report.result)
        .await
        .map_err(|e| StepError::Transient(e.to_string()))?;
    lifeboat_agent::failpoint::reached("planned-after-final-sync").await;
    if !report.equal {
        let bad: Vec<String> = report
            .disks
            .iter()
            .filter(|d| d.differing_chunks > 0)
            .map(|d| {
                format!(
                    "{}: {} chunk(s) differ, first at byte {}",
                    d.disk,
                    d.differing_chunks,
                    d.first_difference.unwrap_or(0)
                )
            })
            .collect();
        return Err(StepError::Permanent(format!(
            "the final point {} does not equal the stopped VM's disks ({}); nothing was started on the recovery host",
            report.result.point,
            bad.join("; ")
        )));
    }
    ctx.log(format!(
        "final point {} equals the source disks ({} chunk(s) compared by digest)",
        report.result.point,
        report.disks.iter().map(|d| d.chunks).sum::<u64>()
    ))
    .await;
    mem.point = Some((
        report.result.point.clone(),
        report.result.cut_time.to_rfc3339(),
    ));
    Ok(())
}

/// Records the source fenced: a compare-and-set on the row as it is now, read again when
/// another actor (the scheduler's bookkeeping) wrote it in between.
async fn record_fenced(ctx: &Ctx, id: &str) -> Result<(), StepError> {
    for _ in 0..10 {
        let row = ctx
            .db
            .protection(id)
            .await?
            .ok_or_else(|| StepError::Permanent("the protection is gone".into()))?;
        if row.fenced_at.is_some() {
            return Ok(());
        }
        let at = chrono::Utc::now().to_rfc3339();
        if ctx
            .db
            .record_source_fenced(id, row.generation, row.state, &at)
            .await?
        {
            return Ok(());
        }
    }
    Err(StepError::Transient(
        "the protection's row kept changing while the fence was recorded".into(),
    ))
}

/// Fences the source so nothing starts it. A source that does not answer is fenced by
/// the replication watcher when it returns: that never fails the move.
async fn fence(
    ctx: &Ctx,
    params: &FailoverParams,
    p: &Protection,
    src: Option<HostAccess>,
    mem: &mut FailoverMemory,
) -> Result<(), StepError> {
    let Some(src) = src else {
        ctx.log("the source host is no longer enrolled").await;
        mem.fence_done = true;
        return Ok(());
    };
    let timeout = match params.kind {
        // The source of an unplanned failover may be dead: ask once, briefly.
        RecoveryKind::Unplanned => Duration::from_secs(5),
        _ => Duration::from_secs(60),
    };
    let req = FenceRequest {
        reason: format!(
            "failed over ({}) at {}; it runs on the recovery host now",
            params.kind,
            chrono::Utc::now().to_rfc3339()
        ),
    };
    match client(&src, timeout)?.fence(&p.vm, &req).await {
        Ok(r) => {
            if !mem.fenced && !mem.shut_down {
                mem.source_was_running = r.killed;
            }
            mem.fenced = true;
            record_fenced(ctx, &p.id).await?;
            ctx.log(format!(
                "source fenced on {}{}",
                src.host.hostname,
                if r.killed {
                    " (its VM was running: killed)"
                } else {
                    ""
                }
            ))
            .await;
        }
        Err(e) => {
            ctx.log(format!(
                "source host {} unreachable ({e}): it will be fenced when it returns",
                src.host.hostname
            ))
            .await
        }
    }
    mem.fence_done = true;
    lifeboat_agent::failpoint::reached("planned-after-fence").await;
    Ok(())
}

/// Brings the VM up on the recovery host (the same recovery id when run again).
async fn start_recovery(
    ctx: &Ctx,
    params: &FailoverParams,
    p: &Protection,
    rhost: &HostAccess,
    mem: &mut FailoverMemory,
) -> Result<(), StepError> {
    let point = match params.kind {
        RecoveryKind::Planned => mem.point.clone(),
        _ => params.point.clone(),
    }
    .ok_or_else(|| StepError::Permanent("no point to start from".into()))?;
    mem.point = Some(point.clone());
    let access = vault(ctx, p, rhost).await?;
    if ctx.db.recovery(&params.recovery_id).await?.is_none() {
        let rec = Recovery {
            id: params.recovery_id.clone(),
            protection_id: p.id.clone(),
            kind: params.kind,
            host_id: rhost.host.id.clone(),
            vm: params.vm.clone(),
            origin_host_id: p.host_id.clone(),
            origin_vm: p.vm.clone(),
            point: point.0.clone(),
            point_time: point.1.clone(),
            state: lifeboat_types::RecoveryState::Starting,
            vm_state: "stopped".into(),
            forwards: Vec::new(),
            ..Default::default()
        };
        ctx.db.add_recovery(&rec).await.map_err(|e| match e {
            crate::db::DbError::Conflict(m) => StepError::Permanent(m),
            e => e.into(),
        })?;
    }
    ctx.log(format!(
        "bringing {} up on {} from point {}",
        params.vm, rhost.host.hostname, point.0
    ))
    .await;
    let ask = RecoveryRequest {
        recovery_id: params.recovery_id.to_string(),
        vault: access,
        point: point.0.clone(),
        vm: params.vm.clone(),
        kind: params.kind,
        resume_only: false,
        network_map: params.network_map.clone(),
        expose: params.expose.clone(),
        guest_network: crate::network::settings(p)
            .map_err(StepError::Permanent)?
            .for_move(if params.kind == RecoveryKind::Test {
                lifeboat_types::MoveKind::Test
            } else {
                lifeboat_types::MoveKind::Failover
            }),
        // One job per recovery: the step run again finds it, running or done.
        job_id: Some(format!("provision-{}", params.recovery_id)),
    };
    let status = client(rhost, PROVISION_TIMEOUT)?
        .ensure_recovery(&ask)
        .await
        .map_err(|e| {
            agent_failed(
                format!("bringing {} up on {}", params.vm, rhost.host.hostname),
                e,
            )
        })?;
    lifeboat_agent::failpoint::reached(&format!("{}-after-recovery-started", params.kind)).await;
    if let Some(mut rec) = ctx.db.recovery(&params.recovery_id).await? {
        crate::failover::apply_status(&mut rec, &status);
        ctx.db.record_observation(&rec).await?;
    }
    Ok(())
}

/// The recovery runs; a move also makes the protection `failed_over`.
async fn record(ctx: &Ctx, params: &FailoverParams, rhost: &HostAccess) -> Result<(), StepError> {
    ctx.db
        .move_recovery(
            &params.recovery_id,
            &[RecoveryState::Starting],
            RecoveryState::Running,
        )
        .await?;
    if params.kind != RecoveryKind::Test {
        let p = protection(ctx, &params.protection_id).await?;
        if p.state == ProtectionState::FailingOver {
            transition(
                ctx,
                &params.protection_id,
                Event::FailedOverTo,
                Facts {
                    reason: format!("failed over to {}", rhost.host.hostname),
                    ..Facts::default()
                },
            )
            .await?;
        }
    }
    Ok(())
}
