//! `lifeboat operations`: list, show and cancel operations; and following one to its end,
//! which every command that starts an operation does unless told `--no-wait`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use lifeboat_server::db::Operation;
use lifeboat_types::{OperationId, OperationStatus};

use crate::cli::OperationsCommand;
use crate::output::{table, Output};
use crate::server_client::ServerClient;

/// How long to wait before asking again when the operation's event stream broke.
const POLL: Duration = Duration::from_millis(500);

/// Follows `op` until it ends, writing each new log line to stderr (unless `quiet`), and
/// returns it ended. It listens to the operation's event stream
/// (`/api/v1/operations/{id}/events`); when the stream breaks (the server restarted, the
/// network blinked) it asks for the operation once and listens again, so no line is
/// shown twice or lost. The operation runs in the server: if this command is
/// interrupted, it goes on.
pub async fn follow(server: &ServerClient, mut op: Operation, quiet: bool) -> Result<Operation> {
    let mut shown = 0;
    loop {
        for line in op.log.lines().skip(shown) {
            if !quiet {
                eprintln!("  {line}");
            }
            shown += 1;
        }
        if op.status.is_done() {
            return Ok(op);
        }
        match listen(server, &op.id, quiet, &mut shown).await {
            Ok(Some(ended)) => return Ok(ended),
            // Ended without the operation ending, or broke: ask, then listen again.
            Ok(None) | Err(_) => {
                tokio::time::sleep(POLL).await;
                op = server.get(&format!("/api/v1/operations/{}", op.id)).await?;
            }
        }
    }
}

/// Listens to the operation's events, showing log lines past the `shown` first; the
/// operation once an event says it ended, `None` if the stream ended before.
async fn listen(
    server: &ServerClient,
    id: &OperationId,
    quiet: bool,
    shown: &mut usize,
) -> Result<Option<Operation>> {
    let mut events = server
        .events(&format!("/api/v1/operations/{id}/events"))
        .await?;
    // The stream starts with the whole log.
    let mut line_no = 0;
    while let Some(ev) = events.next().await? {
        match ev.name.as_str() {
            "log" => {
                if line_no >= *shown {
                    if !quiet {
                        eprintln!("  {}", ev.data);
                    }
                    *shown = line_no + 1;
                }
                line_no += 1;
            }
            "operation" => {
                let op: Operation = serde_json::from_str(&ev.data)
                    .context("reading an operation from the server's events")?;
                if op.status.is_done() {
                    return Ok(Some(op));
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Follows `op` (unless `no_wait`) and returns its answer when it succeeded; an error
/// that says how it ended otherwise. With `no_wait`, the operation as started.
pub async fn finish(
    out: Output,
    server: &ServerClient,
    op: Operation,
    no_wait: bool,
) -> Result<Option<serde_json::Value>> {
    if no_wait {
        out.show(&op, |op| {
            println!(
                "Operation {} ({}) started; follow it with `lifeboat operations show {}`.",
                op.id, op.kind, op.id
            )
        });
        return Ok(None);
    }
    if !out.json {
        eprintln!(
            "Operation {} ({}); Ctrl-C stops following it, not the operation.",
            op.id, op.kind
        );
    }
    let op = follow(server, op, out.json).await?;
    match op.status {
        OperationStatus::Succeeded => Ok(Some(op.result.unwrap_or_default())),
        OperationStatus::Cancelled => bail!("operation {} was cancelled: {}", op.id, op.error),
        _ => bail!("{} (operation {})", op.error, op.id),
    }
}

pub async fn run(out: Output, home: &std::path::Path, cmd: OperationsCommand) -> Result<()> {
    match cmd {
        OperationsCommand::List { conn } => {
            let server = ServerClient::new(&conn, home)?;
            let ops: Vec<Operation> = server.get("/api/v1/operations").await?;
            out.show(&ops, |ops| {
                let mut rows = vec![["ID", "VM", "KIND", "STATUS", "STEP", "UPDATED"]
                    .map(String::from)
                    .to_vec()];
                for o in ops {
                    rows.push(vec![
                        o.id.to_string(),
                        o.vm.clone(),
                        o.kind.to_string(),
                        progress(o),
                        o.step.clone(),
                        o.updated_at.clone(),
                    ]);
                }
                table(&rows);
            });
        }
        OperationsCommand::Show { id, conn } => {
            let server = ServerClient::new(&conn, home)?;
            let op: Operation = server.get(&format!("/api/v1/operations/{id}")).await?;
            out.show(&op, |o| {
                println!("{} {} of {}: {}", o.id, o.kind, o.vm, progress(o));
                if !o.error.is_empty() {
                    println!("error: {}", o.error);
                }
                print!("{}", o.log);
            });
        }
        OperationsCommand::Follow { id, conn } => {
            let server = ServerClient::new(&conn, home)?;
            let op: Operation = server.get(&format!("/api/v1/operations/{id}")).await?;
            let result = finish(out, &server, op, false).await?;
            out.show(&result, |r| {
                println!("Operation {id} succeeded.");
                if let Some(r) = r.as_ref().filter(|r| !r.is_null()) {
                    println!("{r:#}");
                }
            });
        }
        OperationsCommand::Cancel { id, no_wait, conn } => {
            let server = ServerClient::new(&conn, home)?;
            let op: Operation = server
                .post(
                    &format!("/api/v1/operations/{id}/cancel"),
                    &serde_json::json!({}),
                )
                .await?;
            if no_wait {
                out.show(&op, |o| {
                    println!(
                        "Cancel asked: {} undoes what it did after its current step.",
                        o.id
                    )
                });
                return Ok(());
            }
            let op = follow(&server, op, out.json).await?;
            out.show(&op, |o| println!("{} {}: {}", o.id, o.status, o.error));
            if op.status != OperationStatus::Cancelled {
                bail!(
                    "operation {} ended {} instead of cancelled: {}",
                    op.id,
                    op.status,
                    op.error
                );
            }
        }
    }
    Ok(())
}

/// `running (step 3/8)`, `undoing (step 2/8)`, or how it ended.
fn progress(o: &Operation) -> String {
    if o.status.is_done() || o.steps_total == 0 {
        return o.status.to_string();
    }
    format!(
        "{} (step {}/{}{})",
        if o.undoing { "undoing" } else { "running" },
        o.steps_done,
        o.steps_total,
        if o.past_no_return {
            ", past no return"
        } else {
            ""
        }
    )
}
