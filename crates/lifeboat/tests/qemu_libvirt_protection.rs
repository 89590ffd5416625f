//! A libvirt domain an administrator defined with `virsh define` — not Lifeboat — on a
//! Linux bridge with a static address, with a qcow2 system disk and a raw data disk, is
//! listed by the agent's libvirt driver and protected without being redefined: points
//! through libvirt's backup job along its checkpoint chain, app-consistent through the
//! guest agent via libvirt, each point proven equal to the paused disks.

mod common;

use std::time::{Duration, Instant};

use common::cluster::cluster_with_alpha;
use common::libvirt::{quiet, ready_console, write_and_prove, SourceDomain, MIB};
use lifeboat_testkit::libvirtd::virsh;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_defined_with_virsh_is_listed_and_protected_point_for_point() {
    // The guest's static address is 10.0.2.15/24; a client in its own namespace is .2 on
    // the bridge.
    let source = SourceDomain::start("lv", true).await;
    let (name, system, data) = (
        source.name.clone(),
        source.system.clone(),
        source.data.clone(),
    );
    let mut console = source.console;
    let client = source.client.as_ref().unwrap();
    let boots = tokio::task::block_in_place(|| client.http_get("10.0.2.15:80", "/boot-count"));
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
    let mut copy_console = ready_console(&copy_dir.join("serial.sock")).await;
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
