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
//!
//!
//! In a second lab whose site A LAN is stretched to site B (one L2 segment), a planned
//! failover with no network settings: the same address answers from site B, the record
//! is untouched, and QEMU announced the moved NIC on B's segment. The guest keeps its
//! static address because its own cloud-init seed travels in its points.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{lifeboat, run_ok, Cluster, KillVm, PASSPHRASE};
use common::debian::installed_web;
use common::site::{enroll_via, site_agent};
use common::start_server;
use lifeboat_testkit::bind::{Bind9, Bind9Zone};
use lifeboat_testkit::boot_timeout;
use lifeboat_testkit::debian_guest::{ArpWatch, StaticIpv4};
use lifeboat_testkit::lab::{Lab, LabOptions, Netns, Relay, Site, BRIDGE};

const MAC: &str = "52:54:00:60:01:0a";
/// web's address in a test copy, on the recovery host's isolated network.
const TEST_ADDR: &str = "10.0.2.60";

/// What the client saw at one moment: the address that answered, or nothing.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    answered_by: Option<String>,
}

/// A client: `curl URL` in the client site, over and over, until stopped; every outcome
/// kept.
struct Client {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(lab: &Lab, url: &str) -> Client {
        let url = url.to_string();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let netns = lab.netns(Site::Client).clone();
        let (s, halt) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let out = netns
                    .command("curl")
                    .args(["-s", "-o", "/dev/null", "--max-time", "2"])
                    .args(["-w", "%{http_code} %{remote_ip}", &url])
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

/// One move as the client saw it, from the command.
struct Measured {
    what: &'static str,
    command: Duration,
    /// The guest answered at its new address (asked by address): the VM's RTO.
    vm: Duration,
    /// The client asking by name was answered by the new address.
    by_name: Duration,
    /// The TTL the record had before the move (how long a caching resolver may hold it).
    ttl: u32,
    /// From the client's last answer before the move to its first after.
    outage: Duration,
}

/// Measures a move started by `run` (returning the command's time): a second client
/// asks `to` by address, beside the client asking by name.
fn measure(
    lab: &Lab,
    client: &Client,
    what: &'static str,
    to: Ipv4Addr,
    ttl: u32,
    run: impl FnOnce() -> Duration,
) -> Measured {
    let direct = Client::start(lab, &format!("http://{to}/"));
    let t0 = Instant::now();
    let command = run();
    let vm = direct.wait_answered_by(&to.to_string(), t0, boot_timeout() * 3) - t0;
    let by_name = client.wait_answered_by(&to.to_string(), t0, boot_timeout() * 3) - t0;
    Measured {
        what,
        command,
        vm,
        by_name,
        ttl,
        outage: downtime(client, t0, &to.to_string()),
    }
}

/// The table of `--no-capture` (and of scripts/bench-client-rto).
fn print_table(rows: &[Measured], one_way: Duration) {
    println!(
        "\nclient-visible RTO (relays' one-way delay {} ms; target: VM + TTL + 2 s)",
        one_way.as_millis()
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>4}",
        "move", "command", "VM RTO", "by name", "outage", "TTL", "target", "met"
    );
    for r in rows {
        let target = r.vm + Duration::from_secs(u64::from(r.ttl) + 2);
        println!(
            "{:<44} {:>8.1}s {:>8.1}s {:>8.1}s {:>8.1}s {:>5}s {:>8.1}s {:>4}",
            r.what,
            r.command.as_secs_f64(),
            r.vm.as_secs_f64(),
            r.by_name.as_secs_f64(),
            r.outage.as_secs_f64(),
            r.ttl,
            target.as_secs_f64(),
            if r.by_name <= target { "yes" } else { "no" }
        );
    }
}

/// Everything a test stands on, dropped in order: the clients and the cluster before
/// the DNS server, its relay and the lab.
struct LabWeb {
    client: Client,
    _vm: KillVm,
    cl: Cluster,
    to_alpha: Relay,
    _to_beta: Relay,
    to_dns: Relay,
    dns: Bind9,
    one_way: Duration,
    lab: Lab,
}

/// The lab (site A's LAN stretched to site B when `stretched`), BIND in the cloud site
/// with `web.lab.test` at site A's address, the server here, agents in sites A and B,
/// and web — the Debian guest — running at site A, answering the client by name.
async fn lab_with_web(stretched: bool) -> LabWeb {
    // The WAN's delay on the server's paths (to the agents, to the DNS server), as relays
    // add it (tc netem does not work here): scripts/bench-client-rto sets 10 ms each way.
    let one_way = Duration::from_millis(
        std::env::var("LIFEBOAT_LAB_ONE_WAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let lab = Lab::start(LabOptions::default()).unwrap();
    if stretched {
        lab.stretch().unwrap();
    }
    let home_addr = Site::A.addr(10);
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
        one_way,
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
    // The key's name with a secret BIND does not know.
    let forged = dns.key_file_text().replace("secret \"", "secret \"AAAA");
    std::fs::write(keys.join("forged.key"), forged).unwrap();
    let (alpha, to_alpha) = site_agent(
        &lab,
        (Site::A, None),
        &tmp.path().join("alpha"),
        "alpha",
        &["--hypervisor", "qemu"],
        "",
        one_way,
    );
    let (beta, to_beta) = site_agent(
        &lab,
        (Site::B, None),
        &tmp.path().join("beta"),
        "beta",
        &["--hypervisor", "qemu"],
        "",
        one_way,
    );
    for (agent, relay) in [(&alpha, &to_alpha), (&beta, &to_beta)] {
        enroll_via(&server, agent, relay);
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
    let spec = installed_web(
        &home,
        &StaticIpv4 {
            mac: MAC.into(),
            id: "lan0".into(),
            rename: false,
            address: home_addr,
            prefix: 24,
            gateway: Some(Site::A.host_addr()),
            dns: vec![Site::Cloud.host_addr()],
        },
        &format!("bridge:{BRIDGE}"),
    );
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

    let client = Client::start(&lab, "http://web.lab.test/");
    let t = Instant::now();
    client.wait_answered_by(&home_addr.to_string(), t, boot_timeout() * 3);

    LabWeb {
        client,
        _vm,
        cl,
        to_alpha,
        _to_beta: to_beta,
        to_dns,
        dns,
        one_way,
        lab,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_by_name_follows_a_planned_failover_with_re_ip_and_the_failback() {
    let LabWeb {
        client,
        _vm,
        cl,
        to_alpha,
        _to_beta,
        to_dns,
        dns,
        one_way,
        lab,
    } = lab_with_web(false).await;
    let (home_addr, away_addr) = (Site::A.addr(10), Site::B.addr(10));
    let (ok, out, err) = cl.protect_web(&["--wait", "--timeout", "10m"]);
    assert!(ok, "{out}{err}");
    let dns_server = to_dns.addr().to_string();
    let failover = format!(
        "{MAC}={away_addr}/24,gw={},dns={}",
        Site::B.host_addr(),
        Site::Cloud.host_addr()
    );
    let failback = format!(
        "{MAC}={home_addr}/24,gw={},dns={}",
        Site::A.host_addr(),
        Site::Cloud.host_addr()
    );
    let settings = |failover: &str, key: &str| -> (bool, String, String) {
        cl.cli(&[
            "network",
            "web",
            "--failover",
            failover,
            "--test",
            &format!("{MAC}={TEST_ADDR}/24"),
            "--failback",
            &failback,
            "--dns-name",
            "web.lab.test",
            "--dns-zone",
            "lab.test",
            "--dns-server",
            &dns_server,
            "--dns-key",
            key,
            "--dns-ttl",
            "5s",
        ])
    };

    // Bad settings, each refused with its reason, nothing stored: an address outside
    // the subnets site B's bridge carries, and a TSIG key BIND rejects.
    let outside = format!("{MAC}=10.99.0.5/24,gw=10.99.0.1");
    for (bad, key, says) in [
        (outside.as_str(), Bind9::KEY_NAME, "outside the subnet(s)"),
        (failover.as_str(), "forged", "rejected TSIG key"),
    ] {
        let (ok, _, err) = settings(bad, key);
        assert!(!ok && err.contains(says), "{bad} {key}: {err}");
        let stored = &cl.protection()["network_settings"];
        assert!(
            stored["dns"].is_null() && stored["nics"].as_array().is_none_or(|n| n.is_empty()),
            "{stored:#}"
        );
    }
    let (ok, out, err) = settings(&failover, Bind9::KEY_NAME);
    assert!(ok, "{out}{err}");

    // A move the recovery site cannot take is refused before the source is touched: a
    // bridge site B lacks, and the DNS server out of the server's reach.
    let t_refused = Instant::now();
    let (ok, _, err) = cl.cli(&[
        "failover",
        "web",
        "--planned",
        "--network-map",
        &format!("bridge:{BRIDGE}=bridge:lbtnosuch0"),
    ]);
    assert!(
        !ok && err.contains("no network bridge:lbtnosuch0") && err.contains("was not touched"),
        "{err}"
    );
    to_dns.set_stalled(true);
    let (ok, _, err) = cl.cli(&["failover", "web", "--planned", "--shutdown-timeout", "2m"]);
    to_dns.set_stalled(false);
    assert!(
        !ok && err.contains("did not answer") && err.contains("was not touched"),
        "{err}"
    );
    assert!(common::moves::guest_runs(&cl.home("alpha"), "web"));
    assert!(!common::moves::guest_runs(&cl.home("beta"), "web"));
    assert_eq!(cl.protection()["state"], "protected");

    // A test copy: production's record and the client are untouched; the copy has its
    // test address on site B's isolated network, reached only through the port exposed
    // on the recovery host.
    let copy = cl.json(&["failover", "web", "--test", "--expose", "80"]);
    let forwards: Vec<serde_json::Value> = copy["forwards"].as_array().unwrap().clone();
    let exposed = forwards
        .iter()
        .find(|f| f["public"] == true)
        .and_then(|f| f["host_port"].as_u64())
        .unwrap_or_else(|| panic!("no exposed port: {copy}"));
    let url = format!("http://{}:{exposed}/ip", Site::B.host_addr());
    let deadline = Instant::now() + boot_timeout() * 3;
    let addresses = loop {
        let out = lab
            .command(Site::Client, "curl")
            .args(["-s", "--max-time", "2", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && !text.is_empty() {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the test copy did not answer at {url}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        addresses.contains(&format!(" {TEST_ADDR}/24"))
            && !addresses.contains(&home_addr.to_string()),
        "the test copy's addresses: {addresses}"
    );
    let console =
        std::fs::read_to_string(cl.home("beta").join("vms/web-test/console.log")).unwrap();
    assert!(
        !console.contains("Invalid cloud-config"),
        "the guest found Lifeboat's user-data invalid: {console}"
    );
    // Isolated as the test network allows: QEMU's restricted user network, no tap on any
    // bridge (so nothing reaches the copy but its exposed port).
    let copy_pid = std::fs::read_to_string(cl.home("beta").join("vms/web-test/qemu.pid"))
        .unwrap()
        .trim()
        .to_string();
    let cmdline = std::fs::read(format!("/proc/{copy_pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("-netdev user,id=net0,restrict=on,") && !cmdline.contains("tap"),
        "{cmdline}"
    );
    assert_eq!(
        dns.dig("web.lab.test", "A").unwrap(),
        [home_addr.to_string()]
    );
    // Every answer came from production, with no gap a client would call an outage (a
    // request may time out now and then: two guests share two cores under TCG).
    let seen = client.samples_since(t_refused);
    let production = home_addr.to_string();
    assert!(
        seen.iter()
            .all(|s| s.answered_by.is_none() || s.answered_by.as_deref() == Some(&production)),
        "the client was answered by another address: {seen:?}"
    );
    let answered: Vec<Instant> = seen
        .iter()
        .filter(|s| s.answered_by.is_some())
        .map(|s| s.at)
        .chain([Instant::now()])
        .collect();
    let longest_gap = answered
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(Duration::MAX);
    assert!(
        answered.len() > 1 && longest_gap < Duration::from_secs(5),
        "the client went unanswered for {longest_gap:?} while the test copy ran"
    );
    let (ok, _, err) = cl.cli(&["failover", "cleanup", "web"]);
    assert!(ok, "{err}");

    // Planned failover: the client follows the name to site B.
    let mut rows = Vec::new();
    let planned = measure(
        &lab,
        &client,
        "planned failover, re-IP + DNS",
        away_addr,
        30,
        || {
            let t = Instant::now();
            let (ok, _, err) =
                cl.cli(&["failover", "web", "--planned", "--shutdown-timeout", "2m"]);
            assert!(ok, "{err}");
            t.elapsed()
        },
    );
    assert_eq!(
        dns.dig("web.lab.test", "A").unwrap(),
        [away_addr.to_string()]
    );
    rows.push(planned);

    // Failback: the name and the guest's address are home again.
    let back = measure(
        &lab,
        &client,
        "failback, home address + DNS",
        home_addr,
        5,
        || {
            let t = Instant::now();
            let (ok, _, err) = cl.cli(&["failback", "web", "--shutdown-timeout", "2m"]);
            assert!(ok, "{err}");
            t.elapsed()
        },
    );
    assert_eq!(
        dns.dig("web.lab.test", "A").unwrap(),
        [home_addr.to_string()]
    );
    rows.push(back);
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
    let unplanned = measure(
        &lab,
        &client,
        "unplanned failover (A cut off), re-IP + DNS",
        away_addr,
        5,
        || {
            let t = Instant::now();
            let (ok, _, err) = cl.cli(&["failover", "web", "--unplanned"]);
            assert!(ok, "{err}");
            t.elapsed()
        },
    );
    rows.push(unplanned);
    assert_eq!(
        dns.dig("web.lab.test", "A").unwrap(),
        [away_addr.to_string()]
    );

    // Site A returns: its copy is fenced, and the name still points at site B.
    lab.reconnect(Site::A).unwrap();
    to_alpha.set_stalled(false);
    tokio::task::block_in_place(|| {
        common::moves::wait_fenced_row(&cl, "alpha", "web", Duration::from_secs(180))
    });
    assert_eq!(
        dns.dig("web.lab.test", "A").unwrap(),
        [away_addr.to_string()]
    );
    let t3 = Instant::now();
    client.wait_answered_by(&away_addr.to_string(), t3, Duration::from_secs(30));
    print_table(&rows, one_way);
    drop((client, _vm, cl, to_alpha, _to_beta, to_dns, dns, lab));
}
/// The client's outage in a move that keeps the address: from its last answer before
/// its first failure after `t0` to its first answer after that failure; zero if it never
/// failed, `None` while it has not been answered again.
fn outage_in_place(client: &Client, t0: Instant) -> Option<Duration> {
    let samples = client.samples_since(t0);
    let Some(failed) = samples.iter().position(|s| s.answered_by.is_none()) else {
        return Some(Duration::ZERO);
    };
    let last_ok = samples[..failed]
        .iter()
        .rev()
        .find(|s| s.answered_by.is_some())
        .map_or(t0, |s| s.at);
    let back = samples[failed..].iter().find(|s| s.answered_by.is_some())?;
    Some(back.at - last_ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_stretched_subnet_the_same_address_answers_from_site_b() {
    let LabWeb {
        client,
        _vm,
        cl,
        to_alpha,
        _to_beta,
        to_dns,
        dns,
        one_way: _,
        lab,
    } = lab_with_web(true).await;
    let home_addr = Site::A.addr(10);
    let (ok, out, err) = cl.protect_web(&["--wait", "--timeout", "10m"]);
    assert!(ok, "{out}{err}");

    // A planned failover with no network settings: web keeps its address at site B.
    let watch = ArpWatch::start(lab.netns(Site::B), BRIDGE).unwrap();
    let t0 = Instant::now();
    let (ok, _, err) = cl.cli(&["failover", "web", "--planned", "--shutdown-timeout", "2m"]);
    assert!(ok, "{err}");
    let command = t0.elapsed();
    let beta_vm = cl.home("beta").join("vms/web");
    assert!(
        common::moves::guest_runs(&cl.home("beta"), "web"),
        "web does not run at site B: {}",
        ["spec.toml", "qemu.log", "console.log"]
            .map(|f| format!(
                "--- {f}:\n{}",
                std::fs::read_to_string(beta_vm.join(f)).unwrap_or_default()
            ))
            .join("\n")
    );
    assert!(!common::moves::guest_runs(&cl.home("alpha"), "web"));
    // The client, by name, is answered by the same address, now served from site B.
    let deadline = Instant::now() + boot_timeout() * 3;
    let back = loop {
        let samples = client.samples_since(t0);
        if let Some(outage) = outage_in_place(&client, t0).filter(|o| !o.is_zero()) {
            if samples.last().and_then(|s| s.answered_by.as_deref()) == Some(&home_addr.to_string())
            {
                break outage;
            }
        }
        assert!(
            Instant::now() < deadline,
            "web did not answer again from site B: {:?}",
            samples.last()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // No DNS change, and QEMU announced the moved NIC on site B's segment at once.
    assert_eq!(
        dns.dig("web.lab.test", "A").unwrap(),
        [home_addr.to_string()]
    );
    let announced: Vec<_> = watch
        .packets()
        .into_iter()
        .filter(|p| p.is_rarp() && p.sender_mac == MAC)
        .collect();
    assert!(
        !announced.is_empty(),
        "no RARP from {MAC} on site B: {:?}",
        watch.packets()
    );
    println!(
        "planned failover on a stretched subnet: command {:.1} s, client outage {:.1} s, same address, no DNS change",
        command.as_secs_f64(),
        back.as_secs_f64()
    );
    drop((client, _vm, cl, to_alpha, _to_beta, to_dns, dns, lab));
}
