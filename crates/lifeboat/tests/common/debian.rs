//! The real Debian guest (guest/debian) as a VM of a Lifeboat host: its own disk, and the
//! address it was installed with, from a cloud-init seed as a cloud image gets it.

use std::path::{Path, PathBuf};

use lifeboat_testkit::debian_guest::{debian_disk_copy, NoCloudSeed, StaticIpv4};

/// Writes `web`'s disk, its install seed (`nic`'s static address) and its spec (512 MiB,
/// the NIC on `network`) into `home`; returns the spec's path for `vm define`.
pub fn installed_web(home: &Path, nic: &StaticIpv4, network: &str) -> PathBuf {
    let disk = debian_disk_copy(home, "web.qcow2").unwrap();
    let seed = home.join("web-install-seed.img");
    NoCloudSeed::new("web-installed", "web")
        .unwrap()
        .with_static_ipv4(nic)
        .write_disk(&seed)
        .unwrap();
    let spec = home.join("web.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"web\"\nmemory_mib = 512\nseed = \"{}\"\n[[disks]]\nname = \"vda\"\npath = \"{}\"\n\
             format = \"qcow2\"\n[[nics]]\nmac = \"{}\"\nnetwork = \"{network}\"\n",
            seed.display(),
            disk.display(),
            nic.mac
        ),
    )
    .unwrap();
    spec
}
