//! `lifeboat hosts scan|enroll|list` and `lifeboat vms list`. `hosts scan CIDR` finds
//! agents by their discovery hello; the others ask the server.
//!
//! The scan itself is `lifeboat_server::discovery`, which the dashboard's scan uses too;
//! here it runs from the CLI's machine.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use lifeboat_server::api::{EnrollHost, HostRow, VmList};
use lifeboat_server::db::Host;
use lifeboat_server::discovery::{self, parse_cidr, ScanReport};

use crate::cli::{HostsCommand, VmsCommand};
use crate::output::{table, Output};
use crate::server_client::ServerClient;

pub async fn run(out: Output, home: &Path, cmd: HostsCommand) -> Result<()> {
    match cmd {
        HostsCommand::Scan {
            cidr,
            ports,
            concurrency,
            timeout,
            conn,
        } => {
            let mut report = scan(out, &cidr, &ports, concurrency.max(1), timeout).await?;
            add_vms(&mut report, &conn, home).await;
            show_scan(out, &report);
            Ok(())
        }
        HostsCommand::Enroll {
            address,
            fingerprint,
            conn,
        } => {
            let code = crate::secrets::enrollment_code(&address)?.into();
            let server = ServerClient::new(&conn, home)?;
            let host: Host = server
                .post(
                    "/api/v1/hosts",
                    &EnrollHost {
                        address,
                        code,
                        fingerprint,
                    },
                )
                .await?;
            out.show(&host, |h| {
                println!(
                    "Enrolled {} at {} (certificate {} pinned).",
                    h.hostname, h.address, h.fingerprint
                );
            });
            Ok(())
        }
        HostsCommand::List { conn } => {
            let server = ServerClient::new(&conn, home)?;
            let hosts: Vec<HostRow> = server.get("/api/v1/hosts").await?;
            out.show(&hosts, |hosts| {
                if hosts.is_empty() {
                    println!("No hosts enrolled. Find agents with `lifeboat hosts scan CIDR`, then `lifeboat hosts enroll`.");
                    return;
                }
                let mut rows = vec![vec![
                    "HOSTNAME".to_string(),
                    "ADDRESS".into(),
                    "AGENT".into(),
                    "VERSION".into(),
                    "ENROLLED".into(),
                    "FINGERPRINT (SHA-256)".into(),
                ]];
                for h in hosts {
                    let (agent, version) = match &h.health {
                        None => ("not checked yet".to_string(), String::new()),
                        Some(x) if !x.up => ("down".into(), String::new()),
                        Some(x) => (
                            if x.version_skew.is_some() { "skewed" } else { "up" }.into(),
                            x.agent_version.clone().unwrap_or_default(),
                        ),
                    };
                    rows.push(vec![
                        h.host.hostname.clone(),
                        h.host.address.clone(),
                        agent,
                        version,
                        h.host.enrolled_at.clone(),
                        h.host.fingerprint.clone(),
                    ]);
                }
                table(&rows);
                for h in hosts {
                    match &h.health {
                        Some(x) if !x.up => println!(
                            "{}: its agent did not answer at {}: {}",
                            h.host.hostname,
                            x.checked_at,
                            x.error.as_deref().unwrap_or("")
                        ),
                        Some(x) => {
                            if let Some(skew) = &x.version_skew {
                                println!("{}: {skew}", h.host.hostname);
                            }
                        }
                        None => {}
                    }
                }
            });
            Ok(())
        }
    }
}

pub async fn run_vms(out: Output, home: &Path, cmd: VmsCommand) -> Result<()> {
    let VmsCommand::List { conn } = cmd;
    let server = ServerClient::new(&conn, home)?;
    let list: VmList = server.get_all("/api/v1/vms").await?;
    out.show(&list, |l| {
        if l.vms.is_empty() {
            println!("No VMs on the enrolled hosts.");
        } else {
            let mut rows = vec![vec![
                "HOST".to_string(),
                "VM".into(),
                "STATE".into(),
                "PROTECTION".into(),
                "RPO".into(),
                "LAST POINT".into(),
                "RECOVERY HOST".into(),
                "RECOVERED FROM".into(),
            ]];
            let s = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
            for v in &l.vms {
                // A VM brought up from a point says so, where it came from and how much
                // of it is local yet.
                let (protection, origin) = match v.recovery_kind {
                    Some(kind) => (
                        format!("{kind} failover"),
                        format!(
                            "{} @ {} ({:.0}% local)",
                            s(&v.recovered_from),
                            s(&v.recovered_point_time),
                            v.hydrated_percent.unwrap_or(0.0)
                        ),
                    ),
                    None => (v.protection.clone(), "-".into()),
                };
                // The agent's own words for its VM's state.
                let state = v.state["state"].as_str().unwrap_or("-");
                rows.push(vec![
                    v.host.clone(),
                    v.vm.clone(),
                    if v.fenced.is_some() {
                        format!("{state} (fenced)")
                    } else {
                        state.to_string()
                    },
                    protection,
                    crate::protect_cmd::age(v.rpo_seconds),
                    s(&v.last_point_time),
                    s(&v.recovery_host),
                    origin,
                ]);
            }
            table(&rows);
        }
        for p in &l.unreachable {
            println!(
                "Host {} ({}) did not answer: {}",
                p.host, p.address, p.error
            );
        }
    });
    Ok(())
}

/// Best effort: the VMs of found agents that the server enrolled. Without a server or a
/// token the scan still lists every agent, without VMs.
async fn add_vms(report: &mut ScanReport, conn: &crate::cli::ServerConn, home: &Path) {
    let Ok(server) = ServerClient::new(conn, home) else {
        return;
    };
    let Ok(list) = server.get_all::<VmList>("/api/v1/vms").await else {
        return;
    };
    let hosts: Vec<Host> = server.get("/api/v1/hosts").await.unwrap_or_default();
    for a in &mut report.agents {
        let address = a.address.to_string();
        if !hosts.iter().any(|h| h.address == address) {
            continue;
        }
        a.vms = Some(
            list.vms
                .iter()
                .filter(|v| v.address == address)
                .map(|v| v.vm.clone())
                .collect(),
        );
    }
}

/// The scan, with a progress bar when it is long and the output is for people.
async fn scan(
    out: Output,
    cidr: &str,
    ports: &[u16],
    concurrency: usize,
    timeout: Duration,
) -> Result<ScanReport> {
    let probed = parse_cidr(cidr)?.1 * ports.len() as u64;
    let bar = if out.json || probed < 64 {
        indicatif::ProgressBar::hidden()
    } else {
        crate::vault_cmd::progress(probed, "scanning")
    };
    let tick = bar.clone();
    let report = discovery::scan(
        cidr,
        ports,
        concurrency,
        timeout,
        std::sync::Arc::new(move || tick.inc(1)),
    )
    .await?;
    bar.finish_and_clear();
    Ok(report)
}

fn show_scan(out: Output, report: &ScanReport) {
    out.show(report, |r| {
        if r.agents.is_empty() {
            println!(
                "No agents found in {} ({} addresses and ports probed).",
                r.range, r.probed
            );
            return;
        }
        let mut rows = vec![vec![
            "ADDRESS".to_string(),
            "HOSTNAME".into(),
            "VERSION".into(),
            "ENROLLED".into(),
            "VMS".into(),
            "FINGERPRINT (SHA-256)".into(),
        ]];
        for a in &r.agents {
            let fp = if a.fingerprint_matches {
                a.fingerprint.clone()
            } else {
                format!(
                    "{} (MISMATCH: the hello names another certificate)",
                    a.fingerprint
                )
            };
            rows.push(vec![
                a.address.to_string(),
                a.hostname.clone(),
                a.version.clone(),
                if a.enrolled { "yes" } else { "no" }.into(),
                match &a.vms {
                    Some(v) if v.is_empty() => "(none)".into(),
                    Some(v) => v.join(","),
                    None => "-".into(),
                },
                fp,
            ]);
        }
        table(&rows);
        if r.agents.iter().any(|a| a.vms.is_none()) {
            println!("VMS: an agent shows its VMs to the server that enrolled it only (-: not enrolled here).");
        }
    });
}
