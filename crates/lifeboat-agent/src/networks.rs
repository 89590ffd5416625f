//! The networks this host offers a recovered VM (`GET /api/v1/networks`), with the
//! subnets its own addresses on them show, so the server checks a move's network
//! settings (a NIC's network, a new address inside its subnet) before anything moves.
//!
//! Every Linux bridge is a network (`bridge:NAME`); the QEMU driver adds its user
//! networks (`user`, `isolated`: QEMU's 10.0.2.0/24), a libvirt host its active virtual
//! networks (`network:NAME`, with the subnets of the bridge libvirt runs them on) and
//! `isolated` (the bridge test copies go on, made when needed, with no address).

use std::collections::BTreeMap;
use std::path::Path;

use ipnet::IpNet;
use lifeboat_hypervisor::Driver;
use lifeboat_types::HostNetwork;
use serde::Deserialize;

/// QEMU's user networking: the guest's side of it.
const QEMU_USER_SUBNET: &str = "10.0.2.2/24";

/// One interface as `ip -j addr show` prints it.
#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    local: std::net::IpAddr,
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

/// Each interface's global addresses, from `ip -j addr show`'s output.
fn parse_addresses(json: &[u8]) -> Result<BTreeMap<String, Vec<IpNet>>, String> {
    let links: Vec<IpLink> =
        serde_json::from_slice(json).map_err(|e| format!("reading `ip -j addr show`: {e}"))?;
    Ok(links
        .into_iter()
        .map(|l| {
            let nets = l
                .addr_info
                .iter()
                .filter(|a| a.scope != "link" && a.scope != "host")
                .filter_map(|a| IpNet::new(a.local, a.prefixlen).ok())
                .collect();
            (l.ifname, nets)
        })
        .collect())
}

/// The host's networks for recovered VMs.
pub async fn host_networks(driver: &Driver) -> Result<Vec<HostNetwork>, String> {
    let out = tokio::process::Command::new("ip")
        .args(["-j", "addr", "show"])
        .output()
        .await
        .map_err(|e| format!("running `ip -j addr show`: {e} (install iproute2)"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip -j addr show`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let addresses = parse_addresses(&out.stdout)?;
    let sys = Path::new("/sys/class/net");
    let mut nets: Vec<HostNetwork> = addresses
        .iter()
        .filter(|(name, _)| sys.join(name).join("bridge").exists())
        .map(|(name, subnets)| HostNetwork {
            name: format!("bridge:{name}"),
            subnets: subnets.clone(),
        })
        .collect();
    match driver {
        Driver::Qemu(_) => {
            let user: IpNet = QEMU_USER_SUBNET.parse().expect("a valid subnet");
            for name in ["user", "isolated"] {
                nets.push(HostNetwork {
                    name: name.into(),
                    subnets: vec![user],
                });
            }
        }
        Driver::Libvirt(l) => {
            for (name, bridge) in l.networks().await.map_err(|e| e.to_string())? {
                nets.push(HostNetwork {
                    name: format!("network:{name}"),
                    subnets: addresses.get(&bridge).cloned().unwrap_or_default(),
                });
            }
            if !nets.iter().any(|n| n.name == "isolated") {
                nets.push(HostNetwork {
                    name: "isolated".into(),
                    subnets: Vec::new(),
                });
            }
        }
    }
    nets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_ip_json() {
        let json = br#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
            {"ifindex":5,"ifname":"br-dr","addr_info":[{"family":"inet","local":"10.20.0.1","prefixlen":24,"scope":"global"},
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},
            {"family":"inet6","local":"2001:db8::1","prefixlen":64,"scope":"global"}]},
            {"ifindex":6,"ifname":"br-dark","addr_info":[]}]"#;
        let a = parse_addresses(json).unwrap();
        assert!(a["lo"].is_empty());
        assert_eq!(
            a["br-dr"],
            vec![
                "10.20.0.1/24".parse::<IpNet>().unwrap(),
                "2001:db8::1/64".parse().unwrap()
            ]
        );
        assert!(a["br-dark"].is_empty());
        assert!(parse_addresses(b"not json").is_err());
    }
}
