//! What Lifeboat reads of a libvirt domain's XML (libvirt's "Domain XML format"): name,
//! UUID, memory, vCPUs, firmware, machine type, disks and NICs. Parsed with a real XML
//! parser, never by matching text; whatever is not understood is reported, not guessed.
//! The XML comes from libvirtd, which anyone with access to it can fill: it is bounded
//! and checked like any other input.

use std::path::PathBuf;

use serde::Serialize;

/// A domain's XML larger than this is refused (libvirt's own are a few KiB; a domain
/// with hundreds of devices stays well under).
pub const MAX_DOMAIN_XML: usize = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainXmlError {
    #[error("domain XML of {len} bytes is over the {MAX_DOMAIN_XML}-byte limit")]
    TooLarge { len: usize },
    #[error("domain XML does not parse: {0}")]
    Parse(String),
    #[error("domain XML: {0}")]
    Invalid(String),
}

/// How the domain boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// What backs a disk on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DiskSource {
    File {
        path: PathBuf,
    },
    Block {
        device: PathBuf,
    },
    /// A network disk, volume or anything else libvirt can name: listed, not protected.
    Other {
        kind: String,
    },
}

/// What kind of thing a [`DiskSource`] is, without its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSourceKind {
    File,
    Block,
    Other,
}

impl DiskSource {
    pub fn kind(&self) -> DiskSourceKind {
        match self {
            DiskSource::File { .. } => DiskSourceKind::File,
            DiskSource::Block { .. } => DiskSourceKind::Block,
            DiskSource::Other { .. } => DiskSourceKind::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainDisk {
    /// The guest's name for it (`<target dev=…>`: vda, sdb).
    pub target: String,
    /// `qcow2`, `raw`, … (`<driver type=…>`); `None` when the XML does not say.
    pub format: Option<String>,
    pub source: DiskSource,
    pub read_only: bool,
}

/// Where a NIC is plugged on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum NicSource {
    Network(String),
    Bridge(String),
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainNic {
    pub mac: Option<String>,
    pub source: NicSource,
    /// `virtio`, `e1000`, …
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainDescription {
    pub name: String,
    /// `<domain type=…>`: `kvm`, `qemu` (TCG), …
    pub domain_type: Option<String>,
    pub uuid: Option<uuid::Uuid>,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub firmware: Firmware,
    /// `<os><type machine=…>`, e.g. `pc-q35-7.2`.
    pub machine: Option<String>,
    /// Disks (`device='disk'`) only; CD-ROMs and floppies are not protected.
    pub disks: Vec<DomainDisk>,
    pub nics: Vec<DomainNic>,
}

fn invalid(what: impl Into<String>) -> DomainXmlError {
    DomainXmlError::Invalid(what.into())
}

/// Parses a domain's XML as `virsh dumpxml` (or `virDomainGetXMLDesc`) gives it.
pub fn parse(xml: &str) -> Result<DomainDescription, DomainXmlError> {
    if xml.len() > MAX_DOMAIN_XML {
        return Err(DomainXmlError::TooLarge { len: xml.len() });
    }
    // roxmltree bounds entity expansion, so a billion-laughs document does not blow up.
    let doc = roxmltree::Document::parse(xml).map_err(|e| DomainXmlError::Parse(e.to_string()))?;
    let domain = doc.root_element();
    if domain.tag_name().name() != "domain" {
        return Err(invalid(format!(
            "the root element is <{}>, not <domain>",
            domain.tag_name().name()
        )));
    }
    let child = |name: &str| domain.children().find(|n| n.has_tag_name(name));
    let text = |name: &str| child(name).and_then(|n| n.text()).map(str::trim);
    let name = text("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("no <name>"))?
        .to_string();
    let uuid = match text("uuid") {
        Some(u) => Some(
            u.parse::<uuid::Uuid>()
                .map_err(|e| invalid(format!("<uuid> {u:?}: {e}")))?,
        ),
        None => None,
    };
    let memory_mib = match child("memory") {
        Some(m) => memory_mib(m.text().unwrap_or("").trim(), m.attribute("unit"))?,
        None => return Err(invalid("no <memory>")),
    };
    let vcpus = match text("vcpu") {
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid(format!("<vcpu> {v:?} is not a count")))?,
        None => 1,
    };
    let os = child("os");
    let machine = os
        .and_then(|os| os.children().find(|n| n.has_tag_name("type")))
        .and_then(|t| t.attribute("machine"))
        .map(str::to_string);
    let firmware = match os {
        Some(os)
            if os.attribute("firmware") == Some("efi")
                || os
                    .children()
                    .any(|n| n.has_tag_name("loader") && n.attribute("type") == Some("pflash")) =>
        {
            Firmware::Uefi
        }
        _ => Firmware::Bios,
    };
    let mut disks = Vec::new();
    let mut nics = Vec::new();
    if let Some(devices) = child("devices") {
        for d in devices.children().filter(|n| n.has_tag_name("disk")) {
            if d.attribute("device").unwrap_or("disk") != "disk" {
                continue;
            }
            disks.push(disk(d)?);
        }
        for n in devices.children().filter(|n| n.has_tag_name("interface")) {
            nics.push(nic(n));
        }
    }
    Ok(DomainDescription {
        name,
        domain_type: domain.attribute("type").map(str::to_string),
        uuid,
        memory_mib,
        vcpus,
        firmware,
        machine,
        disks,
        nics,
    })
}

/// Each disk's target in a domain's live XML and whether it still reads from a backing
/// image (`<backingStore>` with a `<source>`): a recovered disk not yet hydrated.
pub fn disk_backings(xml: &str) -> Result<Vec<(String, bool)>, DomainXmlError> {
    if xml.len() > MAX_DOMAIN_XML {
        return Err(DomainXmlError::TooLarge { len: xml.len() });
    }
    let doc = roxmltree::Document::parse(xml).map_err(|e| DomainXmlError::Parse(e.to_string()))?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("disk") && n.attribute("device").unwrap_or("disk") == "disk")
        .filter(|n| n.parent().is_some_and(|p| p.has_tag_name("devices")))
        .filter_map(|d| {
            let target = attr_of(d, "target", "dev")?;
            let backed = d
                .children()
                .find(|n| n.has_tag_name("backingStore"))
                .is_some_and(|b| b.children().any(|n| n.has_tag_name("source")));
            Some((target, backed))
        })
        .collect())
}

/// `<memory unit=…>` in MiB; libvirt's default unit is KiB.
fn memory_mib(value: &str, unit: Option<&str>) -> Result<u64, DomainXmlError> {
    let n: u64 = value
        .parse()
        .map_err(|_| invalid(format!("<memory> {value:?} is not a number")))?;
    let bytes_per = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1u64,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => return Err(invalid(format!("<memory> unit {other:?}"))),
    };
    n.checked_mul(bytes_per)
        .map(|b| b >> 20)
        .ok_or_else(|| invalid(format!("<memory> {value} {unit:?} overflows")))
}

fn attr_of(node: roxmltree::Node, child: &str, attr: &str) -> Option<String> {
    node.children()
        .find(|n| n.has_tag_name(child))
        .and_then(|n| n.attribute(attr))
        .map(str::to_string)
}

fn disk(d: roxmltree::Node) -> Result<DomainDisk, DomainXmlError> {
    let target =
        attr_of(d, "target", "dev").ok_or_else(|| invalid("a <disk> without <target dev>"))?;
    let kind = d.attribute("type").unwrap_or("file");
    let source = match kind {
        "file" => match attr_of(d, "source", "file") {
            Some(p) => DiskSource::File { path: p.into() },
            // A file disk with no source is an empty drive.
            None => DiskSource::Other {
                kind: "empty".into(),
            },
        },
        "block" => match attr_of(d, "source", "dev") {
            Some(p) => DiskSource::Block { device: p.into() },
            None => DiskSource::Other {
                kind: "empty".into(),
            },
        },
        other => DiskSource::Other { kind: other.into() },
    };
    Ok(DomainDisk {
        target,
        format: attr_of(d, "driver", "type"),
        source,
        read_only: d.children().any(|n| n.has_tag_name("readonly")),
    })
}

fn nic(n: roxmltree::Node) -> DomainNic {
    let kind = n.attribute("type").unwrap_or("");
    let source = match kind {
        "network" => attr_of(n, "source", "network").map(NicSource::Network),
        "bridge" => attr_of(n, "source", "bridge").map(NicSource::Bridge),
        _ => None,
    }
    .unwrap_or_else(|| NicSource::Other(kind.to_string()));
    DomainNic {
        mac: attr_of(n, "mac", "address"),
        source,
        model: attr_of(n, "model", "type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"<domain type='kvm' id='3'>
  <name>web1</name>
  <uuid>5b6a0a3e-6a43-4d2a-9c3f-2b8f5d6c7e01</uuid>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web1-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:ab:cd:ef'/>
      <source network='default'/>
      <model type='e1000'/>
    </interface>
  </devices>
</domain>"#;

    #[test]
    fn a_real_domain_is_read_whole() {
        let d = parse(WEB).unwrap();
        assert_eq!(d.name, "web1");
        assert_eq!(
            d.uuid.unwrap().to_string(),
            "5b6a0a3e-6a43-4d2a-9c3f-2b8f5d6c7e01"
        );
        assert_eq!((d.memory_mib, d.vcpus), (2048, 2));
        assert_eq!(d.firmware, Firmware::Uefi);
        assert_eq!(d.machine.as_deref(), Some("pc-q35-7.2"));
        assert_eq!(d.disks.len(), 2, "the CD-ROM is not a disk to protect");
        assert_eq!(d.disks[0].target, "vda");
        assert_eq!(d.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(
            d.disks[0].source,
            DiskSource::File {
                path: "/var/lib/libvirt/images/web1.qcow2".into()
            }
        );
        assert_eq!(
            d.disks[1].source,
            DiskSource::Block {
                device: "/dev/vg0/web1-data".into()
            }
        );
        assert_eq!(d.nics.len(), 2);
        assert_eq!(d.nics[0].source, NicSource::Bridge("br0".into()));
        assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(d.nics[1].source, NicSource::Network("default".into()));
        assert_eq!(d.nics[1].model.as_deref(), Some("e1000"));
    }

    #[test]
    fn backings_say_which_disks_still_read_the_vault() {
        let xml = "<domain><devices>\
            <disk type='file' device='disk'><source file='/r/vda.qcow2'/>\
              <backingStore type='network' index='1'><format type='raw'/>\
              <source protocol='nbd' name='vda'/></backingStore><target dev='vda'/></disk>\
            <disk type='file' device='disk'><source file='/r/vdb.qcow2'/><backingStore/>\
              <target dev='vdb'/></disk>\
            <disk type='file' device='cdrom'><target dev='sda'/></disk></devices></domain>";
        assert_eq!(
            disk_backings(xml).unwrap(),
            vec![("vda".to_string(), true), ("vdb".to_string(), false)]
        );
    }

    #[test]
    fn bios_and_defaults() {
        let d = parse(
            "<domain type='qemu'><name>a</name><memory>1048576</memory>\
             <os><type>hvm</type><loader type='rom'>/x</loader></os></domain>",
        )
        .unwrap();
        assert_eq!(d.firmware, Firmware::Bios);
        assert_eq!((d.memory_mib, d.vcpus, d.uuid), (1024, 1, None));
        assert!(d.disks.is_empty() && d.nics.is_empty());
        let g = parse("<domain><name>a</name><memory unit='GiB'>3</memory></domain>").unwrap();
        assert_eq!(g.memory_mib, 3072);
    }

    #[test]
    fn bad_xml_is_refused_with_the_reason() {
        for (xml, want) in [
            ("<domain><name>a</name>", "does not parse"),
            ("<vm><name>a</name><memory>1</memory></vm>", "not <domain>"),
            ("<domain><memory>1</memory></domain>", "no <name>"),
            ("<domain><name>a</name></domain>", "no <memory>"),
            (
                "<domain><name>a</name><memory unit='parsec'>1</memory></domain>",
                "unit",
            ),
            (
                "<domain><name>a</name><memory unit='TiB'>99999999999</memory></domain>",
                "overflows",
            ),
            (
                "<domain><name>a</name><uuid>nope</uuid><memory>1</memory></domain>",
                "<uuid>",
            ),
            (
                "<domain><name>a</name><memory>1</memory><vcpu>0</vcpu></domain>",
                "<vcpu>",
            ),
            (
                "<domain><name>a</name><memory>1</memory><devices><disk type='file'/></devices></domain>",
                "<target dev>",
            ),
        ] {
            let e = parse(xml).unwrap_err().to_string();
            assert!(e.contains(want), "{xml}: {e}");
        }
        // A billion laughs (10^8 bytes if expanded) is refused or stays small: the
        // parser bounds what entities may expand to.
        let mut dtd = String::from("<!ENTITY l0 'aaaaaaaaaa'>");
        for i in 1..8 {
            let p = i - 1;
            dtd += &format!("<!ENTITY l{i} '{}'>", format!("&l{p};").repeat(10));
        }
        let laughs = format!(
            "<?xml version='1.0'?><!DOCTYPE domain [{dtd}]><domain><name>&l7;</name>\
             <memory>1</memory></domain>"
        );
        if let Ok(d) = parse(&laughs) {
            assert!(d.name.len() < 1 << 20, "expanded to {} bytes", d.name.len());
        }
        let big = format!(
            "<domain><name>a</name><memory>1</memory>{}</domain>",
            " ".repeat(MAX_DOMAIN_XML)
        );
        assert!(matches!(parse(&big), Err(DomainXmlError::TooLarge { .. })));
    }
}
