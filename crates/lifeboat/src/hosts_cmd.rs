//! `lifeboat hosts scan|enroll|list` and `lifeboat vms list`. `hosts scan CIDR` finds
//! agents by their discovery hello; the others ask the server.
//!
//! Every address and port of the range is probed at once up to `--concurrency`, each
//! within `--timeout`. The agent's certificate is not trusted yet — that is what
//! enrollment pins — so the probe accepts any certificate but reports its SHA-256
//! fingerprint, and flags an agent whose hello names a different one (something between
//! us and it answered with its own certificate).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use lifeboat_agent::api::{Hello, SERVICE};
use lifeboat_agent::identity::fingerprint;
use lifeboat_server::api::EnrollHost;
use lifeboat_vault::store::retention::parse_duration;
use serde::Serialize;

use crate::cli::{HostsCommand, VmsCommand};
use crate::output::{table, Output};
use crate::server_client::ServerClient;

/// The widest range a scan takes: a /16, 65,536 addresses.
const MAX_ADDRESSES: u64 = 1 << 16;

pub async fn run(out: Output, home: &Path, cmd: HostsCommand) -> Result<()> {
    match cmd {
        HostsCommand::Scan {
            cidr,
            ports,
            concurrency,
            timeout,
            conn,
        } => {
            let timeout = parse_duration(&timeout).map_err(anyhow::Error::msg)?;
            let mut report = scan(out, &cidr, &ports, concurrency.max(1), timeout).await?;
            add_vms(&mut report, &conn, home).await;
            show_scan(out, &report);
            Ok(())
        }
        HostsCommand::Enroll {
            address,
            code,
            fingerprint,
            conn,
        } => {
            let server = ServerClient::new(&conn, home)?;
            let host: serde_json::Value = server
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
                    h["hostname"].as_str().unwrap_or("?"),
                    h["address"].as_str().unwrap_or("?"),
                    h["fingerprint"].as_str().unwrap_or("?")
                );
            });
            Ok(())
        }
        HostsCommand::List { conn } => {
            let server = ServerClient::new(&conn, home)?;
            let hosts: Vec<serde_json::Value> = server.get("/api/v1/hosts").await?;
            out.show(&hosts, |hosts| {
                if hosts.is_empty() {
                    println!("No hosts enrolled. Find agents with `lifeboat hosts scan CIDR`, then `lifeboat hosts enroll`.");
                    return;
                }
                let mut rows = vec![vec![
                    "HOSTNAME".to_string(),
                    "ADDRESS".into(),
                    "ENROLLED".into(),
                    "FINGERPRINT (SHA-256)".into(),
                ]];
                for h in hosts {
                    rows.push(["hostname", "address", "enrolled_at", "fingerprint"]
                        .iter()
                        .map(|k| h[*k].as_str().unwrap_or("").to_string())
                        .collect());
                }
                table(&rows);
            });
            Ok(())
        }
    }
}

pub async fn run_vms(out: Output, home: &Path, cmd: VmsCommand) -> Result<()> {
    let VmsCommand::List { conn } = cmd;
    let server = ServerClient::new(&conn, home)?;
    let list: serde_json::Value = server.get("/api/v1/vms").await?;
    out.show(&list, |l| {
        let vms = l["vms"].as_array().cloned().unwrap_or_default();
        if vms.is_empty() {
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
            let s = |x: &serde_json::Value| x.as_str().unwrap_or("-").to_string();
            for v in &vms {
                // A VM brought up from a point says so, where it came from and how much
                // of it is local yet.
                let (protection, origin) = match v["recovery_kind"].as_str() {
                    Some(kind) => (
                        format!("{kind} failover"),
                        format!(
                            "{} @ {} ({:.0}% local)",
                            s(&v["recovered_from"]),
                            s(&v["recovered_point_time"]),
                            v["hydrated_percent"].as_f64().unwrap_or(0.0)
                        ),
                    ),
                    None => (s(&v["protection"]), "-".into()),
                };
                rows.push(vec![
                    s(&v["host"]),
                    s(&v["vm"]),
                    if v["fenced"].is_string() {
                        format!("{} (fenced)", s(&v["state"]["state"]))
                    } else {
                        s(&v["state"]["state"])
                    },
                    protection,
                    crate::protect_cmd::age(v["rpo_seconds"].as_f64()),
                    s(&v["last_point_time"]),
                    s(&v["recovery_host"]),
                    origin,
                ]);
            }
            table(&rows);
        }
        for p in l["unreachable"].as_array().into_iter().flatten() {
            println!(
                "Host {} ({}) did not answer: {}",
                p["host"].as_str().unwrap_or("?"),
                p["address"].as_str().unwrap_or("?"),
                p["error"].as_str().unwrap_or("?")
            );
        }
    });
    Ok(())
}

#[derive(Debug, Serialize)]
struct Found {
    address: SocketAddr,
    hostname: String,
    version: String,
    enrolled: bool,
    /// The SHA-256 fingerprint of the certificate the agent presented.
    fingerprint: String,
    /// False when the hello names another certificate than the one presented.
    fingerprint_matches: bool,
    /// Its VMs, when this server enrolled it (an agent shows them to its server only).
    vms: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct ScanReport {
    range: String,
    probed: u64,
    agents: Vec<Found>,
}

/// Best effort: the VMs of found agents that the server enrolled. Without a server or a
/// token the scan still lists every agent, without VMs.
async fn add_vms(report: &mut ScanReport, conn: &crate::cli::ServerConn, home: &Path) {
    let Ok(server) = ServerClient::new(conn, home) else {
        return;
    };
    let Ok(list) = server.get::<serde_json::Value>("/api/v1/vms").await else {
        return;
    };
    let hosts: Vec<serde_json::Value> = server.get("/api/v1/hosts").await.unwrap_or_default();
    for a in &mut report.agents {
        let address = a.address.to_string();
        if !hosts.iter().any(|h| h["address"] == address.as_str()) {
            continue;
        }
        a.vms = Some(
            list["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["address"] == address.as_str())
                .filter_map(|v| v["vm"].as_str().map(str::to_string))
                .collect(),
        );
    }
}

async fn scan(
    out: Output,
    cidr: &str,
    ports: &[u16],
    concurrency: usize,
    timeout: Duration,
) -> Result<ScanReport> {
    let (first, count) = parse_cidr(cidr)?;
    if ports.is_empty() {
        bail!("--ports is empty: give at least one port");
    }
    let client = reqwest::Client::builder()
        // Discovery only: the certificate is shown for the operator to check, and pinned
        // at enrollment; nothing secret is sent.
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .context("building the HTTPS client")?;
    let targets = (0..count).flat_map(|i| {
        let ip = Ipv4Addr::from(u32::from(first) + i as u32);
        ports
            .iter()
            .map(move |p| SocketAddr::new(IpAddr::V4(ip), *p))
    });
    let probed = count * ports.len() as u64;
    let bar = if out.json || probed < 64 {
        indicatif::ProgressBar::hidden()
    } else {
        crate::vault_cmd::progress(probed, "scanning")
    };
    let mut agents: Vec<Found> = futures::stream::iter(targets)
        .map(|addr| {
            let client = client.clone();
            let bar = bar.clone();
            async move {
                let found = probe(&client, addr).await;
                bar.inc(1);
                found
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    bar.finish_and_clear();
    agents.sort_by_key(|a| a.address);
    Ok(ScanReport {
        range: cidr.to_string(),
        probed,
        agents,
    })
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

/// The agent at `addr`, if one answers its hello there.
async fn probe(client: &reqwest::Client, addr: SocketAddr) -> Option<Found> {
    let resp = client
        .get(format!("https://{addr}/api/v1/hello"))
        .send()
        .await
        .ok()?;
    let presented = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(fingerprint)?;
    if !resp.status().is_success() {
        return None;
    }
    let hello: Hello = resp.json().await.ok()?;
    if hello.service != SERVICE {
        return None;
    }
    Some(Found {
        address: addr,
        hostname: hello.hostname,
        version: hello.version,
        enrolled: hello.enrolled,
        fingerprint_matches: hello.fingerprint == presented,
        vms: None,
        fingerprint: presented,
    })
}

/// `a.b.c.d/n` (or one address) as its first address and the number of addresses to
/// probe: for /30 and wider, the network and broadcast addresses are left out.
fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u64)> {
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, len),
        None => (text, "32"),
    };
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("{text:?} is not an address range like 192.168.1.0/24"))?;
    let IpAddr::V4(ip) = ip else {
        bail!("{text}: only IPv4 ranges can be scanned; give IPv6 agents' addresses directly");
    };
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .with_context(|| format!("{text:?}: the prefix length must be 0 to 32"))?;
    let size = 1u64 << (32 - len);
    if size > MAX_ADDRESSES {
        bail!("{text} holds {size} addresses; scan at most a /16 (65,536) at a time");
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let network = Ipv4Addr::from(u32::from(ip) & mask);
    if size >= 4 {
        Ok((Ipv4Addr::from(u32::from(network) + 1), size - 2))
    } else {
        Ok((network, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_are_explained() {
        assert_eq!(
            parse_cidr("10.0.0.7").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 7), 1)
        );
        assert_eq!(
            parse_cidr("10.0.0.7/32").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 7), 1)
        );
        assert_eq!(
            parse_cidr("10.0.0.6/31").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 6), 2)
        );
        assert_eq!(
            parse_cidr("192.168.1.77/24").unwrap(),
            (Ipv4Addr::new(192, 168, 1, 1), 254)
        );
        assert_eq!(parse_cidr("10.1.0.0/16").unwrap().1, 65_534);
        for bad in [
            "10.0.0.0/8",
            "10.0.0.0/33",
            "nope/24",
            "::1/128",
            "10.0.0.0/x",
        ] {
            let e = parse_cidr(bad).unwrap_err().to_string();
            assert!(
                e.contains(bad.split('/').next().unwrap()) || e.contains(bad),
                "{bad}: {e}"
            );
        }
    }
}
