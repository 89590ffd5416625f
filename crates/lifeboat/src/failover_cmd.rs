//! `lifeboat failover`: bring a protected VM up on its recovery host, through the server.

use std::path::Path;

use anyhow::{bail, Context, Result};
use lifeboat_server::api::failover::{CleanedUp, FailoverRequest, StepDone};
use lifeboat_server::failover::RecoveryView;
use serde_json::Value;

use crate::cli::{FailoverAction, FailoverArgs, ServerConn};
use crate::output::{table, Output};
use crate::protect_cmd::find_protection;
use crate::server_client::ServerClient;

pub async fn run(out: Output, home: &Path, args: FailoverArgs) -> Result<()> {
    if let Some(FailoverAction::List { conn }) = args.action {
        let server = ServerClient::new(&conn, home)?;
        let all: Vec<RecoveryView> = server.get("/api/v1/recoveries").await?;
        out.show(&all, |all| {
            if all.is_empty() {
                println!("Nothing runs on a recovery host.");
                return;
            }
            let mut rows = vec![[
                "HOST",
                "VM",
                "KIND",
                "FROM",
                "POINT TIME",
                "STATE",
                "LOCAL",
                "ERROR",
            ]
            .map(String::from)
            .to_vec()];
            for v in all {
                let r = &v.recovery;
                let local = if r.hydrated {
                    "100%".to_string()
                } else {
                    let (d, t) = (r.hydrated_bytes as f64, r.hydration_total as f64);
                    format!("{:.0}%", if t > 0.0 { 100.0 * d / t } else { 0.0 })
                };
                rows.push(vec![
                    v.host.clone(),
                    r.vm.clone(),
                    r.kind.to_string(),
                    format!("{}/{}", v.origin_host, r.origin_vm),
                    r.point_time.clone(),
                    format!("{} ({})", r.state, r.vm_state),
                    local,
                    if r.error.is_empty() {
                        "-".into()
                    } else {
                        r.error.clone()
                    },
                ]);
            }
            table(&rows);
        });
        return Ok(());
    }
    if let Some(FailoverAction::Commit { vm, no_wait, conn }) = args.action {
        return step(
            out,
            home,
            &vm,
            "failover/commit",
            &serde_json::json!({}),
            conn,
            no_wait,
        )
        .await;
    }
    if let Some(FailoverAction::Cleanup {
        vm,
        fenced,
        no_wait,
        conn,
    }) = args.action
    {
        let server = ServerClient::new(&conn, home)?;
        let p = find_protection(&server, &vm).await?;
        let path = format!(
            "/api/v1/protections/{}/failover/cleanup?fenced={fenced}",
            p.id
        );
        let Some(done) =
            post_and_follow::<CleanedUp>(out, &server, &path, &serde_json::json!({}), no_wait)
                .await?
        else {
            return Ok(());
        };
        out.show(&done, |d| {
            println!(
                "{} removed from the recovery host, with its disks; {} goes on as before.",
                d.removed, d.vm
            )
        });
        return Ok(());
    }
    let Some(vm) = args.vm else {
        bail!("name the VM to fail over: `lifeboat failover VM --test`");
    };
    let server = ServerClient::new(&args.conn, home)?;
    let p = find_protection(&server, &vm).await?;
    let kind = if args.planned {
        "planned"
    } else if args.unplanned {
        "unplanned"
    } else {
        "test"
    };
    let req = FailoverRequest {
        network_map: network_map(&args.network_map)?,
        expose: args.expose.clone(),
        kind: kind.into(),
        point: args.point.clone(),
        shutdown_timeout_secs: Some(args.shutdown_timeout.as_secs()),
    };
    let op: lifeboat_server::db::Operation = server
        .post(&format!("/api/v1/protections/{}/failover", p.id), &req)
        .await?;
    let Some(r) = crate::operations_cmd::finish(out, &server, op, args.no_wait).await? else {
        return Ok(());
    };
    let r: RecoveryView = serde_json::from_value(r).context("the server's answer to failover")?;
    // QEMU runs now; the guest serves once booted: say which was seen.
    let serving = match &args.wait_for {
        Some(probe) => {
            if !out.json {
                eprintln!(
                    "{} started on {}; waiting until {probe} answers…",
                    r.recovery.vm, r.host
                );
            }
            Some((
                probe,
                crate::ready_probe::wait(probe, args.wait_timeout, out.json).await?,
            ))
        }
        None => None,
    };
    // The failover's answer as the API gives it, and what --wait-for saw.
    let mut answer = serde_json::to_value(&r)?;
    if let Some((probe, took)) = &serving {
        answer["serving"] = serde_json::json!({
            "probe": probe.to_string(),
            "after_seconds": took.as_secs_f64(),
        });
    }
    out.show(&answer, |_| {
        let v = &r;
        let r = &v.recovery;
        println!(
            "{} started on {} from point {} (cut {}){}.",
            r.vm, v.host, r.point, r.point_time,
            if kind == "test" {
                ", in an isolated network"
            } else {
                "; the source is fenced"
            }
        );
        match serving {
            Some((probe, took)) => println!(
                "It serves: {probe} answered {:.1} s after the failover ended.",
                took.as_secs_f64()
            ),
            None => println!(
                "It is booting: its services answer once the guest is up (`--wait-for \
                 tcp:HOST:PORT` waits for that)."
            ),
        }
        for f in &r.forwards {
            let at = if f.public {
                format!("port {} of every address of {}", f.host_port, v.host)
            } else {
                format!("127.0.0.1:{} on {}", f.host_port, v.host)
            };
            println!("Guest port {} answers at {at}.", f.guest_port);
        }
        println!(
            "It reads what is not local yet from the vault while it hydrates (`lifeboat vms list`)."
        );
        if kind == "test" {
            println!(
                "Production and replication are untouched. Remove it with `lifeboat failover cleanup {vm}`."
            );
        }
    });
    Ok(())
}

/// Posts to `path`; an answer that is an operation (202) is followed to its end (unless
/// `no_wait`) and its result returned; `None` when not waited for.
async fn post_and_follow<T: serde::de::DeserializeOwned>(
    out: Output,
    server: &ServerClient,
    path: &str,
    body: &Value,
    no_wait: bool,
) -> Result<Option<T>> {
    let op: lifeboat_server::db::Operation = server.post(path, body).await?;
    let Some(result) = crate::operations_cmd::finish(out, server, op, no_wait).await? else {
        return Ok(None);
    };
    Ok(Some(
        serde_json::from_value(result).context("the operation's answer")?,
    ))
}

/// A protection step that answers with a sentence (`StepDone`).
async fn step(
    out: Output,
    home: &Path,
    vm: &str,
    route: &str,
    body: &Value,
    conn: ServerConn,
    no_wait: bool,
) -> Result<()> {
    let server = ServerClient::new(&conn, home)?;
    let p = find_protection(&server, vm).await?;
    let path = format!("/api/v1/protections/{}/{route}", p.id);
    let Some(done) = post_and_follow::<StepDone>(out, &server, &path, body, no_wait).await? else {
        return Ok(());
    };
    out.show(&done, |d| println!("{}.", d.message));
    Ok(())
}

pub async fn failback(out: Output, home: &Path, args: crate::cli::FailbackArgs) -> Result<()> {
    let secs = args.shutdown_timeout.as_secs();
    let body = serde_json::json!({
        "shutdown_timeout_secs": secs,
        "unplanned": args.unplanned,
        "point": args.point,
    });
    step(
        out,
        home,
        &args.vm,
        "failback",
        &body,
        args.conn,
        args.no_wait,
    )
    .await
}

pub async fn reprotect(
    out: Output,
    home: &Path,
    vm: &str,
    conn: ServerConn,
    no_wait: bool,
) -> Result<()> {
    step(
        out,
        home,
        vm,
        "reprotect",
        &serde_json::json!({}),
        conn,
        no_wait,
    )
    .await
}

/// `--network-map SOURCE=TARGET` options as the API's map.
pub fn network_map(options: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    let mut map = std::collections::BTreeMap::new();
    for m in options {
        let Some((from, to)) = m.split_once('=') else {
            bail!("--network-map {m}: write SOURCE=TARGET, e.g. user=isolated");
        };
        map.insert(from.trim().to_string(), to.trim().to_string());
    }
    Ok(map)
}
