//! Moves across the two-site lab's WAN: the source host's agent runs in site A's network
//! namespace (its VM a libvirt domain, defined with `virsh`), the recovery host's agent
//! in site B's, the vault is S3 in the cloud behind the WAN (100 Mbit/s, 20 ms round trip
//! added by a relay), and the server reaches each agent through a relay with the same
//! delay. Two layouts:
//! - the machine's libvirtd for A's domain (on a bridge of the machine's), the QEMU
//!   driver at B: a planned failover with the guest writing until the power button
//!   stops it (every acknowledged write at B), and site A cut off (unplanned, then
//!   fenced when it returns);
//! - a libvirtd of each site's own, in its namespace, the domain on site A's bridge: a
//!   planned failover defines it at B under the same name, UUID and MAC on B's bridge
//!   (its NIC announced there: RARP from its MAC),
//!   then commit, failback home and reprotect without a full copy.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::{lifeboat, run_ok, Cluster, PASSPHRASE};
use common::libvirt::{
    assert_fenced_domain, diverge_and_fail_over_unplanned, planned_failover_with_writes,
    reprotect_reads_only_the_changes, write_at_b_commit_and_fail_back, Beta, SourceDomain,
};
use common::site::{enroll_via, site_agent};
use common::start_server;
use lifeboat_testkit::debian_guest::ArpWatch;
use lifeboat_testkit::lab::{Lab, LabOptions, Netns, Relay, Site, BRIDGE};
use lifeboat_testkit::libvirtd::SiteDaemon;
use lifeboat_testkit::S3Server;

const ONE_WAY: Duration = Duration::from_millis(10);

/// Where the lab's hypervisors run.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// A's domain on the machine's libvirtd and a bridge of the machine's; B runs the
    /// QEMU driver.
    MachineLibvirtToQemu,
    /// A libvirtd in each site; the domain on site A's bridge.
    LibvirtInEachSite,
}

/// Everything a WAN test stands on; dropped in order (cluster, the domain, the sites'
/// daemons, relays, then the lab).
struct WanLab {
    cl: Cluster,
    source: SourceDomain,
    /// Site A's and site B's libvirtd, in [`Layout::LibvirtInEachSite`].
    daemons: Option<(SiteDaemon, SiteDaemon)>,
    to_alpha: Relay,
    _to_beta: Relay,
    vault_relay: Relay,
    _s3: S3Server,
    lab: Lab,
}

/// The lab at 100 Mbit/s, the S3 vault in the cloud behind a 10 ms relay, the server
/// here, agent alpha (libvirt) in site A and beta in site B behind relays, and a
/// libvirt domain protected to beta.
async fn wan_lab(prefix: &str, layout: Layout) -> WanLab {
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

    let daemons = (layout == Layout::LibvirtInEachSite).then(|| {
        (
            SiteDaemon::start(lab.netns(Site::A)).unwrap(),
            SiteDaemon::start(lab.netns(Site::B)).unwrap(),
        )
    });
    let source = match &daemons {
        Some((a, _)) => SourceDomain::start_on(a.daemon(), prefix, BRIDGE).await,
        None => SourceDomain::start(prefix, false).await,
    };
    let name = source.name.clone();
    let tmp = tempfile::Builder::new()
        .prefix("lbl")
        .tempdir_in("/tmp")
        .unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    let (alpha, to_alpha) = site_agent(
        &lab,
        (Site::A, daemons.as_ref().map(|d| &d.0)),
        &tmp.path().join("alpha"),
        "alpha",
        &["--hypervisor", "libvirt"],
        &cloud_endpoint,
        ONE_WAY,
    );
    let beta_hypervisor = match layout {
        Layout::MachineLibvirtToQemu => "qemu",
        Layout::LibvirtInEachSite => "libvirt",
    };
    let (beta, to_beta) = site_agent(
        &lab,
        (Site::B, daemons.as_ref().map(|d| &d.1)),
        &tmp.path().join("beta"),
        "beta",
        &["--hypervisor", beta_hypervisor],
        &cloud_endpoint,
        ONE_WAY,
    );
    for (agent, relay) in [(&alpha, &to_alpha), (&beta, &to_beta)] {
        enroll_via(&server, agent, relay);
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
        daemons,
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
        daemons: _,
        to_alpha: _to_alpha,
        _to_beta,
        vault_relay,
        _s3,
        lab: _lab,
    } = wan_lab("lvw", Layout::MachineLibvirtToQemu).await;
    let map = format!("{}=isolated", source.bridge);
    let moved = planned_failover_with_writes(
        &cl,
        source.console,
        (&source.name, &source.console_log, &source.daemon),
        &map,
        &Beta::Qemu,
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
        daemons,
        to_alpha,
        _to_beta,
        vault_relay: _vault_relay,
        _s3,
        lab,
    } = wan_lab("lvc", Layout::LibvirtInEachSite).await;
    let (site_a, site_b) = daemons.as_ref().unwrap();
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
    let beta = Beta::Libvirt(site_b.daemon());
    let map = format!("{BRIDGE}=bridge:{BRIDGE}");
    diverge_and_fail_over_unplanned(&cl, &mut console, &name, &map, &beta).await;
    assert_eq!(
        site_a.virsh(&["domstate", &name]).unwrap().trim(),
        "running",
        "cut off, A's domain still runs: two copies until A is reachable"
    );

    // A's link returns: the server reaches its agent again and fences the domain.
    lab.reconnect(Site::A).unwrap();
    to_alpha.set_stalled(false);
    tokio::task::block_in_place(|| {
        assert_fenced_domain(&source.daemon, &name, Duration::from_secs(180))
    });
    let p = tokio::task::block_in_place(|| cl.protection());
    assert_eq!(p["state"], "failed_over", "{p}");
    // B's VM runs on, on B's libvirtd.
    assert!(common::moves::vm_row(&cl, "beta", &name).is_some());
    assert_eq!(
        site_b.virsh(&["domstate", &name]).unwrap().trim(),
        "running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_fails_over_to_a_libvirt_site_and_comes_home_across_the_wan() {
    let WanLab {
        cl,
        source,
        daemons,
        to_alpha: _to_alpha,
        _to_beta,
        vault_relay,
        _s3,
        lab,
    } = wan_lab("lvs", Layout::LibvirtInEachSite).await;
    let (site_a, site_b) = daemons.as_ref().unwrap();
    let (a, b) = (site_a.daemon(), site_b.daemon());
    let name = source.name.clone();
    let uuid = a.virsh(&["domuuid", &name]).unwrap();

    // Planned: B's libvirtd defines the domain under its own name and UUID, with its MAC,
    // on B's bridge (mapped br0=br0, a bare bridge name); A's is fenced.
    let beta = Beta::Libvirt(b);
    let map = format!("{BRIDGE}={BRIDGE}");
    let a_xml = a.virsh(&["dumpxml", &name]).unwrap();
    let mac = a_xml
        .split("<mac address='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no MAC in {a_xml}"))
        .to_string();
    // Everything B's segment carries from now on: the moved NIC is announced there.
    let watch = ArpWatch::start(lab.netns(Site::B), BRIDGE).unwrap();
    let moved = planned_failover_with_writes(
        &cl,
        source.console,
        (&name, &source.console_log, a),
        &map,
        &beta,
    )
    .await;
    assert_eq!(
        b.virsh(&["domuuid", &name]).unwrap(),
        uuid,
        "same UUID at B"
    );
    let xml = b.virsh(&["dumpxml", &name]).unwrap();
    assert!(
        xml.contains(&format!("<source bridge='{BRIDGE}'/>")),
        "{xml}"
    );
    let nics = lab
        .ip(Site::B, &["-o", "link", "show", "master", BRIDGE])
        .unwrap();
    assert!(
        nics.contains("vnet"),
        "the domain's NIC is on B's bridge: {nics}"
    );
    assert!(
        watch
            .packets()
            .iter()
            .any(|p| p.is_rarp() && p.sender_mac.eq_ignore_ascii_case(&mac)),
        "no RARP from {mac} on B's bridge: {:?}",
        watch.packets()
    );
    eprintln!(
        "planned failover libvirt to libvirt across the WAN: {} acknowledged writes all at B; \
         command took {:?}, guest ready at B after {:?}",
        moved.acked, moved.took, moved.ready_after
    );

    // B's guest writes; commit; fail back home across the WAN.
    let before_back = vault_relay.stats();
    write_at_b_commit_and_fail_back(&cl, &beta.serial(&cl, &name), &name, a).await;
    assert_ne!(
        b.virsh(&["domstate", &name]).unwrap_or_default().trim(),
        "running",
        "B's copy no longer runs"
    );
    let mut home = common::libvirt::ready_console(&source.serial).await;
    let files = home
        .run(
            "cat /data/away; ls /data/seq | wc -l",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(files.starts_with("away"), "B's write came home: {files}");
    drop(home);

    // Reprotect from home: only what changed since the failback crosses the WAN.
    let first = tokio::task::block_in_place(|| reprotect_reads_only_the_changes(&cl, &name));
    let crossed = vault_relay.stats();
    eprintln!(
        "failback and reprotect across the WAN: the first sync read {} bytes; \
         vault traffic since the commit: {} bytes up, {} down",
        first["bytes_read"],
        crossed.bytes_up - before_back.bytes_up,
        crossed.bytes_down - before_back.bytes_down
    );
}
