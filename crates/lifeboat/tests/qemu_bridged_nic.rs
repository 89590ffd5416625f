//! A NIC of a VM Lifeboat defines can sit on a host's Linux bridge (`network =
//! "bridge:NAME"`): the guest answers at its own address on the bridge, reached here from
//! another network namespace plugged into the same bridge; a bridge the host lacks is
//! refused before QEMU starts.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{lifeboat, run_ok, KillVm};
use lifeboat_hypervisor::{QemuConfig, QemuDriver, VmName};
use lifeboat_testkit::{boot_timeout, SerialConsole};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// The bridge, the veth into the client's namespace, and the namespace: removed on drop.
struct Wire {
    bridge: String,
    netns: String,
}
impl Drop for Wire {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_a_bridge_answers_at_its_own_address() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("host");
    std::fs::create_dir_all(&home).unwrap();
    let id = format!("{:05x}", std::process::id() & 0xf_ffff);
    let wire = Wire {
        bridge: format!("lbtq{id}"),
        netns: format!("lbtq{id}"),
    };
    let (veth, peer) = (format!("lbtqv{id}"), format!("lbtqp{id}"));
    ip(&["link", "add", &wire.bridge, "type", "bridge"]);
    ip(&["link", "set", &wire.bridge, "up"]);
    ip(&["netns", "add", &wire.netns]);
    ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
    ip(&["link", "set", &veth, "master", &wire.bridge, "up"]);
    ip(&["link", "set", &peer, "netns", &wire.netns]);
    for args in [
        vec!["addr", "add", "10.0.2.2/24", "dev", peer.as_str()],
        vec!["link", "set", peer.as_str(), "up"],
        vec!["link", "set", "lo", "up"],
    ] {
        let mut all = vec!["netns", "exec", wire.netns.as_str(), "ip"];
        all.extend(args);
        ip(&all);
    }

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

    std::fs::write(&path, spec(&wire.bridge)).unwrap();
    let mut c = lifeboat(&home);
    c.args(["vm", "define"]).arg(&path);
    run_ok(c);
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
    assert!(link.contains(&format!("master {}", wire.bridge)), "{link}");

    // From the client's namespace, through the bridge, to the guest's own address.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", &wire.netns, "bash", "-c"])
            .arg(
                "exec 3<>/dev/tcp/10.0.2.15/80 && printf 'GET /boot-count HTTP/1.0\\r\\n\\r\\n' >&3 \
                 && timeout 10 cat <&3",
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(" 200 ") {
            assert_eq!(
                text.split("\r\n\r\n").nth(1).unwrap_or("").trim(),
                "1",
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer over the bridge: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
