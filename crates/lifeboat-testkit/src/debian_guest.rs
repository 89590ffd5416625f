//! The Debian test guest: a real Debian 12 VM for the tests that need what a customer's
//! VM has — systemd, cloud-init taking its hostname and network from a NoCloud seed,
//! qemu-guest-agent, systemd-networkd or ifupdown — e.g. network failover, where a
//! recovered copy must come up with the address of its new site. (The busybox guest of
//! [`crate::guest_image`] stays the fast one for everything else.)
//!
//! * [`debian_image`] builds the disk with `guest/debian/build.sh` (cached by that
//!   script, once per process here); [`debian_disk_copy`] gives a test its own copy.
//!   [`debian_image_with`] and [`debian_disk_copy_with`] do the same for the variant
//!   [`DebianNetwork`] names: the default renders cloud-init's network config to
//!   systemd-networkd, [`DebianNetwork::Ifupdown`] to ifupdown.
//! * [`NoCloudSeed`] writes the cloud-init seed disk (`cidata`): instance-id, hostname
//!   and a network-config (version 2), e.g. a static address from [`StaticIpv4`].
//!   cloud-init applies a network config once per instance: booting the same disk with
//!   a seed whose `instance-id` changed makes it a new instance, and it applies that
//!   seed's network config — how a recovered copy gets its new address.
//! * [`DebianVm`] boots it under QEMU TCG, its NIC on a tap in a network namespace (see
//!   [`crate::lab`]), with a root shell on its second serial port
//!   ([`DebianVm::console`]; the first is the boot console, [`DebianVm::console_log`])
//!   and the guest agent ([`DebianVm::agent`], [`GuestAgent`]).
//! * [`http_get_in`] and [`wait_http_in`] read the guest's service on port 80 (`/` is
//!   its hostname, `/ip` its global addresses as `IFACE ADDR/PREFIX` lines) from
//!   inside a namespace; [`ArpWatch`] records the ARP packets on its tap (the guest
//!   announces each address with a gratuitous ARP once its network is up).
//!
//! Modules: `seed` (the NoCloud seed), `vm` (QEMU), `agent` (the guest agent), `net`
//! (HTTP and ARP from a namespace).
//!
//! See `guest/debian/README.md` for the image itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

mod agent;
mod net;
mod seed;
mod vm;

pub use agent::GuestAgent;
pub use net::{http_get_in, wait_http_in, ArpPacket, ArpWatch};
pub use seed::{NoCloudSeed, StaticIpv4};
pub use vm::{DebianVm, DebianVmConfig};

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/debian/build.sh")
}

/// The network stack of a Debian test guest image: what cloud-init renders a seed's
/// network config to. Each is an image of its own (`guest/debian/README.md`, Variants).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DebianNetwork {
    /// systemd-networkd (`/etc/systemd/network/10-cloud-init-NAME.network`).
    #[default]
    Networkd,
    /// ifupdown: cloud-init's eni renderer writes
    /// `/etc/network/interfaces.d/50-cloud-init`, `networking.service` brings it up.
    Ifupdown,
}

impl DebianNetwork {
    /// Its name for `guest/debian/build.sh` (`LIFEBOAT_DEBIAN_NETWORK`).
    pub fn name(self) -> &'static str {
        match self {
            DebianNetwork::Networkd => "networkd",
            DebianNetwork::Ifupdown => "ifupdown",
        }
    }
}

/// Builds (or finds cached) the Debian test guest and returns the path of its qcow2
/// image. Runs `guest/debian/build.sh` at most once per process; the script takes a file
/// lock, so test processes starting together do not build it twice. A cold build takes
/// a few minutes and needs root and the machine's apt mirror. Never write to this image:
/// use [`debian_disk_copy`].
pub fn debian_image() -> anyhow::Result<PathBuf> {
    debian_image_with(DebianNetwork::Networkd)
}

/// [`debian_image`] for the variant with `network` as its network stack.
pub fn debian_image_with(network: DebianNetwork) -> anyhow::Result<PathBuf> {
    // The error is kept as text so that every caller sees the same failure.
    static NETWORKD: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static IFUPDOWN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let image = match network {
        DebianNetwork::Networkd => &NETWORKD,
        DebianNetwork::Ifupdown => &IFUPDOWN,
    };
    image
        .get_or_init(|| run_build_script(network).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn run_build_script(network: DebianNetwork) -> anyhow::Result<PathBuf> {
    let script = build_script();
    tracing::info!(
        script = %script.display(),
        network = network.name(),
        "building or finding the Debian test guest"
    );
    // Always named, so that a value in the test's environment cannot swap the image.
    let output = Command::new("bash")
        .arg(&script)
        .env("LIFEBOAT_DEBIAN_NETWORK", network.name())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "{} failed ({}); its stderr:\n{stderr}",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or("").trim();
    let image = PathBuf::from(last);
    if !image.is_absolute() || !image.is_file() {
        bail!(
            "{} printed {last:?} as its last line, not the path of an image; its stderr:\n{stderr}",
            script.display()
        );
    }
    Ok(image)
}

/// Copies the Debian image to `dir/name` (a standalone qcow2 file, no backing file, so
/// it can be moved like a customer's disk) and returns its path.
pub fn debian_disk_copy(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    debian_disk_copy_with(DebianNetwork::Networkd, dir, name)
}

/// [`debian_disk_copy`] of the variant with `network` as its network stack.
pub fn debian_disk_copy_with(
    network: DebianNetwork,
    dir: &Path,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let image = debian_image_with(network)?;
    let disk = dir.join(name);
    std::fs::copy(&image, &disk).with_context(|| {
        format!(
            "copy Debian test guest {} to {}",
            image.display(),
            disk.display()
        )
    })?;
    Ok(disk)
}
