//! A libvirt domain an administrator defined with `virsh define` — not Lifeboat — on a
//! Linux bridge with a static address, with a qcow2 system disk and a raw data disk, is
//! listed by the agent's libvirt driver and protected without being redefined: points
//! through libvirt's backup job along its checkpoint chain, app-consistent through the
//! guest agent via libvirt, each point proven equal to the paused disks.

mod common;

use std::io::{Read, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{cluster_with_alpha, lifeboat, run_ok, Cluster};
use lifeboat_testkit::libvirtd::{domain_dir, ensure_libvirtd, virsh, DefinedDomain};
use lifeboat_testkit::{boot_timeout, SerialConsole};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A Linux bridge with the host's address on the guest's subnet, removed on drop.
struct Bridge(String);
impl Bridge {
    fn new(name: &str, host_cidr: &str) -> Bridge {
        for args in [
            vec!["link", "add", name, "type", "bridge"],
            vec!["addr", "add", host_cidr, "dev", name],
            vec!["link", "set", name, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        Bridge(name.to_string())
    }
}
impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// GET `path` from the guest's busybox httpd at `addr`, over the bridge.
fn http_get(addr: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(
                &addr.parse().unwrap(),
                Duration::from_secs(5),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match got {
            Ok(text) if text.contains(" 200 ") => {
                return text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
            }
            other => assert!(
                Instant::now() < deadline,
                "no answer from {addr}{path}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn domain_xml(name: &str, dir: &Path, bridge: &str, serial: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
         <features><acpi/></features><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{dir}/system.qcow2'/><target dev='vda' bus='virtio'/></disk>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{dir}/data.raw'/><target dev='vdb' bus='virtio'/></disk>\
         <interface type='bridge'><mac address='52:54:00:4c:42:01'/>\
         <source bridge='{bridge}'/><model type='virtio'/></interface>\
         <serial type='unix'><source mode='bind' path='{serial}'/><target port='0'/></serial>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         <graphics type='vnc' autoport='yes' listen='127.0.0.1'/></devices></domain>",
        dir = dir.display(),
        serial = serial.display(),
    )
}

/// Waits for a point of `vm` whose cut began after `after` (RFC 3339 strings compare in
/// time order); returns the points.
fn wait_point_after(cl: &Cluster, vm: &str, after: &str, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let points = cl.json(&["points", vm]);
        let points = points.as_array().unwrap().clone();
        let newest = points.iter().filter_map(|p| p["cut_time"].as_str()).max();
        if newest.is_some_and(|t| t > after) {
            return points;
        }
        assert!(
            Instant::now() < deadline,
            "no point of {vm} cut after {after} within {limit:?}; status: {}",
            cl.json(&["status"])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Restores `point`'s `disk` raw and compares it with the domain's image.
fn assert_point_equals(cl: &Cluster, point: &str, disk: &str, image: &Path, format: &str) {
    let out = cl.tmp.path().join(format!("{point}-{disk}.raw"));
    let mut c = lifeboat(cl.tmp.path());
    c.args([
        "vault", "--vault", &cl.vault, "restore", point, "--disk", disk,
    ])
    .arg(&out);
    run_ok(c);
    let cmp = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "raw", "-F", format])
        .arg(&out)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "point {point} disk {disk} differs from the paused domain's {}: {}",
        image.display(),
        String::from_utf8_lossy(&cmp.stdout)
    );
    std::fs::remove_file(&out).unwrap();
}

/// The guest runs `writes` (which ends by printing "written"); then a point cut after
/// them must restore equal to both disks of the paused domain, since nothing wrote in
/// between. Returns the points and that newest one.
async fn write_and_prove(
    cl: &Cluster,
    console: &mut SerialConsole,
    name: &str,
    disks: (&Path, &Path),
    writes: &str,
) -> (Vec<Value>, Value) {
    let said = console.run(writes, Duration::from_secs(120)).await.unwrap();
    assert!(said.contains("written"), "{said}");
    let written = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let points = tokio::task::block_in_place(|| {
        wait_point_after(cl, name, &written, Duration::from_secs(300))
    });
    virsh(&["suspend", name]).unwrap();
    let newest = points
        .iter()
        .max_by_key(|p| p["cut_time"].as_str().unwrap().to_string())
        .unwrap()
        .clone();
    let id = newest["point"].as_str().unwrap().to_string();
    tokio::task::block_in_place(|| {
        assert_point_equals(cl, &id, "vda", disks.0, "qcow2");
        assert_point_equals(cl, &id, "vdb", disks.1, "raw");
    });
    virsh(&["resume", name]).unwrap();
    (points, newest)
}

/// Runs `f` with the domain's checkpoints while it is paused and no backup job runs
/// (a cut under way finishes; none starts on a paused domain), then resumes it.
fn quiet<T>(name: &str, f: impl FnOnce(Vec<String>) -> T) -> T {
    virsh(&["suspend", name]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while virsh(&["domjobinfo", name]).unwrap().contains("Backup") {
        assert!(Instant::now() < deadline, "a backup job ran for 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let names = virsh(&["checkpoint-list", name, "--name"]).unwrap();
    let out = f(names
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect());
    virsh(&["resume", name]).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_defined_with_virsh_is_listed_and_protected_point_for_point() {
    ensure_libvirtd().unwrap();
    let tmp = domain_dir().unwrap();
    let dir = tmp.path();
    let system = lifeboat_testkit::guest_disk_copy(dir, "system.qcow2").unwrap();
    let data = dir.join("data.raw");
    let f = std::fs::File::create(&data).unwrap();
    f.set_len(32 * MIB).unwrap();
    drop(f);
    // libvirt's QEMU (its own user) binds the serial socket here.
    let sockets = dir.join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let ok = Command::new("chown")
        .arg("libvirt-qemu")
        .arg(&sockets)
        .status()
        .unwrap();
    assert!(ok.success());
    let serial = sockets.join("serial.sock");
    let suffix = format!("{:06x}", std::process::id() & 0xff_ffff);
    let name = format!("lbt-lv-{suffix}");
    // The guest's static address is 10.0.2.15/24; the host is .2 on the bridge.
    let bridge = Bridge::new(&format!("lbtbr{suffix}"), "10.0.2.2/24");
    let xml = dir.join("domain.xml");
    std::fs::write(&xml, domain_xml(&name, dir, &bridge.0, &serial)).unwrap();
    let _domain = DefinedDomain::define(&xml, &name).unwrap();
    virsh(&["start", &name]).unwrap();
    let mut console = SerialConsole::connect(&serial, Duration::from_secs(60))
        .await
        .unwrap();
    console.wait_ready(boot_timeout()).await.unwrap();
    let boots = tokio::task::block_in_place(|| http_get("10.0.2.15:80", "/boot-count"));
    assert_eq!(
        boots.trim(),
        "1",
        "the guest answers on the bridge at its own address"
    );

    let mut cl = tokio::task::block_in_place(|| cluster_with_alpha(&["--hypervisor", "libvirt"]));
    // Listed as libvirt describes it, by a driver that never defined it.
    let vms = tokio::task::block_in_place(|| cl.json(&["vms", "list"]));
    let text = vms.to_string();
    let vm = vms["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["vm"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} is not listed: {text}"));
    assert_eq!(vm["host"], "alpha", "{vm}");
    assert_eq!(vm["state"]["state"], "running", "{vm}");
    assert_eq!(vm["protection"], "unprotected", "{vm}");

    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.protect(&name, &["--wait", "--timeout", "10m"]);
        assert!(ok, "{out}\n{err}");
    });

    let mut proven = Vec::new();
    for round in 0..3u64 {
        // Writes on both disks, flushed by the guest, then a point cut after them.
        let cmd = format!(
            "dd if=/dev/urandom of=/dev/vdb bs=64k count=16 seek={} conv=fsync 2>/dev/null; \
             echo {round} > /data/round && sync && echo written",
            round * 40
        );
        let (_, newest) = write_and_prove(&cl, &mut console, &name, (&system, &data), &cmd).await;
        proven.push(newest);
    }
    let ids: std::collections::BTreeSet<&str> = proven
        .iter()
        .map(|p| p["point"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "three different points: {proven:#?}");

    let points = tokio::task::block_in_place(|| cl.json(&["points", &name]));
    let points = points.as_array().unwrap();
    // The first is full and app-consistent (qemu-ga froze /data through libvirt); later
    // ones build on the checkpoint chain; the raw disk, which cannot carry a checkpoint,
    // is read whole each time and the qcow2 disk only where it changed.
    let first = &points[0];
    assert_eq!(first["kind"], "full", "{first}");
    assert_eq!(first["consistency"], "app", "{first}");
    let incremental: Vec<&Value> = points
        .iter()
        .filter(|p| p["kind"] == "incremental")
        .collect();
    assert!(incremental.len() >= 2, "{points:#?}");
    for p in &incremental {
        let read = p["bytes_read"].as_u64().unwrap();
        assert!(
            (32 * MIB..32 * MIB + 16 * MIB).contains(&read),
            "an incremental reads the raw disk whole (32 MiB) and little of the system \
             disk: {p}"
        );
    }
    // The checkpoint chain is one checkpoint long, ours. Someone deletes it: the next
    // point is a resync that says why, never an incremental with a silent gap, and it
    // still equals the disks.
    let earlier = tokio::task::block_in_place(|| cl.json(&["points", &name]));
    let earlier = earlier.as_array().unwrap().clone();
    quiet(&name, |ours| {
        assert!(
            ours.len() == 1 && ours[0].starts_with("lifeboat-"),
            "{ours:?}"
        );
        virsh(&["checkpoint-delete", &name, &ours[0]]).unwrap();
    });
    let gap = "dd if=/dev/urandom of=/dev/vdb bs=64k count=4 seek=200 conv=fsync \
               2>/dev/null; echo gap > /data/round && sync && echo written";
    let (points, _) = write_and_prove(&cl, &mut console, &name, (&system, &data), gap).await;
    let before: std::collections::BTreeSet<&str> = earlier
        .iter()
        .map(|p| p["point"].as_str().unwrap())
        .collect();
    let resync = points
        .iter()
        .filter(|p| !before.contains(p["point"].as_str().unwrap()))
        .find(|p| p["kind"] == "resync")
        .unwrap_or_else(|| panic!("no resync after the checkpoint was deleted: {points:#?}"));
    let note = resync["note"].as_str().unwrap_or_default();
    assert!(note.contains("is gone"), "{resync}");

    // The agent killed in the middle of a cut: the domain runs on (libvirt owns its
    // QEMU), and the restarted agent ends the backup job the dead one left, drops its
    // checkpoint and carries on from the chain.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !virsh(&["domjobinfo", &name])
        .unwrap_or_default()
        .contains("Backup")
    {
        assert!(Instant::now() < deadline, "no backup job seen within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = cl.alpha.child.kill();
    let _ = cl.alpha.child.wait();
    let state = virsh(&["domstate", &name]).unwrap();
    assert_eq!(
        state.trim(),
        "running",
        "killing the agent stopped the domain"
    );
    let port = cl.alpha.port;
    cl.alpha = tokio::task::block_in_place(|| {
        common::spawn_agent(common::agent_command(
            &cl.home("alpha"),
            "alpha",
            port,
            &["--hypervisor", "libvirt"],
        ))
    });
    let restart = "dd if=/dev/urandom of=/dev/vdb bs=64k count=4 seek=300 conv=fsync \
                   2>/dev/null; echo restarted > /data/round && sync && echo written";
    let (points, newest) =
        write_and_prove(&cl, &mut console, &name, (&system, &data), restart).await;
    assert_ne!(newest["kind"], "full", "{points:#?}");
    // The dead agent's job was ended (new cuts ran since) and its checkpoint dropped.
    quiet(&name, |ours| assert_eq!(ours.len(), 1, "{ours:?}"));

    // A VM of one driver recovers on a host of the other: a test copy of the libvirt
    // domain on beta, whose agent runs the QEMU driver, from the neutral spec in the point.
    let copy = tokio::task::block_in_place(|| cl.json(&["failover", &name, "--test"]));
    let copy_name = format!("{name}-test");
    assert_eq!(copy["vm"], copy_name.as_str(), "{copy}");
    assert_eq!(copy["host"], "beta", "{copy}");
    let copy_dir = cl.home("beta").join("vms").join(&copy_name);
    let mut copy_console =
        SerialConsole::connect(&copy_dir.join("serial.sock"), Duration::from_secs(60))
            .await
            .unwrap();
    copy_console.wait_ready(boot_timeout()).await.unwrap();
    let round = copy_console
        .run("cat /data/round", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        round.trim(),
        "restarted",
        "the copy has the guest's last write"
    );
    let spec = std::fs::read_to_string(copy_dir.join("spec.toml")).unwrap();
    assert!(spec.contains("network = \"isolated\""), "{spec}");
    assert!(
        !spec.contains("mac = \"52:54:00:4c:42:01\""),
        "a copy has its own MAC: {spec}"
    );
    drop(copy_console);
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.cli(&["failover", "cleanup", &name]);
        assert!(ok, "{out}\n{err}");
    });
    assert!(!copy_dir.exists(), "the copy is gone from beta");
    drop(cl);
    // However the test ends, libvirt's domain goes (DefinedDomain), with its checkpoints.
}
