//! A protected VM's failover network settings (docs/networking.md), on real agents and a
//! real guest:
//! - `lifeboat network VM` stores each NIC's failover, test and home address only after
//!   checking them against the VM's NICs (asked of its host) and the recovery host's
//!   networks: an unknown NIC, a failover address without a home one to restore, and an
//!   address outside the recovery network's subnet are refused with the reason, and
//!   nothing is stored;
//! - a planned failover onto a network the recovery host lacks is refused before
//!   anything changes: the VM never stopped, nothing runs at the recovery site;
//! - a test copy whose NIC has a test address gets a cloud-init seed (`CIDATA`) naming
//!   the copy's own MAC and that address, and its exposed port leads to that address;
//!   production is not touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::cluster;
use common::moves::{guest_runs, writing_guest};
use lifeboat_testkit::free_tcp_port;
use serde_json::Value;

const MAC: &str = "52:54:00:12:34:56";

/// Every file named `name` under `dir`.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(find(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
    out
}

/// A file of a FAT image, read with mtools.
fn fat_file(image: &Path, name: &str) -> String {
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(image)
        .arg(format!("::{name}"))
        .output()
        .expect("mtype (mtools) runs");
    assert!(out.status.success(), "mtype {name}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn settings(cl: &common::cluster::Cluster) -> Value {
    cl.json(&["network", "web"])["network_settings"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_settings_are_checked_before_they_are_stored_and_before_a_move() {
    let cl = cluster(None);
    let http = free_tcp_port();
    let _vm = writing_guest(&cl, http).await;

    // Nothing set: every NIC keeps its address.
    let (ok, out, err) = cl.cli(&["network", "web"]);
    assert!(ok && out.contains("keeps its address"), "{out}{err}");

    // Refused, each with its reason; nothing stored.
    let refusals: [(&[&str], &str); 4] = [
        (
            &[
                "--failover",
                "52:54:00:00:00:99=10.0.2.50/24",
                "--failback",
                "52:54:00:00:00:99=dhcp",
            ],
            "no NIC with this MAC",
        ),
        (
            &["--failover", &format!("{MAC}=10.0.2.50/24")],
            "give its home address",
        ),
        (
            &[
                "--failover",
                &format!("{MAC}=10.99.0.5/24"),
                "--failback",
                &format!("{MAC}=dhcp"),
            ],
            "outside the subnet(s) 10.0.2.0/24 of user on the recovery host",
        ),
        (
            &[
                "--failover",
                &format!("{MAC}=10.0.2.50"),
                "--failback",
                &format!("{MAC}=dhcp"),
            ],
            "not keep, dhcp or ADDRESS/PREFIX",
        ),
    ];
    for (flags, says) in refusals {
        let mut args = vec!["network", "web"];
        args.extend_from_slice(flags);
        let (ok, _, err) = cl.cli(&args);
        assert!(!ok && err.contains(says), "{flags:?}: {err}");
        assert_eq!(settings(&cl)["nics"], serde_json::json!([]), "{flags:?}");
    }

    // Valid settings are stored and shown, in the API's view too.
    let stored = cl.json(&[
        "network",
        "web",
        "--failover",
        &format!("{MAC}=10.0.2.50/24,gw=10.0.2.2,dns=10.0.2.3"),
        "--test",
        &format!("{MAC}=10.0.2.60/24"),
        "--failback",
        &format!("{MAC}=10.0.2.15/24,gw=10.0.2.2"),
    ]);
    let nic = &stored["network_settings"]["nics"][0];
    assert_eq!(nic["failover"]["address"], "10.0.2.50/24", "{stored:#}");
    assert_eq!(nic["failover"]["gateway"], "10.0.2.2");
    assert_eq!(nic["test"]["address"], "10.0.2.60/24");
    assert_eq!(nic["home"]["mode"], "static");
    assert_eq!(
        cl.protection()["network_settings"],
        stored["network_settings"]
    );
    let (ok, out, _) = cl.cli(&["network", "web"]);
    assert!(
        ok && out.contains("10.0.2.50/24,gw=10.0.2.2,dns=10.0.2.3"),
        "{out}"
    );

    // A planned failover onto a bridge beta lacks: refused before the source is touched.
    let (ok, _, err) = cl.cli(&[
        "failover",
        "web",
        "--planned",
        "--shutdown-timeout",
        "5s",
        "--network-map",
        "user=bridge:lbtnosuch0",
    ]);
    assert!(
        !ok && err.contains("no network bridge:lbtnosuch0") && err.contains("was not touched"),
        "{err}"
    );
    assert!(guest_runs(&cl.home("alpha"), "web"), "web stopped at alpha");
    assert!(!guest_runs(&cl.home("beta"), "web"), "web runs at beta");
    assert_eq!(cl.protection()["state"], "protected");

    // A test copy with a test address: its seed names the copy's MAC and that address.
    let (ok, _, err) = cl.cli(&["failover", "web", "--test", "--expose", "80"]);
    assert!(ok, "{err}");
    let seeds = find(&cl.home("beta"), "cidata.img");
    assert_eq!(seeds.len(), 1, "{seeds:?}");
    let config = fat_file(&seeds[0], "network-config");
    assert!(config.contains("- \"10.0.2.60/24\""), "{config}");
    // No gateway was given: the isolated network's own, so that replies to a client of
    // an exposed port find their way back.
    assert!(config.contains("gateway4: \"10.0.2.2\""), "{config}");
    assert!(
        !config.contains(MAC),
        "a test copy has its own MAC: {config}"
    );
    assert!(fat_file(&seeds[0], "meta-data").starts_with("instance-id: lifeboat-"));
    assert!(fat_file(&seeds[0], "user-data").contains("ssh_deletekeys: false"));
    // The copy's QEMU has it attached, read-only.
    let cmdlines: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&*seeds[0].to_string_lossy()))
        .collect();
    assert_eq!(cmdlines.len(), 1, "{cmdlines:?}");
    assert!(cmdlines[0].contains("read-only=on"), "{}", cmdlines[0]);
    // Its forwarded ports lead to its test address, not to the one QEMU's DHCP offers.
    assert!(cmdlines[0].contains("-10.0.2.60:80"), "{}", cmdlines[0]);
    assert!(guest_runs(&cl.home("alpha"), "web"), "production stopped");
    let (ok, _, err) = cl.cli(&["failover", "cleanup", "web"]);
    assert!(ok, "{err}");
    assert!(find(&cl.home("beta"), "cidata.img").is_empty());

    // --clear: every NIC keeps its address again.
    let cleared = cl.json(&["network", "web", "--clear"]);
    assert_eq!(cleared["network_settings"]["nics"], serde_json::json!([]));
}
