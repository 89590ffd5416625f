//! libvirt's system daemon for tests: started the way FACTS.md found works on a machine
//! without systemd (`virtlogd -d; libvirtd -d`) when its socket does not answer, and
//! domains defined with `virsh` as an administrator would, removed again on drop.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const LIBVIRT_URI: &str = "qemu:///system";
const SOCKET: &str = "/var/run/libvirt/libvirt-sock";

fn answers() -> bool {
    std::os::unix::net::UnixStream::connect(SOCKET).is_ok()
}

/// Makes sure libvirtd answers on its system socket, starting it if needed.
pub fn ensure_libvirtd() -> Result<()> {
    if answers() {
        return Ok(());
    }
    // Tests in other processes may be starting them at the same moment: a daemon that
    // refuses to start because another holds its pidfile is not an error; only a socket
    // that never answers is.
    let mut refusals = Vec::new();
    for daemon in ["virtlogd", "libvirtd"] {
        let out = Command::new(daemon)
            .arg("-d")
            .output()
            .with_context(|| format!("starting {daemon} (install libvirt-daemon-system)"))?;
        if !out.status.success() {
            refusals.push(format!(
                "{daemon} -d: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers() {
        if Instant::now() > deadline {
            bail!(
                "libvirtd's {SOCKET} does not answer after 30 s; {}",
                refusals.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `virsh -c qemu:///system ARGS`; its stdout, or an error with its stderr.
pub fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-c", LIBVIRT_URI])
        .args(args)
        .output()
        .context("running virsh (install libvirt-clients)")?;
    if !out.status.success() {
        bail!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A folder for test domains' disks that libvirt's QEMU, which runs as its own user, can
/// reach: under /var/tmp (not a private /tmp), mode 0755.
pub fn domain_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("lb-libvirt")
        .tempdir_in("/var/tmp")
        .context("making a folder under /var/tmp")?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok(dir)
}

/// Creates an empty qcow2 image of `size` bytes at `path`.
pub fn qcow2(path: &Path, size: u64) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string())
        .output()
        .context("running qemu-img")?;
    if !out.status.success() {
        bail!(
            "qemu-img create {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A domain defined with `virsh define` from an XML file; destroyed (if it runs) and
/// undefined on drop.
pub struct DefinedDomain {
    pub name: String,
}

impl DefinedDomain {
    /// A small domain `name` with one qcow2 disk `disk` (vda) and nothing to boot: what
    /// the driver tests and the benchmark cut, defined as an administrator would (its XML
    /// written next to the disk).
    pub fn tiny(name: &str, disk: &Path) -> Result<DefinedDomain> {
        let xml = disk.with_file_name(format!("{name}.xml"));
        std::fs::write(&xml, tiny_domain_xml(name, disk))
            .with_context(|| format!("writing {}", xml.display()))?;
        DefinedDomain::define(&xml, name)
    }

    pub fn define(xml_file: &Path, name: &str) -> Result<DefinedDomain> {
        ensure_libvirtd()?;
        virsh(&["define", &xml_file.to_string_lossy()])?;
        Ok(DefinedDomain {
            name: name.to_string(),
        })
    }
}

impl Drop for DefinedDomain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name, "--nvram", "--checkpoints-metadata"])
            .or_else(|_| virsh(&["undefine", &self.name]));
    }
}

/// Writes `pattern` over `len` bytes at `offset` of the running domain's vda through its
/// QEMU (HMP `qemu-io`): what a guest's write does to the disk and its bitmaps.
pub fn write_vda(domain: &str, pattern: u8, offset: u64, len: u64) -> Result<()> {
    let cmd = format!(
        "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P {pattern} {offset} {len}\""
    );
    let out = virsh(&["qemu-monitor-command", "--hmp", domain, &cmd])?;
    if !(out.trim().is_empty() || out.contains("wrote")) {
        bail!("qemu-io on {domain}: {out}");
    }
    Ok(())
}

/// The XML of a small domain with one qcow2 disk `disk` (vda) and nothing to boot.
fn tiny_domain_xml(name: &str, disk: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <graphics type='vnc' autoport='yes' listen='127.0.0.1'/></devices></domain>",
        disk.display()
    )
}
