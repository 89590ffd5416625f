//! A NIC of a VM Lifeboat defines can sit on a host's Linux bridge (`network =
//! "bridge:NAME"`): the guest answers at its own address on the bridge, reached here from
//! another network namespace plugged into the same bridge; a bridge the host lacks is
//! refused before QEMU starts; once the VM runs, QEMU announces its NIC on the bridge
//! (RARP from its MAC).

mod common;

use std::process::Command;
use std::time::Duration;

use common::bridge::{Bridge, BridgeClient};
use common::cluster::{lifeboat, run_ok, KillVm};
use lifeboat_hypervisor::{QemuConfig, QemuDriver, VmName};
use lifeboat_testkit::debian_guest::ArpWatch;
use lifeboat_testkit::lab::Netns;
use lifeboat_testkit::{boot_timeout, SerialConsole};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_a_bridge_answers_at_its_own_address() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("host");
    std::fs::create_dir_all(&home).unwrap();
    let id = format!("{:05x}", std::process::id() & 0xf_ffff);
    let bridge = Bridge::new(&format!("lbtq{id}"));
    let client = BridgeClient::new(&bridge);

    let disk = lifeboat_testkit::guest_disk_copy(&home, "web.qcow2").unwrap();
    let spec = |bridge: &str| {
        format!(
            "name = \"web\"\nmemory_mib = 256\n[[disks]]\nname = \"vda\"\npath = \"{}\"\n\
             format = \"qcow2\"\n[[nics]]\nmac = \"52:54:00:12:34:57\"\nnetwork = \"bridge:{bridge}\"\n",
            disk.display()
        )
    };
    // A bridge the host lacks: refused before QEMU starts, saying how to list them.
    let path = home.join("web.toml");
    std::fs::write(&path, spec("lbtnosuch")).unwrap();
    let mut c = lifeboat(&home);
    c.args(["vm", "define"]).arg(&path);
    run_ok(c);
    let out = lifeboat(&home)
        .args(["vm", "start", "web"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no bridge lbtnosuch"),
        "{err}"
    );
    run_ok({
        let mut c = lifeboat(&home);
        c.args(["vm", "undefine", "web"]);
        c
    });

    std::fs::write(&path, spec(&bridge.0)).unwrap();
    let mut c = lifeboat(&home);
    c.args(["vm", "define"]).arg(&path);
    run_ok(c);
    // Everything the bridge carries from now on: QEMU announces the NIC once it runs.
    let watch = ArpWatch::start(&Netns::host(), &bridge.0).unwrap();
    let mut c = lifeboat(&home);
    c.args(["vm", "start", "web"]);
    run_ok(c);
    let _guard = KillVm(home.clone(), "web");
    let driver = QemuDriver::new(QemuConfig::new(&home)).unwrap();
    let vm = VmName::new("web").unwrap();
    let socket = driver.serial_socket(&vm).unwrap();
    let mut console = SerialConsole::connect(&socket, Duration::from_secs(60))
        .await
        .unwrap();
    console.wait_ready(boot_timeout()).await.unwrap();
    let tap = lifeboat_hypervisor::qemu::bridge::tap_name(&vm, 0);
    let link = Command::new("ip")
        .args(["-o", "link", "show", &tap])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains(&format!("master {}", bridge.0)), "{link}");
    // Switches learn where the NIC is at once (announce-self: RARP from its MAC), not
    // when the guest first speaks — what a VM moved onto a stretched subnet needs.
    let announced: Vec<_> = watch
        .packets()
        .into_iter()
        .filter(|p| p.is_rarp() && p.sender_mac == "52:54:00:12:34:57")
        .collect();
    assert!(
        !announced.is_empty(),
        "no RARP from the NIC: {:?}",
        watch.packets()
    );

    // From the client's namespace, through the bridge, to the guest's own address.
    let boots = tokio::task::block_in_place(|| client.http_get("10.0.2.15:80", "/boot-count"));
    assert_eq!(boots.trim(), "1");
}
