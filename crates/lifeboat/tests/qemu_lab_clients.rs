//! Clients reach a recovered server by name, in the two-site lab (docs/networking.md):
//! a real Debian 12 guest (guest/debian) serves on port 80 at site A (10.60.1.10), its
//! name `web.lab.test` served by a real BIND 9 in the lab's cloud site; a client in the
//! client site asks only for that name, with `curl` and the site's resolv.conf, a few
//! times a second. The agents run in sites A and B (QEMU driver), the server here.
//! - before any move the client's requests succeed, against site A's address;
//! - a planned failover with re-IP and the DNS switch: afterwards they succeed against
//!   site B's address (10.60.2.10), which the guest took at its first boot there; the
//!   client-visible downtime is measured and printed;
//! - a failback: the name points home again, and the guest has its home address again;
//! - protected again, site A cut off (its WAN link down, the server's path to its agent
//!   stalled): an unplanned failover, the client follows the name to site B; when site
//!   A returns its copy is fenced and the name still points at site B.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{lifeboat, run_ok, Cluster, KillVm, PASSPHRASE};
use common::site::site_agent;
use common::{enroll, start_server};
use lifeboat_testkit::bind::{Bind9, Bind9Zone};
use lifeboat_testkit::boot_timeout;
use lifeboat_testkit::debian_guest::{debian_disk_copy, NoCloudSeed, StaticIpv4};
use lifeboat_testkit::lab::{Lab, LabOptions, Netns, Relay, Site, BRIDGE};

const MAC: &str = "52:54:00:60:01:0a";

/// What the client saw at one moment: the address that answered, or nothing.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    answered_by: Option<String>,
}

/// The client: `curl http://web.lab.test/` in the client site, over and over, until
/// stopped; every outcome kept.
struct Client {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(lab: &Lab) -> Client {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let netns = lab.netns(Site::Client).clone();
        let (s, halt) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let out = netns
                    .command("curl")
                    .args(["-s", "-o", "/dev/null", "--max-time", "2"])
                    .args(["-w", "%{http_code} %{remote_ip}", "http://web.lab.test/"])
                    .output();
                let answered_by = out.ok().and_then(|o| {
                    let text = String::from_utf8_lossy(&o.stdout).to_string();
                    let (code, ip) = text.split_once(' ')?;
                    (code == "200").then(|| ip.to_string())
                });
                s.lock().unwrap().push(Sample {
                    at: Instant::now(),
                    answered_by,
                });
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Client {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    fn samples_since(&self, t: Instant) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= t)
            .cloned()
            .collect()
    }

    /// Waits until the client's requests are answered by `addr`; returns when the first
    /// one was.
    fn wait_answered_by(&self, addr: &str, since: Instant, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self
                .samples_since(since)
                .iter()
                .find(|s| s.answered_by.as_deref() == Some(addr))
            {
                return s.at;
            }
            assert!(
                Instant::now() < deadline,
                "the client was not answered by {addr} within {limit:?}; last: {:?}",
                self.samples_since(since).last()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The client-visible downtime of a move started at `t0` whose new address is `to`:
/// from the last answer before it stopped answering to the first answer by `to`.
fn downtime(client: &Client, t0: Instant, to: &str) -> Duration {
    let samples = client.samples_since(t0);
    let first_new = samples
        .iter()
        .position(|s| s.answered_by.as_deref() == Some(to))
        .expect("answered by the new address");
    let last_old = samples[..first_new]
        .iter()
        .rposition(|s| s.answered_by.is_some())
        .map_or(t0, |i| samples[i].at);
    samples[first_new].at - last_old
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_by_name_follows_a_planned_failover_with_re_ip_and_the_failback() {
    let lab = Lab::start(LabOptions::default()).unwrap();
    let (home_addr, away_addr) = (Site::A.addr(10), Site::B.addr(10));
    let dns = Bind9::start_in(
        lab.netns(Site::Cloud).clone(),
        Site::Cloud.host_addr(),
        &[Bind9Zone::new("lab.test").record(&format!("web 30 IN A {home_addr}"))],
    )
    .await
    .unwrap();
    lab.set_etc_file(
        Site::Client,
        "resolv.conf",
        &format!(
            "nameserver {}\noptions timeout:1 attempts:2\n",
            Site::Cloud.host_addr()
        ),
    )
    .unwrap();
    // The server (here) reaches the DNS server through the cloud site, over TCP.
    let to_dns = Relay::start_between(
        &Netns::host(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        lab.netns(Site::Cloud),
        dns.address(),
        Duration::ZERO,
    )
    .unwrap();

    let tmp = tempfile::Builder::new()
        .prefix("lbc")
        .tempdir_in("/tmp")
        .unwrap();
    let server = start_server(&tmp.path().join("server"), None);
    let keys = tmp.path().join("server/server/dns-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join(format!("{}.key", Bind9::KEY_NAME)),
        dns.key_file_text(),
    )
    .unwrap();
    let (alpha, to_alpha) = site_agent(
        &lab,
        (Site::A, None),
        &tmp.path().join("alpha"),
        "alpha",
        &["--hypervisor", "qemu"],
        "",
        Duration::ZERO,
    );
    let (beta, to_beta) = site_agent(
        &lab,
        (Site::B, None),
        &tmp.path().join("beta"),
        "beta",
        &["--hypervisor", "qemu"],
        "",
        Duration::ZERO,
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
    let vault = format!("file://{}", tmp.path().join("vault").display());
    std::env::set_var("LIFEBOAT_PASSPHRASE", PASSPHRASE);
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

    // web at site A on its bridge, with the address it was installed with.
    let home = cl.home("alpha");
    let disk = debian_disk_copy(&home, "web.qcow2").unwrap();
    let seed = home.join("web-install-seed.img");
    NoCloudSeed::new("web-installed", "web")
        .unwrap()
        .with_static_ipv4(&StaticIpv4 {
            mac: MAC.into(),
            id: "lan0".into(),
            rename: false,
            address: home_addr,
            prefix: 24,
            gateway: Some(Site::A.host_addr()),
            dns: vec![Site::Cloud.host_addr()],
        })
        .write_disk(&seed)
        .unwrap();
    let spec = home.join("web.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"web\"\nmemory_mib = 512\nseed = \"{}\"\n[[disks]]\nname = \"vda\"\npath = \"{}\"\n\
             format = \"qcow2\"\n[[nics]]\nmac = \"{MAC}\"\nnetwork = \"bridge:{BRIDGE}\"\n",
            seed.display(),
            disk.display(),
        ),
    )
    .unwrap();
    let program = env!("CARGO_BIN_EXE_lifeboat");
    for args in [
        vec!["vm", "define", spec.to_str().unwrap()],
        vec!["vm", "start", "web"],
    ] {
        let mut c = lab.command(Site::A, program);
        c.arg("--home")
            .arg(&home)
            .args(["--accel", "tcg"])
            .args(&args);
        run_ok(c);
    }
    let _vm = KillVm(home.clone(), "web");

    let client = Client::start(&lab);
    let t = Instant::now();
    client.wait_answered_by(&home_addr.to_string(), t, boot_timeout() * 3);

    let (ok, out, err) = cl.protect_web(&["--wait", "--timeout", "10m"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cl.cli(&[
        "network",
        "web",
        "--failover",
        &format!(
            "{MAC}={away_addr}/24,gw={},dns={}",
            Site::B.host_addr(),
            Site::Cloud.host_addr()
        ),
        "--failback",
        &format!(
            "{MAC}={home_addr}/24,gw={},dns={}",
            Site::A.host_addr(),
            Site::Cloud.host_addr()
        ),
        "--dns-name",
        "web.lab.test",
        "--dns-zone",
        "lab.test",
        "--dns-server",
        &to_dns.addr().to_string(),
        "--dns-key",
        Bind9::KEY_NAME,
        "--dns-ttl",
        "5",
    ]);
    assert!(ok, "{out}{err}");

    // Planned failover: the client follows the name to site B.
    let t0 = Instant::now();
    let (ok, _, err) = cl.cli(&["failover", "web", "--planned", "--shutdown-timeout", "2m"]);
    assert!(ok, "{err}");
    let moved = Instant::now() - t0;
    client.wait_answered_by(&away_addr.to_string(), t0, boot_timeout() * 3);
    let down = downtime(&client, t0, &away_addr.to_string());
    assert_eq!(
        dns.dig("web.lab.test", "A").unwrap(),
        [away_addr.to_string()]
    );
    println!(
        "planned failover with re-IP and DNS: command {:.1} s, client-visible downtime {:.1} s",
        moved.as_secs_f64(),
        down.as_secs_f64()
    );

    // Failback: the name and the guest's address are home again.
    let t1 = Instant::now();
    let (ok, _, err) = cl.cli(&["failback", "web", "--shutdown-timeout", "2m"]);
    assert!(ok, "{err}");
    client.wait_answered_by(&home_addr.to_string(), t1, boot_timeout() * 3);
    let down = downtime(&client, t1, &home_addr.to_string());
    assert_eq!(
        dns.dig("web.lab.test", "A").unwrap(),
        [home_addr.to_string()]
    );
    println!(
        "failback with re-IP and DNS: client-visible downtime {:.1} s",
        down.as_secs_f64()
    );
    // Nothing answers at site B's address any more.
    let after = client.samples_since(Instant::now() - Duration::from_secs(2));
    assert!(after
        .iter()
        .all(|s| s.answered_by.as_deref() != Some(&away_addr.to_string())));

    // Protected from home again, then site A is cut off: an unplanned failover, and the
    // client follows the name to site B.
    let (ok, _, err) = cl.cli(&["reprotect", "web"]);
    assert!(ok, "{err}");
    let since = chrono::Utc::now();
    tokio::task::block_in_place(|| {
        common::moves::wait_point_after(&cl, "web", since, Duration::from_secs(300))
    });
    lab.cut_off(Site::A).unwrap();
    to_alpha.set_stalled(true);
    let t2 = Instant::now();
    let (ok, _, err) = cl.cli(&["failover", "web", "--unplanned"]);
    assert!(ok, "{err}");
    client.wait_answered_by(&away_addr.to_string(), t2, boot_timeout() * 3);
    println!(
        "unplanned failover (site A cut off) with re-IP and DNS: client-visible downtime {:.1} s",
        (Instant::now() - t2).as_secs_f64()
    );
    assert_eq!(dns.dig("web.lab.test", "A").unwrap(), [away_addr.to_string()]);

    // Site A returns: its copy is fenced, and the name still points at site B.
    lab.reconnect(Site::A).unwrap();
    to_alpha.set_stalled(false);
    tokio::task::block_in_place(|| {
        common::moves::wait_fenced_row(&cl, "alpha", "web", Duration::from_secs(180))
    });
    assert_eq!(dns.dig("web.lab.test", "A").unwrap(), [away_addr.to_string()]);
    let t3 = Instant::now();
    client.wait_answered_by(&away_addr.to_string(), t3, Duration::from_secs(30));
    drop(client);
    drop(to_dns);
    drop(dns);
    drop(cl);
    drop(lab);
}
