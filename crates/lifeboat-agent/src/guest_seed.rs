//! The first-boot network configuration of a recovered VM: a cloud-init NoCloud seed
//! (docs/networking.md). A small FAT volume labelled `CIDATA`, attached read-only to the
//! VM, holds `meta-data` (a new `instance-id`), `user-data` and `network-config`
//! (version 2, NICs matched by MAC address). cloud-init, which Debian, Ubuntu, RHEL and
//! SUSE cloud images carry, sees a new instance and applies that network configuration
//! at the copy's first boot, without anyone logging in. The user-data keeps everything
//! else of the machine as it was: its host name, its SSH host keys, its users.
//!
//! The volume has 2048-byte sectors, so the same image reads as a virtio disk (the QEMU
//! driver) and as a CD-ROM (libvirt, whose CD-ROMs are never protected).

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use lifeboat_types::{Addressing, NicAddressing};

/// Big enough for the three files in any FAT variant fatfs formats; small on disk.
const VOLUME_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("NIC {0:?}: not a MAC address (six hex pairs separated by colons)")]
    BadMac(String),
    #[error("instance id {0:?}: only letters, digits, '-', '_' and '.'")]
    BadInstanceId(String),
    #[error("writing the cloud-init seed {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn quoted(ip: &IpAddr) -> String {
    format!("\"{ip}\"")
}

/// The `network-config` (cloud-init's version 2) for `nics`. Every value written is a
/// checked MAC or a parsed address, so nothing from a request shapes the YAML.
pub fn network_config(nics: &[NicAddressing]) -> Result<String, SeedError> {
    let mut y = String::from("version: 2\nethernets:\n");
    for (i, nic) in nics.iter().enumerate() {
        if !valid_mac(&nic.mac) {
            return Err(SeedError::BadMac(nic.mac.clone()));
        }
        y += &format!(
            "  lifeboat{i}:\n    match:\n      macaddress: \"{}\"\n",
            nic.mac.to_ascii_lowercase()
        );
        match &nic.addressing {
            // Not named: the guest's own configuration stays.
            Addressing::Keep => {}
            Addressing::Dhcp => y += "    dhcp4: true\n",
            Addressing::Static(s) => {
                y += &format!(
                    "    dhcp4: false\n    addresses:\n      - \"{}\"\n",
                    s.address
                );
                if let Some(gw) = s.gateway {
                    let key = if gw.is_ipv4() { "gateway4" } else { "gateway6" };
                    y += &format!("    {key}: {}\n", quoted(&gw));
                }
                if !s.dns.is_empty() {
                    let dns: Vec<String> = s.dns.iter().map(quoted).collect();
                    y += &format!("    nameservers:\n      addresses: [{}]\n", dns.join(", "));
                }
            }
        }
    }
    Ok(y)
}

/// The user-data: the same machine, moved; nothing but its network changes. (A new
/// instance would otherwise regenerate its SSH host keys and its host name. An image
/// whose cloud.cfg creates a default user creates it again if it is missing: cloud-init
/// refuses `users: []` as invalid.)
// Host keys are kept (`ssh_deletekeys: false`); cloud-init only makes a key of a type the
// guest lacks. `ssh_genkeytypes: []` would say "make none", but its schema wants at least
// one type, and cloud-init 22.4 then logs the whole user-data as invalid.
pub const USER_DATA: &str = "#cloud-config
# Lifeboat: this is the same machine, recovered at another site; only its network changes.
preserve_hostname: true
manage_etc_hosts: false
ssh_deletekeys: false
";

/// Writes a seed for `instance_id` with `nics`' addressing at `path` (replaced whole:
/// written beside it, then renamed).
pub fn write(path: &Path, instance_id: &str, nics: &[NicAddressing]) -> Result<(), SeedError> {
    if instance_id.is_empty()
        || !instance_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(SeedError::BadInstanceId(instance_id.into()));
    }
    let network = network_config(nics)?;
    let io = |source| SeedError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let files = [
        ("meta-data", format!("instance-id: {instance_id}\n")),
        ("user-data", USER_DATA.to_string()),
        ("network-config", network),
    ];
    let result = (|| {
        let mut disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        disk.set_len(VOLUME_BYTES)?;
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new()
                .bytes_per_sector(2048)
                .volume_label(*b"CIDATA     "),
        )?;
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
            for (name, text) in &files {
                let mut f = fs.root_dir().create_file(name)?;
                f.truncate()?;
                f.write_all(text.as_bytes())?;
                f.flush()?;
            }
            fs.unmount()?;
        }
        disk.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn nic(mac: &str, a: &str) -> NicAddressing {
        NicAddressing {
            mac: mac.into(),
            addressing: a.parse().unwrap(),
        }
    }

    #[test]
    fn network_config_names_each_nic_by_mac() {
        let y = network_config(&[
            nic(
                "52:54:00:AA:00:01",
                "10.20.0.5/24,gw=10.20.0.1,dns=10.20.0.53+1.1.1.1",
            ),
            nic("52:54:00:aa:00:02", "dhcp"),
            nic("52:54:00:aa:00:03", "2001:db8::5/64,gw=2001:db8::1"),
        ])
        .unwrap();
        assert_eq!(
            y,
            "version: 2\nethernets:\n  lifeboat0:\n    match:\n      macaddress: \"52:54:00:aa:00:01\"\n    dhcp4: false\n    addresses:\n      - \"10.20.0.5/24\"\n    gateway4: \"10.20.0.1\"\n    nameservers:\n      addresses: [\"10.20.0.53\", \"1.1.1.1\"]\n  lifeboat1:\n    match:\n      macaddress: \"52:54:00:aa:00:02\"\n    dhcp4: true\n  lifeboat2:\n    match:\n      macaddress: \"52:54:00:aa:00:03\"\n    dhcp4: false\n    addresses:\n      - \"2001:db8::5/64\"\n    gateway6: \"2001:db8::1\"\n"
        );
        for bad in [
            "52:54:00:aa:00",
            "52:54:00:aa:00:0g",
            "52:54:00:aa:00:01\nx: y",
        ] {
            assert!(matches!(
                network_config(&[nic(bad, "dhcp")]),
                Err(SeedError::BadMac(_))
            ));
        }
    }

    #[test]
    fn the_seed_is_a_cidata_volume_holding_the_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let nics = [nic("52:54:00:aa:00:01", "10.20.0.5/24")];
        write(&path, "lifeboat-r1", &nics).unwrap();
        // Written again (a resumed recovery): replaced whole.
        write(&path, "lifeboat-r1", &nics).unwrap();
        let disk = std::fs::File::open(&path).unwrap();
        let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
        let read = |name: &str| {
            let mut s = String::new();
            fs.root_dir()
                .open_file(name)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        assert_eq!(read("meta-data"), "instance-id: lifeboat-r1\n");
        assert_eq!(read("user-data"), USER_DATA);
        assert_eq!(read("network-config"), network_config(&nics).unwrap());
        assert!(!path.with_extension("tmp").exists());
        for bad in ["", "a b", "x\ny", "../x"] {
            assert!(matches!(
                write(&path, bad, &nics),
                Err(SeedError::BadInstanceId(_))
            ));
        }
    }
}
