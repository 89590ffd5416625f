//! `lifeboat protect`, `unprotect`, `status`, `points`: replication, driven through the
//! server's API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lifeboat_server::api::protection::{ProtectRequest, Protected, ProtectionList, ProtectionView};
use lifeboat_server::api::status::Overview;
use lifeboat_server::db::{Operation, PointRow};
use lifeboat_server::ops::unprotect::Unprotected;
use lifeboat_types::OperationStatus;

use crate::cli::{ProtectArgs, ServerConn, UnprotectArgs};
use crate::output::{bytes, table, Output};
use crate::server_client::ServerClient;

/// `protect --wait` gave up at its --timeout before the first point (exit::TIMED_OUT).
#[derive(Debug)]
pub struct TimedOut(pub String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

/// "12 s", "4 min", "3.0 h" — an RPO as people read it.
pub fn age(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0} s"),
        Some(s) if s < 7200.0 => format!("{:.0} min", s / 60.0),
        Some(s) => format!("{:.1} h", s / 3600.0),
    }
}

/// `VM` or `HOST/VM` → (vm, host).
fn split_vm(text: &str) -> (String, Option<String>) {
    match text.split_once('/') {
        Some((h, v)) => (v.to_string(), Some(h.to_string())),
        None => (text.to_string(), None),
    }
}

/// The protection of `vm` (`VM` or `HOST/VM`).
pub async fn find_protection(server: &ServerClient, vm: &str) -> Result<ProtectionView> {
    let (name, host) = split_vm(vm);
    let all: ProtectionList = server.get_all("/api/v1/protections").await?;
    let matches: Vec<ProtectionView> = all
        .protections
        .into_iter()
        .filter(|p| p.vm == name)
        .filter(|p| {
            host.as_deref()
                .is_none_or(|h| p.host == h || p.host_id == h)
        })
        .collect();
    match matches.len() {
        0 => bail!("{vm} is not protected; see `lifeboat vms list`"),
        1 => Ok(matches.into_iter().next().expect("one")),
        _ => bail!("several hosts have a protected VM {name}; say which as HOST/VM"),
    }
}

pub async fn protect(out: Output, home: &Path, args: ProtectArgs) -> Result<()> {
    let server = ServerClient::new(&args.conn, home)?;
    let timeout = args.timeout;
    let (vm, host) = split_vm(&args.vm);
    let vm_name = vm.clone();
    let passphrase = crate::secrets::passphrase("Vault passphrase", false)?;
    let created: Protected = server
        .post(
            "/api/v1/protections",
            &ProtectRequest {
                vm,
                host,
                vault: args.vault,
                vault_passphrase: passphrase.into(),
                recovery_host: args.recovery_host,
                policy: Some(args.policy.clone()),
                network_map: crate::failover_cmd::network_map(&args.network_map)?,
            },
        )
        .await?;
    let id = created.protection_id.clone();
    if args.no_wait {
        out.show(&created, |c| {
            println!(
                "Replication of {vm_name} enabled (policy {}); the initial sync runs. Operation {}.",
                args.policy, c.operation
            );
            println!(
                "Watch it with `lifeboat status`, or follow it with `lifeboat operations follow {}`.",
                c.operation
            );
        });
        return Ok(());
    }
    let view = wait_protected(&server, &id, Some(created.operation.as_str()), out, timeout).await?;
    out.show(&view, |v| {
        println!(
            "{} is Protected: first recovery point {} (cut at {}).",
            v.vm,
            v.last_point.as_deref().unwrap_or("-"),
            v.last_point_time.as_deref().unwrap_or("-")
        );
    });
    Ok(())
}

/// Polls the protection until its first point, drawing the initial sync's progress.
/// With its enable `operation`, the wait ends when that operation has succeeded too, and
/// an enable that fails (and is undone: the protection is gone) ends it with the
/// operation's error.
pub async fn wait_protected(
    server: &ServerClient,
    id: &str,
    operation: Option<&str>,
    out: Output,
    timeout: Option<Duration>,
) -> Result<ProtectionView> {
    let started = Instant::now();
    let bar = if out.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        b
    };
    // An enable that failed or was cancelled ends the wait with the operation's word.
    let ended = |op: &Operation| match op.status {
        OperationStatus::Running | OperationStatus::Succeeded => None,
        OperationStatus::Cancelled => Some(anyhow::anyhow!(
            "operation {} was cancelled: {}",
            op.id,
            op.error
        )),
        OperationStatus::Failed => Some(anyhow::anyhow!("{} (operation {})", op.error, op.id)),
    };
    loop {
        // The enable is done when its operation says so, not at the first point: a
        // failure after it still undoes the enable (qemu_saga_campaign's `enable
        // FailAfter("initial-sync")`), and "Protected" must not have been said then.
        let mut enabled = true;
        if let Some(op) = operation {
            let op: Operation = server.get(&format!("/api/v1/operations/{op}")).await?;
            if let Some(e) = ended(&op) {
                bar.abandon();
                return Err(e);
            }
            enabled = op.status == OperationStatus::Succeeded;
        }
        let v: ProtectionView = match server.get(&format!("/api/v1/protections/{id}")).await {
            Ok(v) => v,
            Err(e) => {
                // Not recorded yet (the answer to the enable came without it), or undone
                // between the two reads (its undo removes the protection before it records
                // the failure; seen in qemu_saga_campaign): while the operation runs, ask
                // again; once it has ended, it says why.
                if let Some(op) = operation {
                    let op: Operation = server.get(&format!("/api/v1/operations/{op}")).await?;
                    if let Some(why) = ended(&op) {
                        bar.abandon();
                        return Err(why);
                    }
                    let waited_out = timeout.is_some_and(|t| started.elapsed() > t);
                    if op.status == OperationStatus::Running && !waited_out {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                }
                return Err(e);
            }
        };
        let state = v.state.as_str();
        if v.last_point.is_some() && enabled {
            bar.finish_and_clear();
            return Ok(v);
        }
        if let Some(sync) = &v.sync {
            bar.set_length(sync.bytes_total.max(0) as u64);
            bar.set_position(sync.bytes_done.max(0) as u64);
        }
        bar.set_message(if v.reason.is_empty() {
            state.replace('_', " ")
        } else {
            format!("{state}: {}", v.reason)
        });
        if timeout.is_some_and(|t| started.elapsed() > t) {
            bar.abandon();
            return Err(TimedOut(format!(
                "no recovery point yet after {:.0} s (state {state}); replication goes on — see `lifeboat status`",
                started.elapsed().as_secs_f64()
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn unprotect(out: Output, home: &Path, args: UnprotectArgs) -> Result<()> {
    let server = ServerClient::new(&args.conn, home)?;
    let p = find_protection(&server, &args.vm).await?;
    let path = format!(
        "/api/v1/protections/{}?delete_points={}",
        p.id, args.delete_points
    );
    let op: lifeboat_server::db::Operation = server.delete(&path).await?;
    let Some(report) = crate::operations_cmd::finish(out, &server, op, args.no_wait).await? else {
        return Ok(());
    };
    let report: Unprotected =
        serde_json::from_value(report).context("the server's answer to unprotect")?;
    out.show(&report, |r| {
        println!(
            "Replication of {} disabled; change tracking {}.{}",
            r.vm,
            if r.tracking_removed {
                "removed"
            } else {
                "left in place"
            },
            if args.delete_points {
                format!(
                    " {} recovery point(s) deleted (run `lifeboat vault gc` to free the space).",
                    r.points_deleted
                )
            } else {
                " Its recovery points stay in the vault.".into()
            }
        );
        if let Some(n) = &r.note {
            println!("Note: {n}");
        }
    });
    Ok(())
}

pub async fn status(out: Output, home: &Path, conn: ServerConn) -> Result<()> {
    let server = ServerClient::new(&conn, home)?;
    let s: Overview = server.get_all("/api/v1/status").await?;
    out.show(&s, |s| {
        let n = |state: &str| s.by_state.get(state).copied().unwrap_or(0);
        println!(
            "{} host(s), {} protected VM(s): {} protected, {} degraded, {} in initial sync, {} enabling.",
            s.hosts,
            s.protected_vms,
            n("protected"),
            n("degraded"),
            n("initial_sync"),
            n("enabling")
        );
        let away = n("protected_reversed")
            + n("degraded_reversed")
            + n("failed_over")
            + n("reprotecting");
        if away > 0 {
            println!(
                "{away} VM(s) run on their recovery host ({} protected from there, {} of them degraded).",
                n("protected_reversed") + n("degraded_reversed"),
                n("degraded_reversed")
            );
        }
        if let Some(w) = &s.worst_rpo {
            println!("Worst RPO: {} on {}/{}.", age(Some(w.rpo_seconds)), w.host, w.vm);
        }
        if !s.protections.is_empty() {
            let mut rows = vec![["HOST", "VM", "STATE", "RPO", "LAST POINT", "POLICY", "REASON"]
                .map(String::from)
                .to_vec()];
            for p in &s.protections {
                let state = match &p.sync {
                    Some(sync) if p.last_point.is_none() => {
                        let (done, total) = (sync.bytes_done as f64, sync.bytes_total as f64);
                        format!("replicating {:.0}%", if total > 0.0 { 100.0 * done / total } else { 0.0 })
                    }
                    _ => p.state.as_str().to_string(),
                };
                rows.push(vec![
                    p.host.clone(),
                    p.vm.clone(),
                    state,
                    age(p.rpo_seconds),
                    p.last_point_time.clone().unwrap_or_else(|| "-".into()),
                    p.policy.clone(),
                    if p.reason.is_empty() { "-".into() } else { p.reason.clone() },
                ]);
            }
            table(&rows);
        }
        for op in &s.running_operations {
            println!("Running: {} of {} — {}", op.kind, op.vm, op.step);
        }
    });
    Ok(())
}

pub async fn points(out: Output, home: &Path, vm: &str, conn: ServerConn) -> Result<()> {
    let server = ServerClient::new(&conn, home)?;
    let p = find_protection(&server, vm).await?;
    let points: Vec<PointRow> = server
        .get(&format!("/api/v1/protections/{}/points", p.id))
        .await
        .context("listing points")?;
    out.show(&points, |points| {
        if points.is_empty() {
            println!("{vm} has no recovery point yet.");
            return;
        }
        let mut rows = vec![[
            "POINT",
            "CUT TIME",
            "CONSISTENCY",
            "KIND",
            "READ",
            "NEW",
            "NOTE",
        ]
        .map(String::from)
        .to_vec()];
        for x in points {
            rows.push(vec![
                x.point.clone(),
                x.cut_time.clone(),
                x.consistency.clone(),
                x.kind.clone(),
                bytes(x.bytes_read.max(0) as u64),
                bytes(x.new_bytes.max(0) as u64),
                x.note.clone().unwrap_or_default(),
            ]);
        }
        table(&rows);
    });
    Ok(())
}
