//! Finding agents: every address and port of a range is probed for the agent's discovery
//! hello, at most `concurrency` at once, each within `timeout`. Used by `POST
//! /api/v1/scan` (the dashboard) and by `lifeboat hosts scan` (from the CLI's machine).
//!
//! The agent's certificate is not trusted yet — that is what enrollment pins — so the
//! probe accepts any certificate but reports its SHA-256 fingerprint, and flags an agent
//! whose hello names a different one (something between us and it answered with its own
//! certificate).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use lifeboat_agent::api::{Hello, SERVICE};
use lifeboat_agent::identity::fingerprint;
use serde::{Deserialize, Serialize};

/// The widest range a scan takes: a /16, 65,536 addresses.
pub const MAX_ADDRESSES: u64 = 1 << 16;
/// The most address-and-port probes one scan makes: a /16 on two ports.
pub const MAX_PROBES: u64 = 1 << 17;
/// The port agents listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7443;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{0}")]
    BadRange(String),
    #[error("no ports to probe: give at least one port")]
    NoPorts,
    #[error("{range} on {ports} ports is {probes} probes; scan at most {MAX_PROBES} at a time (a narrower range, or fewer ports)")]
    TooMany {
        range: String,
        ports: usize,
        probes: u64,
    },
    #[error("building the HTTPS client: {0}")]
    Client(String),
}

/// An agent that answered.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Found {
    #[schema(value_type = String)]
    pub address: SocketAddr,
    pub hostname: String,
    pub version: String,
    pub enrolled: bool,
    /// The SHA-256 fingerprint of the certificate the agent presented.
    pub fingerprint: String,
    /// False when the hello names another certificate than the one presented.
    pub fingerprint_matches: bool,
    /// Its VMs, when this server enrolled it (an agent shows them to its server only).
    pub vms: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScanReport {
    pub range: String,
    pub probed: u64,
    pub agents: Vec<Found>,
}

/// Probes `cidr` × `ports`; `on_probe` runs after each probe (for a progress bar).
pub async fn scan(
    cidr: &str,
    ports: &[u16],
    concurrency: usize,
    timeout: Duration,
    on_probe: std::sync::Arc<dyn Fn() + Send + Sync>,
) -> Result<ScanReport, ScanError> {
    let (first, count) = parse_cidr(cidr)?;
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        return Err(ScanError::NoPorts);
    }
    if count * ports.len() as u64 > MAX_PROBES {
        return Err(ScanError::TooMany {
            range: cidr.to_string(),
            ports: ports.len(),
            probes: count * ports.len() as u64,
        });
    }
    let client = lifeboat_agent::client::client_builder()
        // Discovery only: the certificate is shown for the operator to check, and pinned
        // at enrollment; nothing secret is sent.
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| ScanError::Client(e.to_string()))?;
    let probed = count * ports.len() as u64;
    // Owned, not borrowed: an iterator over the borrowed slice makes the future fail the
    // lifetime check axum's handlers need.
    let targets = (0..count).flat_map(move |i| {
        let ip = Ipv4Addr::from(u32::from(first) + i as u32);
        ports
            .clone()
            .into_iter()
            .map(move |p| SocketAddr::new(IpAddr::V4(ip), p))
    });
    let answers: Vec<Option<Found>> = futures::stream::iter(targets)
        .map(|addr| {
            let client = client.clone();
            let on_probe = on_probe.clone();
            async move {
                let found = probe(&client, addr).await;
                on_probe();
                found
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut agents: Vec<Found> = answers.into_iter().flatten().collect();
    agents.sort_by_key(|a| a.address);
    Ok(ScanReport {
        range: cidr.to_string(),
        probed,
        agents,
    })
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
    // A hello is a few hundred bytes; whatever answers on a scanned port is untrusted.
    let body = lifeboat_agent::client::read_bounded(resp, 64 << 10)
        .await
        .ok()?;
    let hello: Hello = serde_json::from_slice(&body).ok()?;
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
/// probe: for /30 and wider, the network and broadcast addresses are left out (ipnet's
/// `hosts()`).
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u64), ScanError> {
    let bad = |m: String| ScanError::BadRange(m);
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, len),
        None => (text, "32"),
    };
    let ip: IpAddr = ip.trim().parse().map_err(|_| {
        bad(format!(
            "{text:?} is not an address range like 192.168.1.0/24"
        ))
    })?;
    let IpAddr::V4(ip) = ip else {
        return Err(bad(format!(
            "{text}: only IPv4 ranges can be scanned; give IPv6 agents' addresses directly"
        )));
    };
    let net = len
        .parse()
        .ok()
        .and_then(|len| Ipv4Net::new(ip, len).ok())
        .ok_or_else(|| bad(format!("{text:?}: the prefix length must be 0 to 32")))?
        .trunc();
    let size = 1u64 << (32 - u32::from(net.prefix_len()));
    if size > MAX_ADDRESSES {
        return Err(bad(format!(
            "{text} holds {size} addresses; scan at most a /16 (65,536) at a time"
        )));
    }
    let first = net.hosts().next().unwrap_or(net.network());
    let count = if net.prefix_len() <= 30 {
        size - 2
    } else {
        size
    };
    Ok((first, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scan_too_big_is_refused_before_any_probe() {
        let ports: Vec<u16> = (1..=3).collect();
        let e = scan(
            "10.1.0.0/16",
            &ports,
            1,
            Duration::from_millis(1),
            std::sync::Arc::new(|| {}),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("196602 probes"), "{e}");
        let e = scan(
            "10.0.0.1",
            &[],
            1,
            Duration::from_millis(1),
            std::sync::Arc::new(|| {}),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ScanError::NoPorts));
    }

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
