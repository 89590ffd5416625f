//! Re-IP of a real Debian 12 guest (guest/debian: systemd, systemd-networkd, cloud-init)
//! by Lifeboat (docs/networking.md): the VM runs at home on bridge A with 10.1.0.5/24;
//! its network settings give it 10.20.0.5/24 after a failover and 10.1.0.5/24 back home.
//! - a planned failover onto bridge B (network map A=B): at its first boot there the
//!   guest answers at 10.20.0.5, and only there, with no one logging in;
//! - a failback: home again, it answers at 10.1.0.5 and has no trace of 10.20.0.5.
//!
//! Each side is seen by a client in its own namespace on that side's bridge.

mod common;

use common::bridge::{Bridge, BridgeClient};
use common::cluster::{cluster, KillVm};
use common::debian::installed_web;
use lifeboat_testkit::boot_timeout;
use lifeboat_testkit::debian_guest::StaticIpv4;

const MAC: &str = "52:54:00:77:00:05";

/// The guest's `/ip` (its global addresses, `IFACE ADDR/PREFIX` per line) from `client`.
fn addresses(client: &BridgeClient, at: &str) -> String {
    // A Debian boot under TCG takes a minute or more on a busy machine.
    client.http_get_within(&format!("{at}:80"), "/ip", boot_timeout() * 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_over_debian_guest_takes_its_new_address_and_failback_restores_home() {
    let cl = cluster(None);
    let id = format!("{:05x}", std::process::id() & 0xf_ffff);
    let (a, b) = (
        Bridge::new(&format!("lbra{id}")),
        Bridge::new(&format!("lbrb{id}")),
    );
    let client_a = BridgeClient::with_address(&a, "10.1.0.2/24");
    let client_b = BridgeClient::with_address(&b, "10.20.0.2/24");

    // At home: its address from the seed it was installed with (as a cloud image is).
    let home = cl.home("alpha");
    let spec = installed_web(
        &home,
        &StaticIpv4 {
            mac: MAC.into(),
            id: "lan0".into(),
            rename: false,
            address: "10.1.0.5".parse().unwrap(),
            prefix: 24,
            gateway: None,
            dns: Vec::new(),
        },
        &format!("bridge:{}", a.0),
    );
    for args in [
        vec!["vm", "define", spec.to_str().unwrap()],
        vec!["vm", "start", "web"],
    ] {
        let mut c = common::cluster::lifeboat(&home);
        c.args(&args);
        common::cluster::run_ok(c);
    }
    let _vm = KillVm(home.clone(), "web");
    let at_home = addresses(&client_a, "10.1.0.5");
    assert!(at_home.contains("10.1.0.5/24"), "{at_home}");

    let (ok, _, err) = cl.protect_web(&["--wait", "--timeout", "10m"]);
    assert!(ok, "{err}");
    let set = cl.json(&[
        "network",
        "web",
        "--failover",
        &format!("{MAC}=10.20.0.5/24"),
        "--failback",
        &format!("{MAC}=10.1.0.5/24"),
    ]);
    assert_eq!(
        set["network_settings"]["nics"][0]["failover"]["address"],
        "10.20.0.5/24"
    );

    // Planned failover onto bridge B: the guest comes up with its site-B address.
    let (ok, _, err) = cl.cli(&[
        "failover",
        "web",
        "--planned",
        "--shutdown-timeout",
        "3m",
        "--network-map",
        &format!("{}={}", a.0, b.0),
    ]);
    assert!(ok, "{err}");
    let at_b = addresses(&client_b, "10.20.0.5");
    assert!(
        at_b.contains("10.20.0.5/24") && !at_b.contains("10.1.0.5"),
        "at site B: {at_b}"
    );

    // Failback: home again, with its home address only.
    let (ok, _, err) = cl.cli(&["failback", "web", "--shutdown-timeout", "3m"]);
    assert!(ok, "{err}");
    let back = addresses(&client_a, "10.1.0.5");
    assert!(
        back.contains("10.1.0.5/24") && !back.contains("10.20.0.5"),
        "back home: {back}"
    );
    let op = cl.json(&["operations", "list"]);
    let failback = op
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "failback")
        .unwrap()
        .clone();
    let shown = cl.json(&["operations", "show", failback["id"].as_str().unwrap()]);
    assert!(
        shown["log"]
            .as_str()
            .unwrap()
            .contains("gets its home address"),
        "{shown:#}"
    );
}
