//! A planned failover across the two-site lab's WAN: the source host's agent runs in
//! site A's network namespace (its VM a libvirt domain, defined with `virsh`), the
//! recovery host's agent in site B's (the QEMU driver), the vault is S3 in the cloud
//! behind the WAN (100 Mbit/s, 20 ms round trip added by a relay), and the server
//! reaches each agent through a relay with the same delay. With the guest writing until
//! the power button stops it, every write it acknowledged is at B.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cluster::{lifeboat, run_ok, Cluster, PASSPHRASE};
use common::libvirt::{
    assert_fenced_domain, diverge_and_fail_over_unplanned, planned_failover_with_writes,
    SourceDomain,
};
use common::{enroll, spawn_agent, start_server, Agent};
use lifeboat_testkit::lab::{Lab, LabOptions, Netns, Relay, Site};
use lifeboat_testkit::libvirtd::virsh;
use lifeboat_testkit::S3Server;

const ONE_WAY: Duration = Duration::from_millis(10);

/// `lifeboat agent` inside `site`, reaching the vault at `endpoint`; and the relay the
/// server (in the host's namespace) reaches it through.
fn site_agent(
    lab: &Lab,
    site: Site,
    home: &Path,
    name: &str,
    options: &[&str],
    endpoint: &str,
) -> (Agent, Relay) {
    let mut c: Command = lab.command(site, env!("CARGO_BIN_EXE_lifeboat"));
    c.arg("--home")
        .arg(home)
        .args(["--accel", "tcg", "agent", "--listen"])
        .arg(format!("{}:0", site.host_addr()))
        .args(["--hostname", name])
        .args(options)
        .env("AWS_ENDPOINT_URL", endpoint);
    let agent = spawn_agent(c);
    let relay = Relay::start_between(
        &Netns::host(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        lab.netns(site),
        SocketAddr::from((site.host_addr(), agent.port)),
        ONE_WAY,
    )
    .unwrap();
    (agent, relay)
}

/// Everything a WAN test stands on; dropped in order (cluster, relays, then the lab).
struct WanLab {
    cl: Cluster,
    source: SourceDomain,
    to_alpha: Relay,
    _to_beta: Relay,
    vault_relay: Relay,
    _s3: S3Server,
    lab: Lab,
}

/// The lab at 100 Mbit/s, the S3 vault in the cloud behind a 10 ms relay, the server
/// here, agent alpha (libvirt) in site A and beta (QEMU) in site B behind relays, and a
/// libvirt domain protected to beta.
async fn wan_lab(prefix: &str) -> WanLab {
    let lab = Lab::start(LabOptions {
        wan_rate: Some(100_000_000),
    })
    .unwrap();
    let s3 = S3Server::start().await.unwrap();
    // The server and the CLI (this namespace) reach the bucket directly; the agents
    // through the cloud, across the WAN.
    std::env::set_var("AWS_ACCESS_KEY_ID", &s3.access_key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
    std::env::set_var("AWS_ENDPOINT_URL", &s3.endpoint);
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("LIFEBOAT_PASSPHRASE", PASSPHRASE);
    let s3_addr: SocketAddr = s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let vault_relay = Relay::start_between(
        lab.netns(Site::Cloud),
        SocketAddr::from((Site::Cloud.host_addr(), 0)),
        &Netns::host(),
        s3_addr,
        ONE_WAY,
    )
    .unwrap();
    let cloud_endpoint = format!("http://{}", vault_relay.addr());

    let source = SourceDomain::start(prefix, false).await;
    let name = source.name.clone();
    let tmp = tempfile::Builder::new()
        .prefix("lbl")
        .tempdir_in("/tmp")
        .unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    let (alpha, to_alpha) = site_agent(
        &lab,
        Site::A,
        &tmp.path().join("alpha"),
        "alpha",
        &["--hypervisor", "libvirt"],
        &cloud_endpoint,
    );
    let (beta, to_beta) = site_agent(
        &lab,
        Site::B,
        &tmp.path().join("beta"),
        "beta",
        &["--hypervisor", "qemu"],
        &cloud_endpoint,
    );
    for (agent, relay) in [(&alpha, &to_alpha), (&beta, &to_beta)] {
        let (ok, _, err) = enroll(
            &server,
            Some(&server.token),
            &relay.addr().to_string(),
            agent.code.as_deref().unwrap(),
            Some(&agent.fingerprint),
        );
        assert!(ok, "{err}");
    }
    let vault = format!("s3://{}/vault", s3.bucket);
    let mut c = lifeboat(tmp.path());
    c.args(["vault", "--vault", &vault, "init"]);
    run_ok(c);
    let cl = Cluster {
        tmp,
        server,
        alpha,
        beta,
        vault,
    };
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cl.protect(&name, &["--wait", "--timeout", "10m"]);
        assert!(ok, "{out}\n{err}");
    });
    let crossed = vault_relay.stats();
    assert!(
        crossed.bytes_up > 1 << 20,
        "the initial sync crossed the WAN to the cloud: {crossed:?}"
    );

    WanLab {
        cl,
        source,
        to_alpha,
        _to_beta: to_beta,
        vault_relay,
        _s3: s3,
        lab,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_across_the_wan_loses_no_acknowledged_write() {
    // Every field bound: one left to `..` would be dropped here, the lab with it.
    let WanLab {
        cl,
        source,
        to_alpha: _to_alpha,
        _to_beta,
        vault_relay,
        _s3,
        lab: _lab,
    } = wan_lab("lvw").await;
    let moved = planned_failover_with_writes(
        &cl,
        source.console,
        &source.name,
        &source.console_log,
        &source.bridge.0,
    )
    .await;
    let after = vault_relay.stats();
    eprintln!(
        "planned failover across the WAN (100 Mbit/s, 20 ms): {} acknowledged writes all at B; \
         command took {:?}, guest ready at B after {:?}; vault traffic over the WAN: \
         {} bytes up, {} down",
        moved.acked, moved.took, moved.ready_after, after.bytes_up, after.bytes_down
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_a_cut_off_fails_over_unplanned_and_is_fenced_when_it_returns() {
    let WanLab {
        cl,
        source,
        to_alpha,
        _to_beta,
        vault_relay: _vault_relay,
        _s3,
        lab,
    } = wan_lab("lvc").await;
    let name = source.name.clone();
    let mut console = source.console;
    let out = console
        .run(
            "echo kept > /data/round && sync && echo ok",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(out.contains("ok"), "{out}");
    let written = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::task::block_in_place(|| {
        common::libvirt::wait_point_after(&cl, &name, &written, Duration::from_secs(300))
    });

    // Site A is cut off: its WAN link down and the server's path to its agent stalled.
    // Its host and the domain run on, and write on.
    lab.cut_off(Site::A).unwrap();
    to_alpha.set_stalled(true);
    let _beta_vm =
        diverge_and_fail_over_unplanned(&cl, &mut console, &name, &source.bridge.0).await;
    assert_eq!(
        virsh(&["domstate", &name]).unwrap().trim(),
        "running",
        "cut off, A's domain still runs: two copies until A is reachable"
    );

    // A's link returns: the server reaches its agent again and fences the domain.
    lab.reconnect(Site::A).unwrap();
    to_alpha.set_stalled(false);
    tokio::task::block_in_place(|| assert_fenced_domain(&name, Duration::from_secs(180)));
    let p = tokio::task::block_in_place(|| cl.protection());
    assert_eq!(p["state"], "failed_over", "{p}");
    // B's VM runs on.
    assert!(common::moves::vm_row(&cl, "beta", &name).is_some());
}
