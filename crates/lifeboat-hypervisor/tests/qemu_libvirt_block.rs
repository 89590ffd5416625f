//! A libvirt domain whose data disk is a block device (here a loop device, as an LVM
//! volume or a SAN LUN would be): protected like a raw file disk — exported and read
//! whole at every cut, since no checkpoint can live on it — and read as it is.

use std::process::Command;

use lifeboat_hypervisor::libvirt::{LibvirtConfig, LibvirtDriver};
use lifeboat_hypervisor::{Cut, CutKind, DiskFormat, DiskName, Extent, Hypervisor, VmName};
use lifeboat_testkit::libvirtd::{domain_dir, ensure_libvirtd, virsh, DefinedDomain};

const MIB: u64 = 1 << 20;

/// A loop device over a file, detached on drop.
struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_device_disk_is_cut_whole_and_read_as_it_is() {
    ensure_libvirtd().unwrap();
    let tmp = domain_dir().unwrap();
    let system = tmp.path().join("vda.qcow2");
    lifeboat_testkit::libvirtd::qcow2(&system, 16 * MIB).unwrap();
    let backing = tmp.path().join("lun.img");
    let ok = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=16", "status=none"])
        .arg(format!("of={}", backing.display()))
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 17 0 1M"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(out.status.success(), "losetup: {out:?}");
    let device = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let name = format!("lbt-blk-{:06x}", std::process::id() & 0xff_ffff);
    let xml = tmp.path().join("dom.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
             <disk type='block' device='disk'><driver name='qemu' type='raw'/>\
             <source dev='{}'/><target dev='vdb' bus='virtio'/></disk>\
             <graphics type='vnc' autoport='yes' listen='127.0.0.1'/></devices></domain>",
            system.display(),
            device.0
        ),
    )
    .unwrap();
    let _domain = DefinedDomain::define(&xml, &name).unwrap();
    virsh(&["start", &name]).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut config = LibvirtConfig::new(home.path());
    config.work_root = tmp.path().join("work");
    let driver = LibvirtDriver::new(config).unwrap();
    let vm = VmName::new(&name).unwrap();
    let spec = driver.spec(&vm).await.unwrap();
    let vdb = DiskName::new("vdb").unwrap();
    let disk = spec.disk(&vdb).unwrap();
    assert_eq!(
        (disk.format, disk.path.to_string_lossy().to_string()),
        (DiskFormat::Raw, device.0.clone())
    );

    let full = driver.begin_full_cut(&vm).await.unwrap();
    let first = full.read(&vdb, 0, 65536).await.unwrap();
    assert!(
        first.iter().all(|b| *b == 17),
        "the device's data, as it is"
    );
    full.commit().await.unwrap();

    // The guest writes on the device; the next cut exports it whole (no checkpoint can
    // say what changed) and reads the new data, while the qcow2 disk is incremental.
    let cmd = "qemu-io -d /machine/peripheral/virtio-disk1/virtio-backend \"write -P 34 4M 64k\"";
    virsh(&["qemu-monitor-command", "--hmp", &name, cmd]).unwrap();
    let inc = driver.begin_incremental_cut(&vm).await.unwrap();
    assert_eq!(inc.kind(), CutKind::Incremental);
    assert_eq!(
        inc.changed_extents(&vdb).await.unwrap(),
        vec![Extent {
            offset: 0,
            length: 16 * MIB
        }]
    );
    let vda = DiskName::new("vda").unwrap();
    assert!(inc.changed_extents(&vda).await.unwrap().is_empty());
    let written = inc.read(&vdb, 4 * MIB, 65536).await.unwrap();
    assert!(written.iter().all(|b| *b == 34));
    inc.commit().await.unwrap();
    driver.kill(&vm).await.unwrap();
}
