//! Fencing a libvirt domain against a real libvirtd: the running domain stops, and
//! nobody can start it again — not `virsh start` (what virt-manager and Cockpit call
//! too), not autostart — until Lifeboat unfences it; the inventory says it is fenced and
//! why; an administrator's own QEMU arguments survive the fence and its removal.

use lifeboat_hypervisor::libvirt::fence::FENCE_ARG;
use lifeboat_hypervisor::libvirt::{LibvirtConfig, LibvirtDriver};
use lifeboat_hypervisor::{Hypervisor, VmName, VmState};
use lifeboat_testkit::libvirtd::{domain_dir, ensure_libvirtd, virsh, DefinedDomain};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_domain_cannot_be_started_by_anyone_until_unfenced() {
    ensure_libvirtd().unwrap();
    let tmp = domain_dir().unwrap();
    let disk = tmp.path().join("vda.qcow2");
    lifeboat_testkit::libvirtd::qcow2(&disk, 16 << 20).unwrap();
    let name = format!("lbt-fence-{:06x}", std::process::id() & 0xff_ffff);
    let xml = tmp.path().join("dom.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\
             <name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
             <graphics type='vnc' autoport='yes' listen='127.0.0.1'/></devices>\
             <qemu:commandline><qemu:arg value='-no-shutdown'/></qemu:commandline></domain>",
            disk.display()
        ),
    )
    .unwrap();
    let _domain = DefinedDomain::define(&xml, &name).unwrap();
    virsh(&["autostart", &name]).unwrap();
    virsh(&["start", &name]).unwrap();
    let home = tempfile::tempdir().unwrap();
    let driver = LibvirtDriver::new(LibvirtConfig::new(home.path())).unwrap();
    let vm = VmName::new(&name).unwrap();
    assert_eq!(driver.state(&vm).await.unwrap(), VmState::Running);

    assert!(
        driver.fence(&vm, "failed over to beta").await.unwrap(),
        "it was running"
    );
    assert_eq!(driver.state(&vm).await.unwrap(), VmState::Stopped);
    let refused = virsh(&["start", &name]).unwrap_err().to_string();
    // libvirt says QEMU's own refusal, or, when QEMU exited before libvirt reached its
    // monitor (seen once under load in the full suite), only "failed to connect to monitor
    // socket"; QEMU's refusal is then in the domain's log, where an administrator looks.
    let log =
        std::fs::read_to_string(format!("/var/log/libvirt/qemu/{name}.log")).unwrap_or_default();
    let last_start = log.rsplit("starting up").next().unwrap_or("");
    assert!(
        refused.contains(FENCE_ARG) || last_start.contains(&format!("{FENCE_ARG}: invalid option")),
        "virsh start must fail naming the fence, in its message or the domain's log: \
         {refused}\nlog since the last start: {last_start}"
    );
    assert_eq!(
        virsh(&["domstate", &name]).unwrap().trim(),
        "shut off",
        "a fenced domain does not run"
    );
    let info = virsh(&["dominfo", &name]).unwrap();
    assert!(
        info.lines()
            .any(|l| l.starts_with("Autostart:") && l.contains("disable")),
        "{info}"
    );
    let e = driver.start(&vm).await.unwrap_err().to_string();
    assert!(e.contains("failed over to beta"), "{e}");
    let listed = driver.list().await.unwrap();
    let me = listed.iter().find(|v| v.name == vm).unwrap();
    assert_eq!(me.fenced.as_deref(), Some("failed over to beta"));
    // Fencing again changes nothing and still stops nothing.
    assert!(!driver.fence(&vm, "failed over to beta").await.unwrap());

    // A driver that lost its records still sees the fence in the definition.
    let amnesiac_home = tempfile::tempdir().unwrap();
    let amnesiac = LibvirtDriver::new(LibvirtConfig::new(amnesiac_home.path())).unwrap();
    let listed = amnesiac.list().await.unwrap();
    let me = listed.iter().find(|v| v.name == vm).unwrap();
    assert!(
        me.fenced.as_deref().unwrap_or("").contains("fenced"),
        "{me:?}"
    );

    driver.unfence(&vm).await.unwrap();
    let defined = virsh(&["dumpxml", "--inactive", &name]).unwrap();
    assert!(!defined.contains(FENCE_ARG), "{defined}");
    assert!(
        defined.contains("-no-shutdown"),
        "the administrator's argument stays"
    );
    driver.start(&vm).await.unwrap();
    assert_eq!(driver.state(&vm).await.unwrap(), VmState::Running);
    driver.kill(&vm).await.unwrap();
}
