//! The DNS switch (docs/networking.md), on real agents, a real guest and a real BIND 9:
//! the VM's record `web.lab.test` (10.1.0.5, TTL 30) follows its moves by RFC 2136
//! updates signed with TSIG.
//! - a wrong TSIG key is refused when the settings are stored: nothing stored;
//! - a test copy never touches the record;
//! - a planned failover points it at the failover address, its log saying the old TTL
//!   (how long clients may keep the old answer); a failback points it home;
//! - with the DNS server down, a planned failover is refused before anything changes;
//!   an unplanned one goes on, and its log says the switch failed and how to finish it
//!   by hand.

mod common;

use std::time::Duration;

use common::cluster::{cluster, Cluster};
use common::moves::{guest_runs, writing_guest};
use lifeboat_testkit::bind::{Bind9, Bind9Zone};
use lifeboat_testkit::free_tcp_port;
use serde_json::Value;

const MAC: &str = "52:54:00:12:34:56";

/// The newest operation of `kind`, with its log.
fn last_op(cl: &Cluster, kind: &str) -> Value {
    let ops = cl.json(&["operations", "list"]);
    let id = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} operation: {ops:#}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    cl.json(&["operations", "show", &id])
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn web_a(dns: &Bind9) -> Vec<String> {
    dns.dig("web.lab.test", "A").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_follows_failover_and_failback_and_never_a_test_copy() {
    let mut dns = Bind9::start(&[Bind9Zone::lab_test()]).await.unwrap();
    let cl = cluster(None);
    let keys = cl.home("server").join("server/dns-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join(format!("{}.key", Bind9::KEY_NAME)),
        dns.key_file_text(),
    )
    .unwrap();
    // The same key name with another secret.
    let forged = dns.key_file_text().replace("secret \"", "secret \"AAAA");
    std::fs::write(keys.join("forged.key"), forged).unwrap();
    let http = free_tcp_port();
    let _vm = writing_guest(&cl, http).await;
    assert_eq!(web_a(&dns), ["10.1.0.5"]);

    let server = dns.address().to_string();
    let settings = |key: &str| -> Vec<String> {
        [
            "network",
            "web",
            "--failover",
            &format!("{MAC}=10.0.2.50/24"),
            "--failback",
            &format!("{MAC}=10.0.2.15/24"),
            "--dns-name",
            "web.lab.test",
            "--dns-zone",
            "lab.test",
            "--dns-server",
            &server,
            "--dns-key",
            key,
            "--dns-ttl",
            "20s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // A wrong secret: refused, nothing stored.
    let forged_args = settings("forged");
    let (ok, _, err) = cl.cli(&args(&forged_args));
    assert!(!ok && err.contains("rejected TSIG key"), "{err}");
    assert!(cl.protection()["network_settings"]["dns"].is_null());

    let good = settings(Bind9::KEY_NAME);
    let (ok, out, err) = cl.cli(&args(&good));
    assert!(ok && out.contains("DNS: web.lab.test"), "{out}{err}");

    // A test copy: the record is untouched.
    let (ok, _, err) = cl.cli(&["failover", "web", "--test"]);
    assert!(ok, "{err}");
    assert_eq!(web_a(&dns), ["10.1.0.5"]);
    let (ok, _, err) = cl.cli(&["failover", "cleanup", "web"]);
    assert!(ok, "{err}");

    // Planned failover: the record moves; the log says from what, and the old TTL.
    let (ok, _, err) = cl.cli(&["failover", "web", "--planned", "--shutdown-timeout", "5s"]);
    assert!(ok, "{err}");
    assert_eq!(web_a(&dns), ["10.0.2.50"]);
    let log = last_op(&cl, "failover-planned")["log"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        log.contains("DNS web.lab.test: 10.1.0.5 → 10.0.2.50 (TTL 20 s); clients may keep the old answer up to 30 s"),
        "{log}"
    );

    // Failback: home again.
    let (ok, _, err) = cl.cli(&["failback", "web", "--shutdown-timeout", "5s"]);
    assert!(ok, "{err}");
    assert_eq!(web_a(&dns), ["10.0.2.15"]);
    let (ok, _, err) = cl.cli(&["reprotect", "web"]);
    assert!(ok, "{err}");
    cl.wait_for("protected again", Duration::from_secs(300), |p| {
        p["state"] == "protected"
    });

    // The DNS server down: a planned failover is refused before anything changes…
    let port = dns.port();
    dns.stop();
    let (ok, _, err) = cl.cli(&["failover", "web", "--planned", "--shutdown-timeout", "5s"]);
    assert!(
        !ok && err.contains("did not answer") && err.contains("was not touched"),
        "{err}"
    );
    assert!(guest_runs(&cl.home("alpha"), "web"), "web stopped at alpha");
    assert!(!guest_runs(&cl.home("beta"), "web"), "web runs at beta");

    // …an unplanned one goes on, and says how to finish the switch by hand.
    let (ok, _, err) = cl.cli(&["failover", "web", "--unplanned"]);
    assert!(ok, "{err}");
    let log = last_op(&cl, "failover-unplanned")["log"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        log.contains("DNS switch FAILED")
            && log.contains(&format!("server 127.0.0.1 {port}"))
            && log.contains("update add web.lab.test 20 A 10.0.2.50"),
        "{log}"
    );
}
