//! A protected VM's failover network settings (docs/networking.md): per NIC, whether the
//! guest keeps its address at the recovery site or gets a new one there, set apart for
//! real moves and for test copies (as DR operators know from Azure Site Recovery, which
//! keeps a failover IP and a test-failover IP per NIC).
//!
//! Everything here is checked before it is stored and again before a move starts:
//! against the VM's own NICs, and against the networks the recovery host has and the
//! subnets they carry ([`HostNetwork`]). A bad setting is refused with what to do, and
//! nothing changes.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// How a NIC is addressed on the recovery host. Read from its object form
/// (`{"mode": "static", "address": …}`) or from the text the CLI and the dashboard write
/// (`"10.20.0.5/24,gw=10.20.0.1"`, `"keep"`, `"dhcp"`); always written as an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Addressing {
    /// The recovery network carries the same subnet (or the two sites share it): the
    /// guest keeps its address.
    #[default]
    Keep,
    /// The guest asks the recovery network's DHCP server for its address.
    Dhcp,
    /// The guest is given this address at the first boot of the copy.
    Static(StaticAddress),
}

impl<'de> Deserialize<'de> for Addressing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The object form, as serialized.
        #[derive(Deserialize)]
        #[serde(tag = "mode", rename_all = "snake_case")]
        enum Tagged {
            Keep,
            Dhcp,
            Static(StaticAddress),
        }
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = Addressing;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "keep, dhcp, ADDRESS/PREFIX[,gw=IP][,dns=IP+IP], or an object with a mode",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Addressing, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Addressing, A::Error> {
                let t = Tagged::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(match t {
                    Tagged::Keep => Addressing::Keep,
                    Tagged::Dhcp => Addressing::Dhcp,
                    Tagged::Static(s) => Addressing::Static(s),
                })
            }
        }
        d.deserialize_any(Either)
    }
}

/// A static address with what goes with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticAddress {
    /// Address and prefix length: `10.20.0.5/24`, `2001:db8::5/64`.
    #[schema(value_type = String, example = "10.20.0.5/24")]
    pub address: IpNet,
    /// The default route's gateway, inside the address's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10.20.0.1")]
    pub gateway: Option<IpAddr>,
    /// DNS servers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub dns: Vec<IpAddr>,
}

/// As the CLI and the dashboard write it: `keep`, `dhcp`, or
/// `ADDRESS/PREFIX[,gw=IP][,dns=IP+IP…]` (`10.20.0.5/24,gw=10.20.0.1,dns=10.20.0.53`).
impl std::fmt::Display for Addressing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addressing::Keep => f.write_str("keep"),
            Addressing::Dhcp => f.write_str("dhcp"),
            Addressing::Static(s) => {
                write!(f, "{}", s.address)?;
                if let Some(gw) = s.gateway {
                    write!(f, ",gw={gw}")?;
                }
                if !s.dns.is_empty() {
                    let dns: Vec<String> = s.dns.iter().map(|d| d.to_string()).collect();
                    write!(f, ",dns={}", dns.join("+"))?;
                }
                Ok(())
            }
        }
    }
}

impl std::str::FromStr for Addressing {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        match text {
            "keep" => return Ok(Addressing::Keep),
            "dhcp" => return Ok(Addressing::Dhcp),
            _ => {}
        }
        let mut parts = text.split(',');
        let first = parts.next().unwrap_or_default();
        let address: IpNet = first.parse().map_err(|_| {
            format!("{first:?} is not keep, dhcp or ADDRESS/PREFIX (e.g. 10.20.0.5/24)")
        })?;
        let mut out = StaticAddress {
            address,
            gateway: None,
            dns: Vec::new(),
        };
        for part in parts {
            let bad_ip = |v: &str| format!("{v:?} in {part:?} is not an IP address");
            match part.split_once('=') {
                Some(("gw", v)) => out.gateway = Some(v.parse().map_err(|_| bad_ip(v))?),
                Some(("dns", v)) => {
                    for d in v.split('+') {
                        out.dns.push(d.parse().map_err(|_| bad_ip(d))?);
                    }
                }
                _ => {
                    return Err(format!(
                        "{part:?}: after the address come gw=IP and dns=IP+IP, comma-separated"
                    ))
                }
            }
        }
        Ok(Addressing::Static(out))
    }
}

/// One NIC's settings, named by its MAC address as the VM's definition has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicSettings {
    pub mac: String,
    /// For planned and unplanned failovers.
    #[serde(default)]
    pub failover: Addressing,
    /// For test copies (`failover --test`).
    #[serde(default)]
    pub test: Addressing,
    /// Restored by a failback: the address the NIC has at home. Needed as soon as a
    /// failover gives the NIC another address, since the guest keeps that one until it is
    /// told otherwise.
    #[serde(default)]
    pub home: Addressing,
}

/// A protected VM's failover network settings. NICs not named keep their address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    #[serde(default)]
    pub nics: Vec<NicSettings>,
    /// The VM's DNS record: pointed at its failover addresses by a failover, back at its
    /// home addresses by a failback. Test copies never touch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsRecord>,
}

/// A DNS record a failover moves (RFC 2136 dynamic update, signed with TSIG).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    /// The record's full name: `web.example.com`.
    pub name: String,
    /// The zone it is in: `example.com`.
    pub zone: String,
    /// The zone's primary server, which takes updates (TCP): `10.1.0.53:53`.
    #[schema(value_type = String, example = "10.1.0.53:53")]
    pub server: std::net::SocketAddr,
    /// The TSIG key's name. Its file, as `tsig-keygen` writes it, is
    /// `HOME/server/dns-keys/NAME.key` on the Lifeboat server (the secret never passes
    /// through the API). None: unsigned updates (a zone that allows them by address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The TTL the records get when they move, in seconds: how long clients may keep
    /// the old address after the next move.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

fn default_ttl() -> u32 {
    60
}

fn trimmed_lower(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A NIC's addressing in one move, as the server hands it to the agent that starts the
/// VM, which writes it into the guest's first-boot network configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicAddressing {
    /// The NIC's MAC address in the VM's definition (a test copy's NIC gets another one;
    /// the agent matches it by this).
    pub mac: String,
    pub addressing: Addressing,
}

/// A network of a host (`bridge:br0`, `network:default`, `user`, `isolated`) and the
/// subnets the host's own addresses on it show. An empty list means unknown (a bridge
/// the host has no address on): an address on it cannot be checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostNetwork {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub subnets: Vec<IpNet>,
}

/// A setting refused, with what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("NIC {mac}: the VM has no NIC with this MAC address (it has: {known}); name one of its NICs")]
    UnknownNic { mac: String, known: String },
    #[error("NIC {mac} is named twice; give each NIC one entry")]
    DuplicateNic { mac: String },
    #[error("NIC {mac}: a failover changes its address, so a failback must restore the home one; give its home address (or dhcp) for the failback")]
    NoHomeAddress { mac: String },
    #[error("NIC {mac} ({which}): {address} is its subnet's {what} address, not a host's; choose another address")]
    NotAHost {
        mac: String,
        which: &'static str,
        address: IpNet,
        what: &'static str,
    },
    #[error("NIC {mac} ({which}): gateway {gateway} is outside {address}'s subnet {subnet}; give a gateway inside it")]
    GatewayOutside {
        mac: String,
        which: &'static str,
        gateway: IpAddr,
        address: IpNet,
        subnet: IpNet,
    },
    #[error("NIC {mac} ({which}): the gateway {gateway} is the address itself")]
    GatewayIsAddress {
        mac: String,
        which: &'static str,
        gateway: IpAddr,
    },
    #[error("DNS record {name}: {why}")]
    Dns { name: String, why: String },
    #[error("NIC {mac} ({which}): the recovery host has no network {network} (it has: {known}); map the NIC to one of them (--network-map) or create it on that host")]
    NoSuchNetwork {
        mac: String,
        which: &'static str,
        network: String,
        known: String,
    },
    #[error("NIC {mac} ({which}): {address} is outside the subnet(s) {subnets} of {network} on the recovery host; choose an address there")]
    OutsideSubnet {
        mac: String,
        which: &'static str,
        address: IpNet,
        network: String,
        subnets: String,
    },
}

/// Which of a NIC's settings applies: a real move's or a test copy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    /// A planned or unplanned failover: the NIC's `failover` setting.
    Failover,
    /// A test copy: its `test` setting.
    Test,
    /// Back home: its `home` setting.
    Failback,
}

impl MoveKind {
    fn label(self) -> &'static str {
        match self {
            MoveKind::Failover => "failover",
            MoveKind::Test => "test",
            MoveKind::Failback => "home",
        }
    }
}

/// MAC addresses compare without case (`52:54:00:AB:…` is `52:54:00:ab:…`).
fn same_mac(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl StaticAddress {
    fn check(&self, mac: &str, which: &'static str) -> Result<(), NetworkError> {
        let a = self.address;
        // An IPv4 subnet's first and last addresses are no host's (except /31 and /32).
        if let IpNet::V4(v4) = a {
            if v4.prefix_len() < 31 {
                let what = if v4.addr() == v4.network() {
                    Some("network")
                } else if v4.addr() == v4.broadcast() {
                    Some("broadcast")
                } else {
                    None
                };
                if let Some(what) = what {
                    return Err(NetworkError::NotAHost {
                        mac: mac.into(),
                        which,
                        address: a,
                        what,
                    });
                }
            }
        }
        if let Some(gw) = self.gateway {
            if gw == a.addr() {
                return Err(NetworkError::GatewayIsAddress {
                    mac: mac.into(),
                    which,
                    gateway: gw,
                });
            }
            if !a.trunc().contains(&gw) {
                return Err(NetworkError::GatewayOutside {
                    mac: mac.into(),
                    which,
                    gateway: gw,
                    address: a,
                    subnet: a.trunc(),
                });
            }
        }
        Ok(())
    }
}

impl NicSettings {
    /// The addressing for `kind` of move.
    pub fn addressing(&self, kind: MoveKind) -> &Addressing {
        match kind {
            MoveKind::Failover => &self.failover,
            MoveKind::Test => &self.test,
            MoveKind::Failback => &self.home,
        }
    }
}

impl NetworkSettings {
    /// The settings of the NIC with `mac`, if it has any.
    pub fn nic(&self, mac: &str) -> Option<&NicSettings> {
        self.nics.iter().find(|n| same_mac(&n.mac, mac))
    }

    /// The addresses the DNS record points at after a move of `kind`: the NICs' static
    /// addresses for it.
    pub fn dns_addresses(&self, kind: MoveKind) -> Vec<IpAddr> {
        self.nics
            .iter()
            .filter_map(|n| match n.addressing(kind) {
                Addressing::Static(s) => Some(s.address.addr()),
                _ => None,
            })
            .collect()
    }

    /// The DNS record's own checks: a name inside its zone, a sane TTL, a key name that
    /// is a file name; and addresses to point it at, known before the move: every NIC a
    /// failover re-addresses has a static failover and home address.
    fn check_dns(&self) -> Result<(), NetworkError> {
        let Some(d) = &self.dns else { return Ok(()) };
        let bad = |why: String| NetworkError::Dns {
            name: d.name.clone(),
            why,
        };
        let (name, zone) = (trimmed_lower(&d.name), trimmed_lower(&d.zone));
        if zone.is_empty() || !name.ends_with(&format!(".{zone}")) {
            return Err(bad(format!(
                "not inside zone {}; give the record's full name (e.g. web.{})",
                d.zone, d.zone
            )));
        }
        if !(1..=86_400).contains(&d.ttl) {
            return Err(bad(format!(
                "TTL {} s: give 1 to 86400 (a short TTL, e.g. 60, lets clients follow a move sooner)",
                d.ttl
            )));
        }
        if let Some(key) = &d.key {
            let ok = !key.is_empty()
                && !key.starts_with('.')
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !ok {
                return Err(bad(format!(
                    "key name {key:?}: letters, digits, '.', '-' and '_' only (its file is dns-keys/NAME.key)"
                )));
            }
        }
        let moved: Vec<&NicSettings> = self
            .nics
            .iter()
            .filter(|n| n.failover != Addressing::Keep)
            .collect();
        if moved.is_empty() {
            return Err(bad(
                "no NIC gets another address after a failover, so the record needs no switch (the same address answers at the recovery site); remove the DNS record or give a NIC a failover address".into(),
            ));
        }
        for n in moved {
            for (which, a) in [("failover", &n.failover), ("home", &n.home)] {
                if !matches!(a, Addressing::Static(_)) {
                    return Err(bad(format!(
                        "NIC {}'s {which} address is {a}: the record can follow only addresses known before the move; give a static one",
                        n.mac
                    )));
                }
            }
        }
        Ok(())
    }

    /// Without the NICs that keep their address everywhere: they say nothing.
    pub fn without_keep_only(mut self) -> Self {
        self.nics.retain(|n| {
            [&n.failover, &n.test, &n.home]
                .iter()
                .any(|a| **a != Addressing::Keep)
        });
        self
    }

    /// What a move of `kind` tells the guest: every NIC's addressing when any is
    /// addressed anew (NICs not named keep theirs); nothing when none is.
    pub fn for_move(&self, kind: MoveKind) -> Vec<NicAddressing> {
        if !self.readdresses(kind) {
            return Vec::new();
        }
        self.nics
            .iter()
            .filter(|n| *n.addressing(kind) != Addressing::Keep)
            .map(|n| NicAddressing {
                mac: n.mac.clone(),
                addressing: n.addressing(kind).clone(),
            })
            .collect()
    }

    /// Whether any NIC is addressed anew in `kind` of move (the guest then needs a
    /// network configuration at its first boot there).
    pub fn readdresses(&self, kind: MoveKind) -> bool {
        self.nics
            .iter()
            .any(|n| *n.addressing(kind) != Addressing::Keep)
    }

    /// Checks the settings on their own and against the VM's NICs (`vm_macs`): every
    /// NIC named is one of the VM's, once; every static address is a host's address and
    /// its gateway lies in its subnet.
    pub fn check(&self, vm_macs: &[String]) -> Result<(), NetworkError> {
        for (i, nic) in self.nics.iter().enumerate() {
            if !vm_macs.iter().any(|m| same_mac(m, &nic.mac)) {
                return Err(NetworkError::UnknownNic {
                    mac: nic.mac.clone(),
                    known: vm_macs.join(", "),
                });
            }
            if self.nics[..i].iter().any(|n| same_mac(&n.mac, &nic.mac)) {
                return Err(NetworkError::DuplicateNic {
                    mac: nic.mac.clone(),
                });
            }
            for kind in [MoveKind::Failover, MoveKind::Test, MoveKind::Failback] {
                if let Addressing::Static(s) = nic.addressing(kind) {
                    s.check(&nic.mac, kind.label())?;
                }
            }
            if nic.failover != Addressing::Keep && nic.home == Addressing::Keep {
                return Err(NetworkError::NoHomeAddress {
                    mac: nic.mac.clone(),
                });
            }
        }
        self.check_dns()
    }

    /// Checks a move of `kind` against the recovery host: each NIC (MAC, the network it
    /// joins there) must join a network that host has, and a new address must lie in a
    /// subnet that network carries. Returns what could not be checked (a network whose
    /// subnets the host does not know), for the operation's log.
    pub fn check_against(
        &self,
        kind: MoveKind,
        nics: &[(String, String)],
        host: &[HostNetwork],
    ) -> Result<Vec<String>, NetworkError> {
        let mut unchecked = Vec::new();
        for (mac, network) in nics {
            let Some(net) = host.iter().find(|n| &n.name == network) else {
                return Err(NetworkError::NoSuchNetwork {
                    mac: mac.clone(),
                    which: kind.label(),
                    network: network.clone(),
                    known: host
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let Some(Addressing::Static(s)) = self.nic(mac).map(|n| n.addressing(kind)) else {
                continue;
            };
            if net.subnets.is_empty() {
                unchecked.push(format!(
                    "NIC {mac}: {} on {network} not checked: the recovery host has no address there to show its subnet",
                    s.address
                ));
                continue;
            }
            if !net
                .subnets
                .iter()
                .any(|sub| sub.contains(&s.address.addr()))
            {
                return Err(NetworkError::OutsideSubnet {
                    mac: mac.clone(),
                    which: kind.label(),
                    address: s.address,
                    network: network.clone(),
                    subnets: net
                        .subnets
                        .iter()
                        .map(|s| s.trunc().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(unchecked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_nic(mac: &str, address: &str, gateway: Option<&str>) -> NicSettings {
        NicSettings {
            mac: mac.into(),
            failover: Addressing::Static(StaticAddress {
                address: address.parse().unwrap(),
                gateway: gateway.map(|g| g.parse().unwrap()),
                dns: vec!["10.20.0.53".parse().unwrap()],
            }),
            test: Addressing::Keep,
            home: Addressing::Static(StaticAddress {
                address: "192.168.1.5/24".parse().unwrap(),
                gateway: None,
                dns: vec![],
            }),
        }
    }

    const MAC: &str = "52:54:00:12:34:56";

    #[test]
    fn settings_read_as_the_api_writes_them() {
        let json = r#"{"nics": [{"mac": "52:54:00:12:34:56",
            "failover": {"mode": "static", "address": "10.20.0.5/24", "gateway": "10.20.0.1", "dns": ["10.20.0.53"]},
            "test": {"mode": "keep"}, "home": {"mode": "static", "address": "192.168.1.5/24"}}]}"#;
        let s: NetworkSettings = serde_json::from_str(json).unwrap();
        assert_eq!(
            s.nics[0],
            static_nic(MAC, "10.20.0.5/24", Some("10.20.0.1"))
        );
        // The dashboard's text form reads the same.
        let text = r#"{"nics": [{"mac": "52:54:00:12:34:56",
            "failover": "10.20.0.5/24,gw=10.20.0.1,dns=10.20.0.53", "test": "keep",
            "home": "192.168.1.5/24"}]}"#;
        assert_eq!(serde_json::from_str::<NetworkSettings>(text).unwrap(), s);
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["nics"][0]["failover"]["mode"], "static");
        assert_eq!(back["nics"][0]["test"]["mode"], "keep");
        // Not an address, an unknown field: refused when read.
        for bad in [
            r#"{"nics": [{"mac": "x", "failover": {"mode": "static", "address": "10.20.0.5"}}]}"#,
            r#"{"nics": [{"mac": "x", "failover": {"mode": "static", "address": "nope/24"}}]}"#,
            r#"{"nics": [{"mac": "x", "failover": {"mode": "bootp"}}]}"#,
            r#"{"nics": [{"mac": "x", "ip": "10.0.0.1"}]}"#,
            r#"{"nics": [{"mac": "x", "failover": "10.0.0.1"}]}"#,
            r#"{"nics": [{"mac": "x", "failover": 7}]}"#,
        ] {
            assert!(
                serde_json::from_str::<NetworkSettings>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn addressing_reads_as_it_is_written() {
        for text in [
            "keep",
            "dhcp",
            "10.20.0.5/24",
            "10.20.0.5/24,gw=10.20.0.1",
            "10.20.0.5/24,gw=10.20.0.1,dns=10.20.0.53+1.1.1.1",
            "2001:db8::5/64,dns=2001:db8::53",
        ] {
            let a: Addressing = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
        }
        for (bad, says) in [
            ("10.20.0.5", "not keep, dhcp or ADDRESS/PREFIX"),
            ("static", "not keep, dhcp"),
            ("10.20.0.5/24,gw=x", "not an IP address"),
            ("10.20.0.5/24,mtu=9000", "gw=IP and dns=IP+IP"),
        ] {
            let err = bad.parse::<Addressing>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn settings_are_checked_against_the_vms_nics_and_their_subnets() {
        let macs = vec![MAC.to_string()];
        let ok = NetworkSettings {
            nics: vec![static_nic(MAC, "10.20.0.5/24", Some("10.20.0.1"))],
            dns: None,
        };
        ok.check(&macs).unwrap();
        // The MAC in capitals is the same NIC.
        let upper = NetworkSettings {
            nics: vec![static_nic(&MAC.to_uppercase(), "10.20.0.5/24", None)],
            ..Default::default()
        };
        upper.check(&macs).unwrap();
        let cases = [
            (
                static_nic("52:54:00:00:00:01", "10.20.0.5/24", None),
                "no NIC with this MAC",
            ),
            (
                static_nic(MAC, "10.20.0.5/24", Some("10.30.0.1")),
                "outside 10.20.0.5/24's subnet 10.20.0.0/24",
            ),
            (static_nic(MAC, "10.20.0.0/24", None), "network address"),
            (static_nic(MAC, "10.20.0.255/24", None), "broadcast address"),
            (
                static_nic(MAC, "10.20.0.5/24", Some("10.20.0.5")),
                "the address itself",
            ),
        ];
        for (nic, says) in cases {
            let err = NetworkSettings {
                nics: vec![nic],
                ..Default::default()
            }
            .check(&macs)
            .unwrap_err()
            .to_string();
            assert!(err.contains(says), "{err} / {says}");
        }
        let twice = NetworkSettings {
            nics: vec![
                static_nic(MAC, "10.20.0.5/24", None),
                static_nic(MAC, "10.20.0.6/24", None),
            ],
            ..Default::default()
        };
        assert!(matches!(
            twice.check(&macs),
            Err(NetworkError::DuplicateNic { .. })
        ));
        // A failover address without a home one to restore at failback.
        let mut homeless = static_nic(MAC, "10.20.0.5/24", None);
        homeless.home = Addressing::Keep;
        assert!(matches!(
            NetworkSettings {
                nics: vec![homeless.clone()],
                ..Default::default()
            }
            .check(&macs),
            Err(NetworkError::NoHomeAddress { .. })
        ));
        homeless.home = Addressing::Dhcp;
        NetworkSettings {
            nics: vec![homeless],
            ..Default::default()
        }
        .check(&macs)
        .unwrap();
        // /31 and /32 have no network or broadcast address to refuse.
        NetworkSettings {
            nics: vec![static_nic(MAC, "10.20.0.0/31", None)],
            ..Default::default()
        }
        .check(&macs)
        .unwrap();
    }

    #[test]
    fn a_dns_record_is_inside_its_zone_and_follows_static_addresses() {
        let macs = vec![MAC.to_string()];
        let record = |name: &str, ttl: u32, key: Option<&str>| DnsRecord {
            name: name.into(),
            zone: "example.com.".into(),
            server: "10.1.0.53:53".parse().unwrap(),
            key: key.map(String::from),
            ttl,
        };
        let with = |nic: NicSettings, dns: DnsRecord| NetworkSettings {
            nics: vec![nic],
            dns: Some(dns),
        };
        let nic = static_nic(MAC, "10.20.0.5/24", None);
        let ok = with(
            nic.clone(),
            record("Web.Example.com", 60, Some("lifeboat-key")),
        );
        ok.check(&macs).unwrap();
        assert_eq!(
            ok.dns_addresses(MoveKind::Failover),
            vec!["10.20.0.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            ok.dns_addresses(MoveKind::Failback),
            vec!["192.168.1.5".parse::<IpAddr>().unwrap()]
        );
        let mut dhcp_home = nic.clone();
        dhcp_home.home = Addressing::Dhcp;
        let mut kept = nic.clone();
        kept.failover = Addressing::Keep;
        kept.home = Addressing::Keep;
        kept.test = "10.0.0.9/24".parse().unwrap();
        for (bad, says) in [
            (
                with(nic.clone(), record("web.example.org", 60, None)),
                "not inside zone",
            ),
            (
                with(nic.clone(), record("example.com", 60, None)),
                "not inside zone",
            ),
            (
                with(nic.clone(), record("web.example.com", 0, None)),
                "TTL 0 s",
            ),
            (
                with(nic.clone(), record("web.example.com", 60, Some("../k"))),
                "key name",
            ),
            (
                with(dhcp_home, record("web.example.com", 60, None)),
                "home address is dhcp",
            ),
            (
                with(kept, record("web.example.com", 60, None)),
                "needs no switch",
            ),
        ] {
            let err = bad.check(&macs).unwrap_err().to_string();
            assert!(err.contains(says), "{err} / {says}");
        }
        // Read with its default TTL.
        let read: NetworkSettings = serde_json::from_str(
            r#"{"nics": [], "dns": {"name": "web.example.com", "zone": "example.com", "server": "10.1.0.53:53"}}"#,
        )
        .unwrap();
        assert_eq!(read.dns.unwrap().ttl, 60);
    }

    #[test]
    fn a_move_is_checked_against_the_recovery_hosts_networks() {
        let host = vec![
            HostNetwork {
                name: "bridge:br-dr".into(),
                subnets: vec!["10.20.0.1/24".parse().unwrap()],
            },
            HostNetwork {
                name: "bridge:br-dark".into(),
                subnets: vec![],
            },
            HostNetwork {
                name: "isolated".into(),
                subnets: vec![],
            },
        ];
        let at = |net: &str| vec![(MAC.to_string(), net.to_string())];
        let s = NetworkSettings {
            nics: vec![static_nic(MAC, "10.20.0.5/24", Some("10.20.0.1"))],
            ..Default::default()
        };
        assert!(s
            .check_against(MoveKind::Failover, &at("bridge:br-dr"), &host)
            .unwrap()
            .is_empty());
        let err = s
            .check_against(MoveKind::Failover, &at("bridge:br-nope"), &host)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no network bridge:br-nope") && err.contains("bridge:br-dr"));
        let far = NetworkSettings {
            nics: vec![static_nic(MAC, "10.99.0.5/24", None)],
            ..Default::default()
        };
        let err = far
            .check_against(MoveKind::Failover, &at("bridge:br-dr"), &host)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the subnet(s) 10.20.0.0/24"), "{err}");
        // A bridge without a host address: said, not refused.
        let unchecked = far
            .check_against(MoveKind::Failover, &at("bridge:br-dark"), &host)
            .unwrap();
        assert_eq!(unchecked.len(), 1, "{unchecked:?}");
        // A test copy uses the test setting (keep): nothing to check but the network.
        assert!(far
            .check_against(MoveKind::Test, &at("isolated"), &host)
            .unwrap()
            .is_empty());
    }
}
