//! `lifeboat network VM`: a protected VM's failover network settings — per NIC, the
//! address it takes after a failover, in a test copy and back home (docs/networking.md).
//! Without flags it shows them; with flags it changes the NICs named and keeps the rest.

use std::path::Path;

use anyhow::{bail, Context, Result};
use lifeboat_server::api::network::NetworkSettingsSet;
use lifeboat_types::{Addressing, NetworkSettings, NicSettings};

use crate::cli::NetworkArgs;
use crate::output::{table, Output};
use crate::protect_cmd::find_protection;
use crate::server_client::ServerClient;

/// Which of a NIC's settings a flag sets.
#[derive(Clone, Copy)]
enum Which {
    Failover,
    Test,
    Home,
}

/// `MAC=ADDRESSING` → (MAC, addressing).
fn parse_flag(flag: &str, text: &str) -> Result<(String, Addressing)> {
    let Some((mac, addressing)) = text.split_once('=') else {
        bail!(
            "--{flag} {text:?}: write MAC=keep, MAC=dhcp or MAC=ADDRESS/PREFIX[,gw=IP][,dns=IP+IP]"
        );
    };
    let addressing = addressing
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--{flag} {text:?}: {e}"))?;
    Ok((mac.trim().to_string(), addressing))
}

/// `settings` with the flags applied: each names a NIC (added when new) and one of its
/// settings; the others are kept.
fn apply(mut settings: NetworkSettings, args: &NetworkArgs) -> Result<NetworkSettings> {
    if args.clear || args.no_dns {
        settings.dns = None;
    }
    if args.clear {
        settings.nics.clear();
    }
    if let (Some(name), Some(zone), Some(server)) =
        (&args.dns_name, &args.dns_zone, &args.dns_server)
    {
        let server = if server.parse::<std::net::IpAddr>().is_ok() {
            format!("{server}:53")
        } else {
            server.clone()
        };
        let server = server.parse().map_err(|_| {
            anyhow::anyhow!("--dns-server {server:?}: give ADDRESS or ADDRESS:PORT")
        })?;
        settings.dns = Some(lifeboat_types::DnsRecord {
            name: name.clone(),
            zone: zone.clone(),
            server,
            key: args.dns_key.clone(),
            ttl: u32::try_from(args.dns_ttl.as_secs())
                .map_err(|_| anyhow::anyhow!("--dns-ttl: a DNS TTL is at most 68 years"))?,
        });
    }
    let flags = [
        ("failover", Which::Failover, &args.failover),
        ("test", Which::Test, &args.test),
        ("failback", Which::Home, &args.failback),
    ];
    for (flag, which, values) in flags {
        for text in values {
            let (mac, addressing) = parse_flag(flag, text)?;
            let at = match settings
                .nics
                .iter()
                .position(|n| n.mac.eq_ignore_ascii_case(&mac))
            {
                Some(i) => i,
                None => {
                    settings.nics.push(NicSettings {
                        mac,
                        failover: Addressing::Keep,
                        test: Addressing::Keep,
                        home: Addressing::Keep,
                    });
                    settings.nics.len() - 1
                }
            };
            let nic = &mut settings.nics[at];
            match which {
                Which::Failover => nic.failover = addressing,
                Which::Test => nic.test = addressing,
                Which::Home => nic.home = addressing,
            }
        }
    }
    Ok(settings.without_keep_only())
}

fn print(vm: &str, settings: &NetworkSettings, notes: &[String]) {
    if settings.nics.is_empty() {
        println!("{vm}: every NIC keeps its address after a failover and in a test copy.");
    } else {
        let mut rows = vec![["NIC", "FAILOVER", "TEST", "HOME"]
            .map(String::from)
            .to_vec()];
        for n in &settings.nics {
            rows.push(vec![
                n.mac.clone(),
                n.failover.to_string(),
                n.test.to_string(),
                n.home.to_string(),
            ]);
        }
        table(&rows);
    }
    if let Some(d) = &settings.dns {
        println!(
            "DNS: {} in zone {} on {}{}, TTL {} s: switched by failovers and failbacks",
            d.name,
            d.zone,
            d.server,
            d.key
                .as_ref()
                .map(|k| format!(" (key {k})"))
                .unwrap_or_default(),
            d.ttl
        );
    }
    for n in notes {
        println!("note: {n}");
    }
}

pub async fn run(out: Output, home: &Path, args: NetworkArgs) -> Result<()> {
    let server = ServerClient::new(&args.conn, home)?;
    let p = find_protection(&server, &args.vm).await?;
    let changes = args.clear
        || args.no_dns
        || args.dns_name.is_some()
        || !(args.failover.is_empty() && args.test.is_empty() && args.failback.is_empty());
    if !changes {
        let shown = NetworkSettingsSet {
            vm: p.vm.clone(),
            network_settings: p.network_settings,
            notes: Vec::new(),
        };
        out.show(&shown, |s| print(&s.vm, &s.network_settings, &s.notes));
        return Ok(());
    }
    let wanted = apply(p.network_settings.clone(), &args)?;
    let set: NetworkSettingsSet = server
        .put(&format!("/api/v1/protections/{}/network", p.id), &wanted)
        .await
        .with_context(|| format!("setting {}'s network settings", args.vm))?;
    out.show(&set, |s| print(&s.vm, &s.network_settings, &s.notes));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServerConn;

    fn args(failover: &[&str], test: &[&str], home: &[&str], clear: bool) -> NetworkArgs {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        NetworkArgs {
            vm: "web".into(),
            failover: v(failover),
            test: v(test),
            failback: v(home),
            clear,
            dns_name: None,
            dns_zone: None,
            dns_server: None,
            dns_key: None,
            dns_ttl: std::time::Duration::from_secs(60),
            no_dns: false,
            conn: ServerConn::default(),
        }
    }

    #[test]
    fn flags_change_the_nics_they_name_and_keep_the_rest() {
        let a = "52:54:00:00:00:0a";
        let b = "52:54:00:00:00:0b";
        let s = apply(
            NetworkSettings::default(),
            &args(
                &[&format!("{a}=10.20.0.5/24,gw=10.20.0.1")],
                &[&format!("{b}=dhcp")],
                &[&format!("{a}=192.168.1.5/24")],
                false,
            ),
        )
        .unwrap();
        assert_eq!(s.nics.len(), 2);
        assert_eq!(s.nics[0].failover.to_string(), "10.20.0.5/24,gw=10.20.0.1");
        assert_eq!(s.nics[0].home.to_string(), "192.168.1.5/24");
        assert_eq!(s.nics[1].test, Addressing::Dhcp);
        // Another change to b (in capitals) keeps a's settings; keep everywhere drops b.
        let s = apply(
            s,
            &args(&[], &[&format!("{}=keep", b.to_uppercase())], &[], false),
        )
        .unwrap();
        assert_eq!(s.nics.len(), 1);
        assert_eq!(s.nics[0].mac, a);
        // --clear starts from nothing.
        let s = apply(s, &args(&[], &[&format!("{b}=10.99.0.9/24")], &[], true)).unwrap();
        assert_eq!(s.nics.len(), 1);
        assert_eq!(s.nics[0].mac, b);
        for bad in ["10.20.0.5/24", &format!("{a}=10.20.0.5")] {
            let err = apply(NetworkSettings::default(), &args(&[bad], &[], &[], false))
                .unwrap_err()
                .to_string();
            assert!(err.contains("--failover"), "{err}");
        }
    }
}
