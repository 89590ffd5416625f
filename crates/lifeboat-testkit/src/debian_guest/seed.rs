//! The cloud-init NoCloud seed disk: meta-data, user-data and a network-config.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// A static IPv4 configuration for one NIC, rendered as cloud-init network-config
/// version 2 by [`NoCloudSeed::with_static_ipv4`]. The NIC is found by its MAC address,
/// so the config holds whatever PCI slot the NIC gets on a host.
#[derive(Clone, Debug)]
pub struct StaticIpv4 {
    /// The NIC's MAC address as QEMU is given it (`52:54:00:…`).
    pub mac: String,
    /// The NIC's id in the config (its key under `ethernets`), e.g. `lan0`.
    pub id: String,
    /// Renames the NIC to `id` (`set-name`; at most 15 bytes). Without it the NIC keeps
    /// the name the guest gave it (`enp0s4`): the seeds Lifeboat's agent writes do that.
    pub rename: bool,
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The default route's next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers (systemd-resolved uses them).
    pub dns: Vec<Ipv4Addr>,
}

impl StaticIpv4 {
    /// The network-config (version 2) document for this NIC.
    pub fn network_config(&self) -> String {
        let mut doc = format!(
            "version: 2\nethernets:\n  {id}:\n    match:\n      macaddress: \"{mac}\"\n",
            id = self.id,
            mac = self.mac.to_ascii_lowercase(),
        );
        if self.rename {
            doc.push_str(&format!("    set-name: {}\n", self.id));
        }
        doc.push_str(&format!(
            "    addresses:\n      - {}/{}\n",
            self.address, self.prefix
        ));
        if let Some(gateway) = self.gateway {
            doc.push_str(&format!(
                "    routes:\n      - to: 0.0.0.0/0\n        via: {gateway}\n"
            ));
        }
        if !self.dns.is_empty() {
            let servers: Vec<String> = self.dns.iter().map(|a| a.to_string()).collect();
            doc.push_str(&format!(
                "    nameservers:\n      addresses: [{}]\n",
                servers.join(", ")
            ));
        }
        doc
    }
}

/// The three files of a cloud-init NoCloud seed. [`NoCloudSeed::new`] fills meta-data
/// and an empty `#cloud-config`; the fields are public for tests that need more.
#[derive(Clone, Debug)]
pub struct NoCloudSeed {
    /// YAML: `instance-id` (a new one makes cloud-init treat the boot as a new
    /// instance and apply this seed's network config) and `local-hostname`.
    pub meta_data: String,
    /// `#cloud-config` YAML (or any user-data cloud-init accepts).
    pub user_data: String,
    /// network-config version 2, or `None`: cloud-init's fallback (DHCP on one NIC).
    pub network_config: Option<String>,
}

impl NoCloudSeed {
    /// A seed naming the instance and its hostname, with no network config yet.
    pub fn new(instance_id: &str, hostname: &str) -> anyhow::Result<Self> {
        // Both go into YAML unquoted: allow only what needs no quoting.
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        };
        if !plain(instance_id) {
            bail!("instance-id {instance_id:?}: use 1 to 63 of [A-Za-z0-9._-]");
        }
        if !plain(hostname) || hostname.contains('_') {
            bail!("hostname {hostname:?}: use 1 to 63 of [A-Za-z0-9.-]");
        }
        Ok(Self {
            meta_data: format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n"),
            user_data: "#cloud-config\n{}\n".to_string(),
            network_config: None,
        })
    }

    /// Gives the guest `nic`'s static address, route and DNS servers.
    pub fn with_static_ipv4(mut self, nic: &StaticIpv4) -> Self {
        self.network_config = Some(nic.network_config());
        self
    }

    /// Writes the seed as a 2 MiB FAT disk image labelled `CIDATA` at `path` (made with
    /// `mkfs.vfat` and `mcopy`, no mount; attach it to QEMU as a raw drive).
    pub fn write_disk(&self, path: &Path) -> anyhow::Result<()> {
        let files = tempfile::tempdir().context("temporary directory for the seed files")?;
        let mut names = vec!["meta-data", "user-data"];
        std::fs::write(files.path().join("meta-data"), &self.meta_data)?;
        std::fs::write(files.path().join("user-data"), &self.user_data)?;
        if let Some(network) = &self.network_config {
            std::fs::write(files.path().join("network-config"), network)?;
            names.push("network-config");
        }
        let _ = std::fs::remove_file(path); // mkfs.vfat -C refuses an existing file
        run_tool(
            Command::new("mkfs.vfat")
                .args(["-C", "-n", "CIDATA"])
                .arg(path)
                .arg("2048"),
            "dosfstools",
        )?;
        let mut mcopy = Command::new("mcopy");
        mcopy.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(path);
        for name in &names {
            mcopy.arg(files.path().join(name));
        }
        run_tool(mcopy.arg("::/"), "mtools")
    }
}

fn run_tool(cmd: &mut Command, package: &str) -> anyhow::Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .with_context(|| format!("run {program} (install {package})"))?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_ipv4_renders_network_config_version_2() {
        let nic = StaticIpv4 {
            mac: "52:54:00:AB:00:01".into(),
            id: "lan0".into(),
            rename: true,
            address: Ipv4Addr::new(192, 168, 77, 10),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(192, 168, 77, 1)),
            dns: vec![
                Ipv4Addr::new(192, 168, 77, 1),
                Ipv4Addr::new(192, 168, 77, 2),
            ],
        };
        assert_eq!(
            nic.network_config(),
            "version: 2\nethernets:\n  lan0:\n    match:\n      macaddress: \"52:54:00:ab:00:01\"\n    \
             set-name: lan0\n    addresses:\n      - 192.168.77.10/24\n    routes:\n      \
             - to: 0.0.0.0/0\n        via: 192.168.77.1\n    nameservers:\n      \
             addresses: [192.168.77.1, 192.168.77.2]\n"
        );
        let kept_name = StaticIpv4 {
            id: "lifeboat0".into(),
            rename: false,
            gateway: None,
            dns: vec![],
            ..nic
        };
        assert_eq!(
            kept_name.network_config(),
            "version: 2\nethernets:\n  lifeboat0:\n    match:\n      macaddress: \"52:54:00:ab:00:01\"\n    \
             addresses:\n      - 192.168.77.10/24\n"
        );
    }

    #[test]
    fn seed_names_must_not_need_yaml_quoting() {
        assert!(NoCloudSeed::new("i-1", "web-1").is_ok());
        assert!(NoCloudSeed::new("i: 1", "web").is_err());
        assert!(NoCloudSeed::new("i-1", "web_1").is_err());
        assert!(NoCloudSeed::new("", "web").is_err());
    }
}
