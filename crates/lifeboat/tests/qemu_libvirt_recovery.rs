//! Moves of a libvirt domain (defined with `virsh` by an administrator):
//! - a test copy onto a libvirt host, defined by its libvirt driver from the point: runs
//!   at once on local overlays over the point served from the vault, hydrates through
//!   libvirt's block pull, sits on a bridge of its own that reaches nothing, and is
//!   removed without a trace in libvirt; a second copy with `--expose 80` answers on a
//!   port of the recovery host and reaches nothing either. Both hosts share this machine's one libvirtd, so
//!   the copy (which has its own name) is the recovery this test can make there;
//! - planned and unplanned failover onto a QEMU-driver host, the source fenced so that
//!   `virsh start` is refused, then commit, failback onto the libvirt domain and
//!   reprotect.

mod common;

use std::time::{Duration, Instant};

use common::cluster::cluster_with_hosts;
use common::libvirt::{
    assert_fenced_domain, data_at, diverge_and_fail_over_unplanned, planned_failover_with_writes,
    ready_console, reprotect_reads_only_the_changes, write_and_prove,
    write_at_b_commit_and_fail_back, Beta, RecoveredDomain, SourceDomain,
};
use lifeboat_testkit::libvirtd::virsh;
use serde_json::Value;

/// The server's view of `vm` on `host`, once `pred` holds.
fn wait_vm(
    cl: &common::cluster::Cluster,
    host: &str,
    vm: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let vms = cl.json(&["vms", "list"]);
        let found = vms["vms"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["vm"] == vm && v["host"] == host)
            .cloned();
        if let Some(v) = found.filter(|v| pred(v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{host}/{vm} after {limit:?}: {vms:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_copy_of_a_libvirt_domain_runs_isolated_on_a_libvirt_host_and_goes_away() {
    let source = SourceDomain::start("lvr", false).await;
    let (name, system, data) = (
        source.name.clone(),
        source.system.clone(),
        source.data.clone(),
    );
    let mut console = source.console;
    let cl = tokio::task::block_in_place(|| {
        cluster_with_hosts(&["--hypervisor", "libvirt"], &["--hypervisor", "libvirt"])
    });
    // Both agents see the one libvirtd: the VM is named with its host.
    let qualified = format!("alpha/{name}");
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.protect(&qualified, &["--wait", "--timeout", "10m"]);
        assert!(ok, "{out}\n{err}");
    });
    let writes = "echo copy-me > /data/round && sync && echo written";
    write_and_prove(&cl, &mut console, &name, (&system, &data), writes).await;

    let copy_name = format!("{name}-test");
    let _copy_guard = RecoveredDomain(copy_name.clone());
    let copy = tokio::task::block_in_place(|| cl.json(&["failover", &qualified, "--test"]));
    assert_eq!(copy["vm"], copy_name.as_str(), "{copy}");
    assert_eq!(copy["host"], "beta", "{copy}");
    // A domain of libvirt's, defined by the recovery host's driver.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = virsh(&["domstate", &copy_name, "--reason"]).unwrap_or_default();
        if state.trim().starts_with("running") {
            break;
        }
        assert!(Instant::now() < deadline, "the copy is {state}: {copy}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let copy_dir = std::path::Path::new("/var/lib/libvirt/lifeboat/recovered").join(&copy_name);
    let mut copy_console = ready_console(&copy_dir.join("serial.sock")).await;
    let round = copy_console
        .run("cat /data/round", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        round.trim(),
        "copy-me",
        "the copy has the guest's last write"
    );
    // Its boot is kept in a log beside it, printed before anyone connected.
    let console_log = std::fs::read(copy_dir.join("console.log")).unwrap();
    assert!(
        String::from_utf8_lossy(&console_log).contains("LIFEBOAT-GUEST-READY"),
        "the copy's console log holds its boot"
    );

    // Its NIC is on a bridge of its own, with nothing else on it.
    let xml = virsh(&["dumpxml", &copy_name]).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let nic = doc
        .descendants()
        .find(|n| n.has_tag_name("interface"))
        .unwrap();
    let mac = nic
        .children()
        .find(|n| n.has_tag_name("mac"))
        .and_then(|m| m.attribute("address"))
        .unwrap();
    assert_ne!(mac, "52:54:00:4c:42:01", "a copy has its own MAC");
    let bridge = nic
        .children()
        .find(|n| n.has_tag_name("source"))
        .and_then(|s| s.attribute("bridge"))
        .unwrap()
        .to_string();
    assert_ne!(bridge, source.bridge, "not production's bridge");
    let ports = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .unwrap()
        .count();
    assert_eq!(ports, 1, "the copy's bridge holds its NIC alone");
    let out = copy_console
        .run(
            "ping -c 1 -W 2 10.0.2.2 >/dev/null 2>&1; echo rc=$?",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(out.contains("rc=1"), "the copy reached out: {out}");

    // It hydrates: the vault is not needed any more.
    tokio::task::block_in_place(|| {
        wait_vm(&cl, "beta", &copy_name, Duration::from_secs(300), |v| {
            v["hydrated_percent"].as_f64() == Some(100.0)
        })
    });
    let live = virsh(&["dumpxml", &copy_name]).unwrap();
    assert!(
        !live.contains("protocol='nbd'"),
        "a hydrated disk has no backing: {live}"
    );
    let writes = copy_console
        .run(
            "echo after > /data/after && sync && cat /data/after",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(writes.trim(), "after");
    drop(copy_console);

    clean_up_copy(&cl, &qualified, &copy_name);
    assert!(!copy_dir.exists(), "its folder is gone");
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "its bridge is gone"
    );
    // Production ran on throughout.
    assert_eq!(virsh(&["domstate", &name]).unwrap().trim(), "running");

    // A copy with a port exposed: a tester reaches the guest's port 80 through a port of
    // the recovery host, and the copy reaches nothing (QEMU's restricted user network).
    let copy = tokio::task::block_in_place(|| {
        cl.json(&["failover", &qualified, "--test", "--expose", "80"])
    });
    let forwards: Vec<Value> = copy["forwards"].as_array().unwrap().clone();
    let exposed = forwards
        .iter()
        .find(|f| f["guest_port"] == 80)
        .unwrap_or_else(|| panic!("no exposed port: {copy}"));
    let port = exposed["host_port"].as_u64().unwrap() as u16;
    let body = lifeboat_testkit::wait_http(port, "/boot-count", Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| {
            // Say why: the copy's state as libvirt and the server see it, and its QEMU log.
            let log = std::fs::read_to_string(format!("/var/log/libvirt/qemu/{copy_name}.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let console = std::fs::read(copy_dir.join("console.log")).unwrap_or_default();
            let console = String::from_utf8_lossy(&console);
            let console: Vec<&str> = console.lines().rev().take(40).collect();
            panic!(
                "{e:#}\ndomstate: {:?}\ncopy: {copy}\nvms: {}\nQEMU log (newest first): \
                 {tail:#?}\nconsole (newest first): {console:#?}",
                virsh(&["domstate", &copy_name, "--reason"]),
                cl.json(&["vms", "list"])
            )
        });
    // The copy's own first boot from a point of a guest that had booted once.
    assert_eq!(
        String::from_utf8_lossy(&body).trim(),
        "2",
        "the exposed port reaches the copy"
    );
    let mut copy_console = ready_console(&copy_dir.join("serial.sock")).await;
    let (probe, reached) = outbound_probe().await;
    let out = copy_console
        .run(
            &format!("nc -w 3 10.0.2.2 {probe} </dev/null; echo rc=$?"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the exposed copy reached the host: {out}"
    );
    drop(copy_console);
    clean_up_copy(&cl, &qualified, &copy_name);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "its port is closed"
    );
}

/// `failover cleanup` of the test copy of `qualified`: its domain is gone.
fn clean_up_copy(cl: &common::cluster::Cluster, qualified: &str, copy_name: &str) {
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.cli(&["failover", "cleanup", qualified]);
        assert!(ok, "{out}\n{err}");
    });
    assert!(
        virsh(&["dominfo", copy_name]).is_err(),
        "the copy's domain is gone"
    );
}

/// Connections made to a listener on every address of the host (a guest on QEMU's user
/// network would reach it as 10.0.2.2).
async fn outbound_probe() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplanned_failover_of_a_libvirt_domain_fences_it_when_its_host_returns() {
    let source = SourceDomain::start("lvu", false).await;
    let (name, system, data) = (
        source.name.clone(),
        source.system.clone(),
        source.data.clone(),
    );
    let mut console = source.console;
    // The recovery host runs the QEMU driver: the other way across drivers.
    let mut cl =
        tokio::task::block_in_place(|| cluster_with_hosts(&["--hypervisor", "libvirt"], &[]));
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.protect(&name, &["--wait", "--timeout", "10m"]);
        assert!(ok, "{out}\n{err}");
    });
    let writes = "echo kept > /data/round && sync && echo written";
    write_and_prove(&cl, &mut console, &name, (&system, &data), writes).await;

    // Site A is cut off but alive: its agent gone, the domain writes on.
    cl.alpha.child.kill().unwrap();
    cl.alpha.child.wait().unwrap();
    let map = format!("{}=isolated", source.bridge);
    diverge_and_fail_over_unplanned(&cl, &mut console, &name, &map, &Beta::Qemu).await;
    let beta_vm = cl.home("beta").join("vms").join(&name);
    let spec = std::fs::read_to_string(beta_vm.join("spec.toml")).unwrap();
    assert!(
        spec.contains("mac = \"52:54:00:4c:42:01\"") && spec.contains("network = \"isolated\""),
        "the VM keeps its MAC, on the mapped network: {spec}"
    );

    // A's link returns: its agent is back, and the server fences the domain there.
    let port = cl.alpha.port;
    cl.alpha = common::start_agent_on(
        &cl.home("alpha"),
        "alpha",
        port,
        &["--hypervisor", "libvirt"],
    );
    tokio::task::block_in_place(|| {
        common::moves::wait_fenced_row(&cl, "alpha", &name, Duration::from_secs(120))
    });
    assert_fenced_domain(&source.daemon, &name, Duration::from_secs(30));
    // The recovered VM runs on at B.
    let p = tokio::task::block_in_place(|| cl.protection());
    assert_eq!(p["state"], "failed_over", "{p}");

    // Writes at B; commit, then fail back home onto the libvirt domain: B's writes are
    // there, home's diverged write is overwritten, the fence is lifted.
    write_at_b_commit_and_fail_back(&cl, &beta_vm.join("serial.sock"), &name, &source.daemon).await;
    let mut home = ready_console(&source.serial).await;
    let files = home
        .run(
            "cat /data/round /data/away; ls /data",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(files.starts_with("kept\naway"), "{files}");
    assert!(
        !files.contains("diverged"),
        "home's diverged write is overwritten: {files}"
    );

    // Reprotect from home: only what changed since the failback is read.
    let first = tokio::task::block_in_place(|| reprotect_reads_only_the_changes(&cl, &name));
    eprintln!(
        "reprotect: the first sync read {} bytes: {first}",
        first["bytes_read"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_of_a_libvirt_domain_loses_no_acknowledged_write() {
    let source = SourceDomain::start("lvp", false).await;
    let name = source.name.clone();
    let console = source.console;
    let cl = tokio::task::block_in_place(|| cluster_with_hosts(&["--hypervisor", "libvirt"], &[]));
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.protect(&name, &["--wait", "--timeout", "10m"]);
        assert!(ok, "{out}\n{err}");
    });
    let map = format!("{}=isolated", source.bridge);
    let moved = planned_failover_with_writes(
        &cl,
        console,
        (&name, &source.console_log, &source.daemon),
        &map,
        &Beta::Qemu,
    )
    .await;
    eprintln!(
        "planned failover of a libvirt domain: {} acknowledged writes all at B",
        moved.acked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_copy_of_a_qemu_driver_vm_runs_on_a_libvirt_host() {
    // The other way across drivers: a VM Lifeboat defined (QEMU driver, user network,
    // no domain XML in its points) copied onto a libvirt host.
    let cl = tokio::task::block_in_place(|| cluster_with_hosts(&[], &["--hypervisor", "libvirt"]));
    let vm = "lbt-qweb";
    let (_guard, mut console) = common::cluster::boot_guest_with(
        &cl.home("alpha"),
        vm,
        &[],
        Some(lifeboat_testkit::free_tcp_port()),
    )
    .await;
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.protect(&format!("alpha/{vm}"), &["--wait", "--timeout", "10m"]);
        assert!(ok, "{out}\n{err}");
    });
    let said = console
        .run(
            "echo from-qemu > /data/round && sync && echo written",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(said.contains("written"), "{said}");
    let written = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::task::block_in_place(|| {
        common::libvirt::wait_point_after(&cl, vm, &written, Duration::from_secs(300))
    });
    let copy_name = format!("{vm}-test");
    let _copy_guard = RecoveredDomain(copy_name.clone());
    let copy =
        tokio::task::block_in_place(|| cl.json(&["failover", &format!("alpha/{vm}"), "--test"]));
    assert_eq!(copy["host"], "beta", "{copy}");
    assert_eq!(
        copy["forwards"],
        serde_json::json!([]),
        "a libvirt host makes no port forward: {copy}"
    );
    let copy_dir = std::path::Path::new("/var/lib/libvirt/lifeboat/recovered").join(&copy_name);
    let files = data_at(&copy_dir.join("serial.sock")).await;
    assert!(files.starts_with("from-qemu"), "{files}");
    let xml = virsh(&["dumpxml", &copy_name]).unwrap();
    assert!(
        xml.contains("<interface type='bridge'>"),
        "isolated on a bridge: {xml}"
    );
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.cli(&["failover", "cleanup", &format!("alpha/{vm}")]);
        assert!(ok, "{out}\n{err}");
    });
    assert!(
        virsh(&["dominfo", &copy_name]).is_err(),
        "the copy's domain is gone"
    );
}
