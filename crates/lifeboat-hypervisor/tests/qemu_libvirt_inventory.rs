//! The libvirt driver's inventory against a real libvirtd: domains an administrator
//! defined with `virsh define` (not Lifeboat), stopped or running, are listed with what
//! their XML says — firmware, machine, qcow2 and raw disks, bridged and network NICs.

use lifeboat_hypervisor::libvirt::{self, DiskSourceKind};
use lifeboat_hypervisor::VmState;
use lifeboat_testkit::libvirtd::{domain_dir, ensure_libvirtd, virsh, DefinedDomain, LIBVIRT_URI};

fn domain_xml(name: &str, qcow2: &str, raw: &str, nics: &str) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{qcow2}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{raw}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    {nics}
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_defined_by_an_administrator_are_listed_as_their_xml_says() {
    ensure_libvirtd().unwrap();
    let tmp = domain_dir().unwrap();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (stopped, running) = (format!("lbt-web-{suffix}"), format!("lbt-db-{suffix}"));
    let mut domains = Vec::new();
    for (name, nics) in [
        (
            &stopped,
            "<interface type='bridge'><mac address='52:54:00:aa:00:01'/>\
             <source bridge='br-lbt'/><model type='virtio'/></interface>\
             <interface type='network'><mac address='52:54:00:aa:00:02'/>\
             <source network='default'/><model type='e1000'/></interface>",
        ),
        (&running, ""),
    ] {
        let qcow2 = tmp.path().join(format!("{name}-vda.qcow2"));
        let raw = tmp.path().join(format!("{name}-vdb.raw"));
        lifeboat_testkit::libvirtd::qcow2(&qcow2, 16 << 20).unwrap();
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let xml = tmp.path().join(format!("{name}.xml"));
        std::fs::write(
            &xml,
            domain_xml(name, &qcow2.to_string_lossy(), &raw.to_string_lossy(), nics),
        )
        .unwrap();
        domains.push(DefinedDomain::define(&xml, name).unwrap());
    }
    // Running: the guest has nothing to boot, which is all the inventory needs.
    virsh(&["start", &running]).unwrap();

    let listed = libvirt::list(LIBVIRT_URI).await.unwrap();
    let find = |n: &str| {
        listed
            .iter()
            .find(|d| d.description.name == n)
            .unwrap_or_else(|| panic!("{n} is not listed: {listed:#?}"))
    };
    let web = find(&stopped);
    assert_eq!(web.state, VmState::Stopped);
    assert_eq!((web.description.memory_mib, web.description.vcpus), (64, 1));
    assert_eq!(web.description.firmware, libvirt::Firmware::Bios);
    // libvirt expands `pc` to the versioned machine type it chose.
    assert!(
        web.description
            .machine
            .as_deref()
            .is_some_and(|m| m.starts_with("pc")),
        "{:?}",
        web.description.machine
    );
    assert!(
        web.description.uuid.is_some(),
        "libvirt gives every domain a UUID"
    );
    let formats: Vec<_> = web
        .description
        .disks
        .iter()
        .map(|d| (d.target.as_str(), d.format.as_deref(), d.source.kind()))
        .collect();
    assert_eq!(
        formats,
        vec![
            ("vda", Some("qcow2"), DiskSourceKind::File),
            ("vdb", Some("raw"), DiskSourceKind::File)
        ]
    );
    let nics: Vec<_> = web
        .description
        .nics
        .iter()
        .map(|n| {
            (
                n.mac.as_deref(),
                format!("{:?}", n.source),
                n.model.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        nics,
        vec![
            (
                Some("52:54:00:aa:00:01"),
                "Bridge(\"br-lbt\")".to_string(),
                Some("virtio")
            ),
            (
                Some("52:54:00:aa:00:02"),
                "Network(\"default\")".to_string(),
                Some("e1000")
            ),
        ]
    );
    assert!(
        web.xml.contains(&stopped),
        "the XML is kept to define it again"
    );
    let db = find(&running);
    assert_eq!(db.state, VmState::Running);
    assert!(db.description.nics.is_empty());

    // A libvirt that does not answer is a clear error, not an empty inventory.
    let e = libvirt::list("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot reach libvirt") && e.contains("libvirtd"),
        "{e}"
    );
    drop(domains);
    let left = virsh(&["list", "--all", "--name"]).unwrap();
    assert!(
        !left.contains(&stopped) && !left.contains(&running),
        "{left}"
    );
}
