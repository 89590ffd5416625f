//! Tracking a stopped libvirt domain afresh (home after a failback, before its first
//! boot): libvirt takes no checkpoint of a stopped domain, so the driver writes the
//! bitmap into the qcow2 image and redefines the checkpoint over it; once started, the
//! first cut is incremental and holds exactly what the guest wrote since.

use lifeboat_hypervisor::libvirt::{LibvirtConfig, LibvirtDriver};
use lifeboat_hypervisor::{Cut, CutKind, DiskName, Extent, Hypervisor, TrackingStatus, VmName};
use lifeboat_testkit::libvirtd::{domain_dir, ensure_libvirtd, virsh, write_vda, DefinedDomain};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_domain_tracked_afresh_cuts_incrementally_at_its_first_sync() {
    ensure_libvirtd().unwrap();
    let tmp = domain_dir().unwrap();
    let disk = tmp.path().join("vda.qcow2");
    lifeboat_testkit::libvirtd::qcow2(&disk, 16 << 20).unwrap();
    let name = format!("lbt-afresh-{:06x}", std::process::id() & 0xff_ffff);
    let _domain = DefinedDomain::tiny(&name, &disk).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut config = LibvirtConfig::new(home.path());
    config.work_root = tmp.path().join("work");
    let driver = LibvirtDriver::new(config).unwrap();
    let vm = VmName::new(&name).unwrap();
    assert_eq!(
        driver.tracking_status(&vm).await.unwrap(),
        TrackingStatus::NotTracking
    );
    driver.track_afresh(&vm).await.unwrap();
    // Twice is the same as once: no stale checkpoint or bitmap is left.
    driver.track_afresh(&vm).await.unwrap();
    let names = virsh(&["checkpoint-list", &name, "--name"]).unwrap();
    assert_eq!(names.trim(), "lifeboat-2", "{names}");

    driver.start(&vm).await.unwrap();
    write_vda(&name, 0x5a, 3 << 20, 65536).unwrap();
    match driver.tracking_status(&vm).await.unwrap() {
        TrackingStatus::Tracking { generation, .. } => assert_eq!(generation, 2),
        other => panic!("{other:?}"),
    }
    let cut = driver.begin_incremental_cut(&vm).await.unwrap();
    assert_eq!(cut.kind(), CutKind::Incremental);
    let vda = DiskName::new("vda").unwrap();
    assert_eq!(
        cut.changed_extents(&vda).await.unwrap(),
        vec![Extent {
            offset: 3 << 20,
            length: 65536
        }]
    );
    let bytes = cut.read(&vda, 3 << 20, 65536).await.unwrap();
    assert!(bytes.iter().all(|b| *b == 0x5a));
    cut.commit().await.unwrap();
    assert_eq!(
        virsh(&["checkpoint-list", &name, "--name"]).unwrap().trim(),
        "lifeboat-3"
    );
    driver.kill(&vm).await.unwrap();
}
