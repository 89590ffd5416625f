//! A VM's definition: what the operator writes in a TOML file and what the driver keeps.
//!
//! ```toml
//! name = "web1"
//! memory_mib = 256
//! vcpus = 1
//! boot_order = ["vda"]
//!
//! [[disks]]
//! name = "vda"
//! path = "/var/lib/vms/web1.qcow2"
//! format = "qcow2"
//!
//! [[nics]]
//! mac = "52:54:00:12:34:56"
//! network = "user"
//! host_forwards = [{ host_port = 8080, guest_port = 80 }]
//! ```
//!
//! Specs are untrusted input: `VmSpec::parse` checks every field and says which one is
//! wrong, so a bad file never reaches QEMU's command line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{HypervisorError, Result};

/// A VM's name: lowercase letters, digits and '-', at most 40 characters. It is used in
/// paths and QEMU ids, hence the narrow alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    pub fn new(name: impl Into<String>) -> Result<Self, String> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if ok {
            Ok(VmName(name))
        } else {
            Err(format!(
                "VM name {name:?} is not valid: use 1-40 lowercase letters, digits and '-'"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VmName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        VmName::new(s)
    }
}
impl From<VmName> for String {
    fn from(n: VmName) -> String {
        n.0
    }
}
impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A disk's name inside its VM (`vda`, `data`): also its QEMU node name and NBD export name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DiskName(String);

impl DiskName {
    pub fn new(name: impl Into<String>) -> Result<Self, String> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 16
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(DiskName(name))
        } else {
            Err(format!(
                "disk name {name:?} is not valid: use 1-16 lowercase letters and digits, starting with a letter"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for DiskName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        DiskName::new(s)
    }
}
impl From<DiskName> for String {
    fn from(n: DiskName) -> String {
        n.0
    }
}
impl fmt::Display for DiskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub name: DiskName,
    pub path: PathBuf,
    pub format: DiskFormat,
}

/// A TCP port on the host's loopback forwarded to a port of the guest (user networks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostForward {
    pub host_port: u16,
    pub guest_port: u16,
    /// Bound on every address of the host, not only its loopback: a port exposed for a
    /// tester (`failover --test --expose`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// The guest's address the port leads to; none: the address QEMU's DHCP gives the
    /// guest (10.0.2.15). A copy given a static address on a user network needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_addr: Option<std::net::Ipv4Addr>,
}

impl HostForward {
    /// QEMU's `hostfwd=` for it.
    pub fn hostfwd(&self) -> String {
        // An empty host address binds every address of the host.
        let bind = if self.public { "" } else { "127.0.0.1" };
        let to = self.guest_addr.map(|a| a.to_string()).unwrap_or_default();
        format!(
            "hostfwd=tcp:{bind}:{}-{to}:{}",
            self.host_port, self.guest_port
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub mac: String,
    /// `user`: QEMU user-mode network with outbound access; `isolated`: the same with no
    /// route out of the guest (for test failovers); `bridge:NAME`: a tap on the host's
    /// Linux bridge NAME; `network:NAME`: libvirt's virtual network NAME (libvirt hosts).
    pub network: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_forwards: Vec<HostForward>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: VmName,
    /// Filled in at define time when the file leaves it out.
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
    pub memory_mib: u32,
    #[serde(default = "one")]
    pub vcpus: u32,
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Disk names, first boots first. Empty: disks in the order listed.
    #[serde(default)]
    pub boot_order: Vec<DiskName>,
    /// The domain's XML, for a VM a libvirt host runs: a libvirt recovery host defines
    /// the domain from it (disks and NICs rewritten); the fields above are the neutral
    /// description any driver can start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_xml: Option<String>,
    /// A cloud-init NoCloud seed (a `CIDATA` volume) attached read-only: a recovered
    /// copy's first-boot network configuration. Not one of the VM's disks: never
    /// replicated, and left out of the spec a recovery point keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<PathBuf>,
}

fn one() -> u32 {
    1
}

pub const KNOWN_NETWORKS: &[&str] = &["user", "isolated"];

/// A spec file larger than this is refused (a libvirt domain's XML included).
pub const MAX_SPEC_BYTES: usize = crate::libvirt::domain_xml::MAX_DOMAIN_XML + (64 << 10);

/// Where a NIC plugs in, from its spec's `network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkKind<'a> {
    User,
    Isolated,
    Bridge(&'a str),
    LibvirtNetwork(&'a str),
}

impl<'a> NetworkKind<'a> {
    /// Reads `network`; `None` when it names nothing known.
    pub fn parse(network: &'a str) -> Option<NetworkKind<'a>> {
        let name_ok = |n: &str, max: usize| {
            !n.is_empty()
                && n.len() <= max
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !n.starts_with(['-', '.'])
        };
        match network {
            "user" => Some(NetworkKind::User),
            "isolated" => Some(NetworkKind::Isolated),
            // Linux interface names are at most 15 bytes.
            _ => match network.split_once(':') {
                Some(("bridge", b)) if name_ok(b, 15) => Some(NetworkKind::Bridge(b)),
                Some(("network", n)) if name_ok(n, 64) => Some(NetworkKind::LibvirtNetwork(n)),
                _ => None,
            },
        }
    }
}

impl VmSpec {
    /// Parses and checks a spec. `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<VmSpec> {
        let invalid = |reason: String| HypervisorError::InvalidSpec {
            path: origin.to_path_buf(),
            reason,
        };
        if text.len() > MAX_SPEC_BYTES {
            return Err(invalid(format!(
                "file is larger than {} KiB",
                MAX_SPEC_BYTES >> 10
            )));
        }
        let spec: VmSpec = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        spec.check().map_err(invalid)?;
        Ok(spec)
    }

    pub fn load(path: &Path) -> Result<VmSpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| HypervisorError::io("reading VM spec", path, e))?;
        VmSpec::parse(&text, path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a VmSpec always serialises")
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if !(32..=1024 * 1024).contains(&self.memory_mib) {
            return Err(format!(
                "memory_mib = {} is out of range 32..=1048576",
                self.memory_mib
            ));
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(format!("vcpus = {} is out of range 1..=64", self.vcpus));
        }
        if self.disks.is_empty() || self.disks.len() > 16 {
            return Err(format!(
                "a VM needs 1 to 16 disks, this one lists {}",
                self.disks.len()
            ));
        }
        if let Some(seed) = &self.seed {
            let p = seed.to_string_lossy();
            // The same rules as a disk's path: QEMU's -blockdev splits on ','.
            if !seed.is_absolute() || p.contains(',') || p.contains('\n') {
                return Err(format!(
                    "seed {p}: must be an absolute path without ',' or newlines"
                ));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            if !d.path.is_absolute() {
                return Err(format!(
                    "disk {}: path {} must be absolute",
                    d.name,
                    d.path.display()
                ));
            }
            let p = d.path.to_string_lossy();
            // QEMU's -blockdev syntax splits on ','; refuse rather than mis-parse.
            if p.contains(',') || p.contains('\n') {
                return Err(format!(
                    "disk {}: path {p} must not contain ',' or newlines",
                    d.name
                ));
            }
            if self.disks[..i].iter().any(|o| o.name == d.name) {
                return Err(format!("disk name {} is used twice", d.name));
            }
        }
        if self.nics.len() > 8 {
            return Err(format!("at most 8 NICs, this VM lists {}", self.nics.len()));
        }
        for nic in &self.nics {
            if !valid_mac(&nic.mac) {
                return Err(format!(
                    "NIC MAC {:?} is not valid: write six hex pairs like 52:54:00:12:34:56",
                    nic.mac
                ));
            }
            if NetworkKind::parse(&nic.network).is_none() {
                return Err(format!(
                    "NIC {}: network {:?} is not known; use one of {:?}, bridge:NAME or \
                     network:NAME (a libvirt network)",
                    nic.mac, nic.network, KNOWN_NETWORKS
                ));
            }
            if !nic.host_forwards.is_empty()
                && !matches!(
                    NetworkKind::parse(&nic.network),
                    Some(NetworkKind::User | NetworkKind::Isolated)
                )
            {
                return Err(format!(
                    "NIC {}: host_forwards work on user and isolated networks only; a NIC on \
                     {} is reached at its own address",
                    nic.mac, nic.network
                ));
            }
            for f in &nic.host_forwards {
                if f.host_port == 0 || f.guest_port == 0 {
                    return Err(format!("NIC {}: forwarded ports must not be 0", nic.mac));
                }
            }
        }
        for b in &self.boot_order {
            if !self.disks.iter().any(|d| &d.name == b) {
                return Err(format!(
                    "boot_order names disk {b}, which the VM does not have"
                ));
            }
        }
        Ok(())
    }

    pub fn disk(&self, name: &DiskName) -> Option<&DiskSpec> {
        self.disks.iter().find(|d| &d.name == name)
    }

    /// Disks in boot order: those named in `boot_order` first, then the rest as listed.
    pub fn disks_in_boot_order(&self) -> Vec<&DiskSpec> {
        let mut out: Vec<&DiskSpec> = self
            .boot_order
            .iter()
            .filter_map(|n| self.disk(n))
            .collect();
        for d in &self.disks {
            if !self.boot_order.contains(&d.name) {
                out.push(d);
            }
        }
        out
    }
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "web1"
memory_mib = 256
boot_order = ["vda"]
[[disks]]
name = "vda"
path = "/vms/web1.qcow2"
format = "qcow2"
[[disks]]
name = "data"
path = "/vms/web1-data.raw"
format = "raw"
[[nics]]
mac = "52:54:00:12:34:56"
network = "user"
host_forwards = [{ host_port = 8080, guest_port = 80 }]
"#;

    fn parse(t: &str) -> Result<VmSpec> {
        VmSpec::parse(t, Path::new("test.toml"))
    }

    #[test]
    fn good_spec_round_trips() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(spec.vcpus, 1);
        assert_eq!(spec.disks.len(), 2);
        let again = parse(&spec.to_toml()).unwrap();
        assert_eq!(spec, again);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (GOOD.replace("web1\"\n", "Web 1\"\n"), "VM name"),
            (
                GOOD.replace("memory_mib = 256", "memory_mib = 1"),
                "memory_mib",
            ),
            (
                GOOD.replace("/vms/web1.qcow2", "vms/web1.qcow2"),
                "absolute",
            ),
            (GOOD.replace("/vms/web1.qcow2", "/vms/a,b"), "','"),
            (
                GOOD.replace("name = \"data\"", "name = \"vda\""),
                "used twice",
            ),
            (GOOD.replace("52:54:00:12:34:56", "52:54:00:12:34"), "MAC"),
            (
                GOOD.replace("network = \"user\"", "network = \"br0\""),
                "not known",
            ),
            (
                GOOD.replace("boot_order = [\"vda\"]", "boot_order = [\"vdz\"]"),
                "boot_order",
            ),
            (
                GOOD.replace("format = \"raw\"", "format = \"vmdk\""),
                "format",
            ),
            (format!("{GOOD}\nsurprise = 1\n"), "surprise"),
            // A seed path from a point another host wrote: never into QEMU's arguments.
            (
                GOOD.replace(
                    "memory_mib = 256",
                    "memory_mib = 256\nseed = \"/s/a,file=/etc/shadow\"",
                ),
                "seed",
            ),
            (
                GOOD.replace("memory_mib = 256", "memory_mib = 256\nseed = \"seed.img\""),
                "seed",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "error {err:?} should mention {needle:?}"
            );
            assert!(
                err.contains("test.toml"),
                "error {err:?} should name the file"
            );
        }
    }

    #[test]
    fn boot_order_puts_named_disks_first() {
        let spec = parse(&GOOD.replace("[\"vda\"]", "[\"data\"]")).unwrap();
        let order: Vec<_> = spec
            .disks_in_boot_order()
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(order, ["data", "vda"]);
    }
}
