//! The domain a libvirt recovery host defines for a recovered VM, written from the
//! point's neutral spec (whatever driver protected it) with the firmware, machine type and
//! domain type of the stored XML when there is one. Disks are the recovery's local qcow2
//! overlays (their backing, the point served over NBD, is in their headers); NICs are on
//! the mapped bridge or libvirt network, or, for a test copy, on a bridge of its own with
//! no uplink. Every value is escaped: the spec comes from a vault.
//!
//! A test copy's isolated NIC with ports to expose (`failover --test --expose`) is QEMU's
//! user network with `restrict=on` instead, as on a QEMU-driver host: the guest reaches
//! nothing, and each exposed port is a host port QEMU forwards in. libvirt 9 has no port
//! forwards on a user network without passt, so that NIC is passed to QEMU as arguments
//! (`<qemu:commandline>`; libvirt marks such a domain "tainted: custom-argv").

use std::path::Path;

use crate::libvirt::domain_xml::{DomainDescription, Firmware};
use crate::libvirt::fence::QEMU_NS;
use crate::spec::{NetworkKind, VmSpec};

/// Escapes text for an XML attribute or element.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// What the host adds to the spec.
pub struct Placement<'a> {
    /// `kvm` or `qemu` (TCG).
    pub domain_type: &'a str,
    /// The bridge isolated NICs (test copies) go on.
    pub isolated_bridge: Option<&'a str>,
    /// Where QEMU binds the serial console's socket.
    pub serial_socket: &'a Path,
    /// Where libvirt's virtlogd keeps everything the console printed, whether or not a
    /// client was connected (the proof of what a recovered copy did at boot).
    pub console_log: &'a Path,
}

/// The domain XML of `spec` on this host; `stored` is the source domain's description
/// (from the point's XML) when it was a libvirt domain.
pub fn domain_xml(
    spec: &VmSpec,
    stored: Option<&DomainDescription>,
    at: &Placement,
) -> Result<String, String> {
    let machine = stored.and_then(|d| d.machine.as_deref()).unwrap_or("pc");
    let firmware = match stored.map(|d| d.firmware) {
        Some(Firmware::Uefi) => " firmware='efi'",
        _ => "",
    };
    let mut x = format!(
        "<domain type='{}'><name>{}</name>",
        esc(at.domain_type),
        esc(spec.name.as_str())
    );
    if let Some(u) = spec.uuid {
        x += &format!("<uuid>{u}</uuid>");
    }
    x += &format!(
        "<memory unit='MiB'>{}</memory><vcpu>{}</vcpu>\
         <os{firmware}><type arch='x86_64' machine='{}'>hvm</type></os>\
         <features><acpi/><apic/></features><devices>",
        spec.memory_mib,
        spec.vcpus,
        esc(machine)
    );
    for (i, d) in spec.disks_in_boot_order().into_iter().enumerate() {
        x += &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{}'/>\
             <source file='{}'/><target dev='{}' bus='virtio'/><boot order='{}'/></disk>",
            d.format.as_str(),
            esc(&d.path.to_string_lossy()),
            esc(d.name.as_str()),
            i + 1
        );
    }
    if let Some(seed) = &spec.seed {
        x += &seed_cdrom(seed);
    }
    let mut qemu_args: Vec<String> = Vec::new();
    for (i, nic) in spec.nics.iter().enumerate() {
        if nic.network == "isolated" && !nic.host_forwards.is_empty() {
            qemu_args.extend(exposed_nic(i, nic, machine)?);
            continue;
        }
        let (kind, source) = match NetworkKind::parse(&nic.network) {
            Some(NetworkKind::Bridge(b)) => ("bridge", format!("bridge='{}'", esc(b))),
            Some(NetworkKind::LibvirtNetwork(n)) => ("network", format!("network='{}'", esc(n))),
            Some(NetworkKind::Isolated) => match at.isolated_bridge {
                Some(b) => ("bridge", format!("bridge='{}'", esc(b))),
                None => return Err("an isolated NIC needs the copy's own bridge".into()),
            },
            Some(NetworkKind::User) | None => {
                return Err(format!(
                    "NIC {}: network {:?} cannot run on a libvirt host; map it to a bridge \
                     (--network-map {}=bridge:NAME)",
                    nic.mac, nic.network, nic.network
                ))
            }
        };
        x += &format!(
            "<interface type='{kind}'><mac address='{}'/><source {source}/>\
             <model type='virtio'/></interface>",
            esc(&nic.mac)
        );
    }
    x += &format!(
        "<serial type='unix'><source mode='bind' path='{}'/><log file='{}' append='on'/>\
         <target port='0'/></serial>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         </devices>",
        esc(&at.serial_socket.to_string_lossy()),
        esc(&at.console_log.to_string_lossy())
    );
    if !qemu_args.is_empty() {
        x += &format!("<qemu:commandline xmlns:qemu='{QEMU_NS}'>");
        for arg in &qemu_args {
            x += &format!("<qemu:arg value='{}'/>", esc(arg));
        }
        x += "</qemu:commandline>";
    }
    x += "</domain>";
    Ok(x)
}

/// QEMU's arguments for NIC `i` on a restricted user network with `nic`'s host
/// forwards (every address of the host when public, else loopback), on machine type
/// `machine`.
fn exposed_nic(i: usize, nic: &crate::spec::NicSpec, machine: &str) -> Result<[String; 4], String> {
    let mut netdev = format!("user,id=lbexposed{i},restrict=on");
    for f in &nic.host_forwards {
        netdev += &format!(",{}", f.hostfwd());
    }
    // Without an address QEMU put this device in slot 2 before libvirt's own devices
    // (given as JSON, created later) took the slots libvirt fixed from 2 up, and the
    // domain did not start. Ours take a slot from the top that libvirt leaves free
    // (i440FX: 0x1f; Q35's root bus: 0x1c, below the ICH9 functions and libvirt's
    // 0x1d/0x1e). A guest numbers NICs by slot, so an exposed NIC comes after the others.
    let (bus, top) = if machine.contains("q35") {
        ("pcie.0", 0x1c)
    } else {
        ("pci.0", 0x1f)
    };
    let slot = top - i;
    if slot < 0x10 {
        return Err("too many NICs with exposed ports".into());
    }
    Ok([
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!(
            "virtio-net-pci,netdev=lbexposed{i},mac={},bus={bus},addr={slot:#x}",
            nic.mac
        ),
    ])
}

/// The target of the seed's CD-ROM: one slot, so attaching a new seed replaces the old.
const SEED_TARGET: &str = "sdz";

/// The cloud-init seed as a CD-ROM: libvirt's inventory lists `device='disk'` only, so the
/// seed is never taken for one of the VM's disks (nor tracked, nor replicated).
fn seed_cdrom(seed: &Path) -> String {
    format!(
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='{SEED_TARGET}' bus='sata'/><readonly/></disk>",
        esc(&seed.to_string_lossy())
    )
}

/// A domain's XML with its seed CD-ROM replaced by one for `seed` (or removed): only the
/// `<disk>` in the seed's slot changes, nothing an administrator set.
pub fn with_seed(xml: &str, seed: Option<&Path>) -> Result<String, String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| format!("the domain XML does not parse: {e}"))?;
    // The domain's own <devices>, not an element of that name in <metadata>.
    let devices = doc
        .root_element()
        .children()
        .find(|n| {
            n.is_element() && n.tag_name().name() == "devices" && n.tag_name().namespace().is_none()
        })
        .ok_or("the domain XML has no <devices>")?;
    let old = devices.children().find(|d| {
        d.has_tag_name("disk")
            && d.attribute("device") == Some("cdrom")
            && d.children()
                .any(|t| t.has_tag_name("target") && t.attribute("dev") == Some(SEED_TARGET))
    });
    let mut out = xml.to_string();
    // Remove first, then insert before </devices> (which moved by what was removed).
    if let Some(old) = old {
        out.replace_range(old.range(), "");
    }
    if let Some(seed) = seed {
        // Re-read: the removal above moved what follows it.
        let doc = roxmltree::Document::parse(&out)
            .map_err(|e| format!("the domain XML does not parse: {e}"))?;
        let devices = doc
            .root_element()
            .children()
            .find(|n| {
                n.is_element()
                    && n.tag_name().name() == "devices"
                    && n.tag_name().namespace().is_none()
            })
            .ok_or("the domain XML has no <devices>")?;
        let end = devices.range().end - "</devices>".len();
        if !out[..devices.range().end].ends_with("</devices>") {
            return Err("the domain's <devices> has no closing tag to insert before".into());
        }
        let text = out.clone();
        out = format!("{}{}{}", &text[..end], seed_cdrom(seed), &text[end..]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::domain_xml::parse;

    fn spec(nets: &[&str]) -> VmSpec {
        let mut t = String::from(
            "name = \"web1\"\nmemory_mib = 256\nvcpus = 2\nboot_order = [\"vdb\"]\n\
             [[disks]]\nname = \"vda\"\npath = \"/r/web1/vda.qcow2\"\nformat = \"qcow2\"\n\
             [[disks]]\nname = \"vdb\"\npath = \"/r/web1/it's.qcow2\"\nformat = \"qcow2\"\n",
        );
        for (i, n) in nets.iter().enumerate() {
            t += &format!("[[nics]]\nmac = \"52:54:00:00:00:0{i}\"\nnetwork = \"{n}\"\n");
        }
        VmSpec::parse(&t, Path::new("t")).unwrap()
    }

    #[test]
    fn a_seed_takes_its_one_slot_and_leaves_the_rest() {
        let xml = "<domain type='kvm'><name>web1</name><memory unit='KiB'>262144</memory><devices>\
            <disk type='file' device='disk'><source file='/a'/><target dev='vda'/></disk>\
            <disk type='file' device='cdrom'><target dev='sda'/><readonly/></disk>\
            </devices></domain>";
        let one = with_seed(xml, Some(Path::new("/s/one.img"))).unwrap();
        let two = with_seed(&one, Some(Path::new("/s/two.img"))).unwrap();
        let d = parse(&two).unwrap();
        assert_eq!(d.disks.len(), 1, "the seed is no disk of the VM: {two}");
        assert!(
            two.contains("/s/two.img") && !two.contains("/s/one.img"),
            "{two}"
        );
        assert!(
            two.contains("<target dev='sda'/>"),
            "the other CD-ROM stays: {two}"
        );
        assert_eq!(with_seed(&two, None).unwrap(), xml);
        // Only the domain's own <devices>: one of that name in <metadata> is not it.
        let meta = xml.replace(
            "<devices>",
            "<metadata><x:devices xmlns:x='urn:x'/></metadata><devices>",
        );
        let again = with_seed(
            &with_seed(&meta, Some(Path::new("/s/one.img"))).unwrap(),
            Some(Path::new("/s/two.img")),
        )
        .unwrap();
        assert_eq!(again.matches("device='cdrom'").count(), 2, "{again}");
        assert!(
            again.contains("<x:devices xmlns:x='urn:x'/></metadata>"),
            "{again}"
        );
    }

    #[test]
    fn the_domain_is_what_the_spec_and_stored_xml_say() {
        let stored = parse(
            "<domain type='kvm'><name>web1</name><memory>1</memory>\
             <os firmware='efi'><type machine='pc-q35-7.2'>hvm</type></os></domain>",
        )
        .unwrap();
        let at = Placement {
            domain_type: "qemu",
            isolated_bridge: Some("lbi1"),
            serial_socket: Path::new("/r/web1/serial.sock"),
            console_log: Path::new("/r/web1/console.log"),
        };
        let xml = domain_xml(
            &spec(&["bridge:br-dr", "network:default", "isolated"]),
            Some(&stored),
            &at,
        )
        .unwrap();
        let d = parse(&xml).unwrap();
        assert_eq!((d.name.as_str(), d.memory_mib, d.vcpus), ("web1", 256, 2));
        assert_eq!(d.firmware, Firmware::Uefi);
        assert_eq!(d.machine.as_deref(), Some("pc-q35-7.2"));
        // Boot order puts vdb first; the apostrophe in a path stays a path.
        assert_eq!(d.disks[0].target, "vdb");
        assert!(xml.contains("it&apos;s.qcow2"), "{xml}");
        // The console is kept in a log whether or not anyone is connected.
        assert!(
            xml.contains("<log file='/r/web1/console.log' append='on'/>"),
            "{xml}"
        );
        use crate::libvirt::domain_xml::NicSource;
        let sources: Vec<&NicSource> = d.nics.iter().map(|n| &n.source).collect();
        assert_eq!(
            sources,
            [
                &NicSource::Bridge("br-dr".into()),
                &NicSource::Network("default".into()),
                &NicSource::Bridge("lbi1".into())
            ]
        );
        let bios = domain_xml(&spec(&[]), None, &at).unwrap();
        let d = parse(&bios).unwrap();
        assert_eq!(
            (d.firmware, d.machine.as_deref()),
            (Firmware::Bios, Some("pc"))
        );
    }

    #[test]
    fn an_exposed_isolated_nic_is_a_restricted_user_network_with_its_forwards() {
        let mut spec = spec(&["isolated", "isolated"]);
        spec.nics[0].host_forwards = vec![crate::spec::HostForward {
            host_port: 40080,
            guest_port: 80,
            public: true,
            guest_addr: None,
        }];
        let at = Placement {
            domain_type: "qemu",
            isolated_bridge: Some("lbi1"),
            serial_socket: Path::new("/s"),
            console_log: Path::new("/l"),
        };
        let xml = domain_xml(&spec, None, &at).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let args: Vec<&str> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "arg" && n.tag_name().namespace() == Some(QEMU_NS))
            .filter_map(|n| n.attribute("value"))
            .collect();
        assert_eq!(
            args,
            [
                "-netdev",
                "user,id=lbexposed0,restrict=on,hostfwd=tcp::40080-:80",
                "-device",
                "virtio-net-pci,netdev=lbexposed0,mac=52:54:00:00:00:00,bus=pci.0,addr=0x1f"
            ]
        );
        // The other isolated NIC stays on the copy's own bridge.
        let d = parse(&xml).unwrap();
        assert_eq!(d.nics.len(), 1);
        assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:00:00:01"));
        assert!(
            !crate::libvirt::fence::is_fenced(&xml),
            "exposed is not fenced"
        );
    }

    #[test]
    fn a_user_network_is_refused_with_what_to_map() {
        let at = Placement {
            domain_type: "qemu",
            isolated_bridge: None,
            serial_socket: Path::new("/s"),
            console_log: Path::new("/l"),
        };
        let e = domain_xml(&spec(&["user"]), None, &at).unwrap_err();
        assert!(e.contains("--network-map user=bridge:NAME"), "{e}");
        let e = domain_xml(&spec(&["isolated"]), None, &at).unwrap_err();
        assert!(e.contains("own bridge"), "{e}");
    }
}
