//! The two-site lab: isolation and routing, the WAN rate, the delay relay, cutting a
//! site off, and cleanup. Needs root and iproute2, like every test that uses the lab.
//! Run with `--nocapture` to see the measured rates and round trips.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lifeboat_testkit::lab::{cleanup_stale_labs, Lab, LabError, LabOptions, Netns, Relay, Site};

const CONNECT: Duration = Duration::from_secs(2);

fn start_lab() -> Lab {
    Lab::start(LabOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Polls `f` until it gives a value, failing the test after `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP echo server in a site, as a separate process (python3 from Debian), killed on
/// drop. It prints its port once it listens: that line is the readiness signal.
struct EchoProcess {
    child: Child,
    port: u16,
}

const ECHO_PY: &str = r#"
import socket, threading
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

impl EchoProcess {
    fn start(lab: &Lab, site: Site) -> EchoProcess {
        let python = if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let mut child = lab
            .command(site, python)
            .args(["-c", ECHO_PY])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 in the site (apt install python3)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the echo server prints its port within 20 s");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("echo server printed {line:?}, not a port"));
        EchoProcess { child, port }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a message and reads it back.
fn echo_once(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(message)?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back)?;
    assert_eq!(back, message, "the echo came back changed");
    Ok(())
}

fn connect_and_echo(ns: &Netns, addr: SocketAddr) -> io::Result<()> {
    let mut stream = ns.tcp_connect(addr, CONNECT)?;
    echo_once(&mut stream, b"hello across the lab")
}

#[test]
fn a_server_in_site_b_is_reachable_in_the_lab_and_not_from_the_host() {
    let lab = start_lab();
    let echo = EchoProcess::start(&lab, Site::B);
    let addr = sock(Site::B.host_addr(), echo.port);
    for from in [Site::Client, Site::A, Site::Cloud] {
        connect_and_echo(lab.netns(from), addr)
            .unwrap_or_else(|e| panic!("from {from:?} to site B's echo: {e}"));
    }
    // The process really is in B's namespace, not the host's.
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(ns_of(&echo.child.id().to_string()), ns_of("self"));
    let from_host = connect_and_echo(&Netns::host(), addr);
    assert!(
        from_host.is_err(),
        "site B's {addr} must not be reachable from the host's namespace"
    );
}

#[test]
fn etc_files_reach_programs_started_in_the_site() {
    let lab = start_lab();
    lab.set_etc_file(Site::A, "resolv.conf", "nameserver 10.60.4.1\n")
        .unwrap();
    let out = lab
        .command(Site::A, "cat")
        .arg("/etc/resolv.conf")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "nameserver 10.60.4.1\n"
    );
    let out = lab
        .command(Site::B, "cat")
        .arg("/etc/resolv.conf")
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "nameserver 10.60.4.1\n"
    );
}

/// Moves `bytes` from site A to a receiver in site B; the time until B has read all of
/// it (B confirms the count after the sender's EOF).
fn transfer_a_to_b(lab: &Lab, bytes: usize) -> Duration {
    let listener = lab
        .netns(Site::B)
        .tcp_listen(sock(Ipv4Addr::UNSPECIFIED, 0))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let n = io::copy(&mut s, &mut io::sink()).unwrap();
        s.write_all(&n.to_le_bytes()).unwrap();
    });
    let mut s = lab
        .netns(Site::A)
        .tcp_connect(sock(Site::B.host_addr(), port), CONNECT)
        .unwrap();
    let data = vec![0x5au8; bytes];
    let start = Instant::now();
    s.write_all(&data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count).unwrap();
    let elapsed = start.elapsed();
    receiver.join().unwrap();
    assert_eq!(u64::from_le_bytes(count), bytes as u64);
    elapsed
}

#[test]
fn the_wan_rate_limits_transfers_between_sites_and_changes_at_run_time() {
    const MB4: usize = 4_000_000;
    let lab = start_lab();
    let free = transfer_a_to_b(&lab, MB4);
    lab.set_wan_rate(Some(8_000_000)).unwrap();
    let at_8 = transfer_a_to_b(&lab, MB4);
    lab.set_wan_rate(Some(32_000_000)).unwrap();
    let at_32 = transfer_a_to_b(&lab, MB4);
    lab.set_wan_rate(None).unwrap();
    let free_again = transfer_a_to_b(&lab, MB4);
    println!(
        "4 MB from A to B: unshaped {free:?}, 8 Mbit/s {at_8:?}, 32 Mbit/s {at_32:?}, \
         unshaped again {free_again:?}"
    );
    // 4 MB at 1 MB/s is 4 s; the burst lets a little through early.
    assert!(
        at_8 >= Duration::from_millis(3500),
        "8 Mbit/s took {at_8:?}"
    );
    assert!(at_8 < Duration::from_secs(8), "8 Mbit/s took {at_8:?}");
    assert!(
        at_32 >= Duration::from_millis(850) && at_32 < Duration::from_millis(2500),
        "32 Mbit/s took {at_32:?}"
    );
    assert!(free < Duration::from_secs(1), "unshaped took {free:?}");
    assert!(
        free_again < Duration::from_secs(1),
        "unshaped again took {free_again:?}"
    );
}

/// An echo server as a thread of the test, in `site`, that reports when each message
/// arrived and when its echo left, to measure each direction on its own.
fn stamping_echo(lab: &Lab, site: Site) -> (SocketAddr, mpsc::Receiver<(Instant, Instant)>) {
    let listener = lab
        .netns(site)
        .tcp_listen(sock(Ipv4Addr::UNSPECIFIED, 0))
        .unwrap();
    let addr = sock(site.host_addr(), listener.local_addr().unwrap().port());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                stream.set_nodelay(true).unwrap();
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let arrived = Instant::now();
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    let _ = tx.send((arrived, Instant::now()));
                }
            });
        }
    });
    (addr, rx)
}

/// One one-byte round trip: (time to the server, time back from it, total).
fn timed_round_trip(
    stream: &mut TcpStream,
    stamps: &mpsc::Receiver<(Instant, Instant)>,
) -> (Duration, Duration, Duration) {
    let sent = Instant::now();
    stream.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).unwrap();
    let back = Instant::now();
    // Skip stamps of earlier, bigger exchanges that came in late.
    let (arrived, replied) = loop {
        let (arrived, replied) = stamps.recv_timeout(Duration::from_secs(5)).unwrap();
        if arrived >= sent {
            break (arrived, replied);
        }
    };
    (arrived - sent, back - replied, back - sent)
}

#[test]
fn a_relay_delays_every_byte_each_way_and_keeps_order() {
    let lab = start_lab();
    let (server, stamps) = stamping_echo(&lab, Site::B);
    let client = lab.netns(Site::Client);

    let mut direct = client.tcp_connect(server, CONNECT).unwrap();
    direct.set_nodelay(true).unwrap();
    // Bounds a busy 2-core machine (QEMU guests beside) keeps: the delay is large enough
    // that "delayed" (at least 2 x 100 ms) and "not delayed" (under 150 ms) never meet.
    let (_, _, rtt) = timed_round_trip(&mut direct, &stamps);
    assert!(
        rtt < Duration::from_millis(150),
        "direct round trip {rtt:?}"
    );

    let delay = Duration::from_millis(100);
    let relay = Relay::start(client, sock(Site::Client.host_addr(), 0), server, delay).unwrap();
    let mut relayed = client.tcp_connect(relay.addr(), CONNECT).unwrap();
    relayed.set_nodelay(true).unwrap();
    // Several round trips on one connection: the data is delayed, not only the connect.
    for i in 0..5 {
        let (there, back, rtt) = timed_round_trip(&mut relayed, &stamps);
        println!("relay 100 ms: round trip {i}: there {there:?}, back {back:?}, total {rtt:?}");
        assert!(there >= delay, "to the server took {there:?}");
        assert!(back >= delay, "back from the server took {back:?}");
        assert!(rtt >= 2 * delay && rtt < Duration::from_secs(2), "{rtt:?}");
    }

    // Full duplex and in order: 2 MB written while its echo is read back.
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut writer = relayed.try_clone().unwrap();
    let sending = payload.clone();
    let start = Instant::now();
    let sender = std::thread::spawn(move || writer.write_all(&sending).unwrap());
    let mut echoed = vec![0u8; payload.len()];
    relayed.read_exact(&mut echoed).unwrap();
    sender.join().unwrap();
    assert!(echoed == payload, "the relay changed or reordered bytes");
    assert!(start.elapsed() >= 2 * delay);
    while stamps.try_recv().is_ok() {}

    // The delay can change while the connection is open.
    relay.set_delay(Duration::ZERO);
    let (_, _, rtt) = timed_round_trip(&mut relayed, &stamps);
    assert!(
        rtt < Duration::from_millis(150),
        "after set_delay(0): {rtt:?}"
    );
    while stamps.try_recv().is_ok() {}

    // Stalled: nothing arrives, nothing fails; unstalled: it goes on.
    relay.set_stalled(true);
    relayed.write_all(b"s").unwrap();
    relayed
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let err = relayed.read_exact(&mut b).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    relay.set_stalled(false);
    relayed
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    relayed.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"s");

    // Reset: the open connection breaks.
    relay.reset_connections();
    let broken = relayed
        .write_all(b"r")
        .and_then(|_| relayed.read_exact(&mut b));
    assert!(broken.is_err(), "the connection survived a reset");
    assert!(relay.stats().connections >= 1);
}

#[test]
fn a_relay_models_loss_as_head_of_line_stalls() {
    let lab = start_lab();
    let (server, stamps) = stamping_echo(&lab, Site::B);
    let client = lab.netns(Site::Client);
    let relay = Relay::start(client, sock(Ipv4Addr::LOCALHOST, 0), server, Duration::ZERO).unwrap();
    let mut s = client.tcp_connect(relay.addr(), CONNECT).unwrap();
    s.set_nodelay(true).unwrap();
    // A penalty large enough that a busy machine's scheduling never blurs the two cases.
    relay.set_loss(1.0, Duration::from_millis(200));
    let (there, _, _) = timed_round_trip(&mut s, &stamps);
    assert!(
        there >= Duration::from_millis(200),
        "a lost chunk came in {there:?}"
    );
    relay.set_loss(0.0, Duration::ZERO);
    let (there, _, _) = timed_round_trip(&mut s, &stamps);
    assert!(
        there < Duration::from_millis(150),
        "without loss: {there:?}"
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn relay_overhead() {
    let lab = start_lab();
    let (server, stamps) = stamping_echo(&lab, Site::B);
    let client = lab.netns(Site::Client);
    let relay = Relay::start(client, sock(Ipv4Addr::LOCALHOST, 0), server, Duration::ZERO).unwrap();
    let rtts = |addr: SocketAddr| {
        let mut s = client.tcp_connect(addr, CONNECT).unwrap();
        s.set_nodelay(true).unwrap();
        let samples: Vec<Duration> = (0..300)
            .map(|_| timed_round_trip(&mut s, &stamps).2)
            .collect();
        median(samples)
    };
    let direct = rtts(server);
    let relayed = rtts(relay.addr());
    let throughput = |addr: SocketAddr| {
        let mut s = client.tcp_connect(addr, CONNECT).unwrap();
        let mut reader = s.try_clone().unwrap();
        let bytes = 32usize << 20;
        let start = Instant::now();
        let sender = std::thread::spawn(move || {
            let chunk = vec![1u8; 1 << 16];
            for _ in 0..bytes / chunk.len() {
                s.write_all(&chunk).unwrap();
            }
        });
        let mut left = bytes;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            left -= reader.read(&mut buf).unwrap();
        }
        sender.join().unwrap();
        bytes as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let direct_mbs = throughput(server);
    let relayed_mbs = throughput(relay.addr());
    println!(
        "relay overhead: median round trip direct {direct:?}, through a 0-delay relay \
         {relayed:?} (+{:?}); echo throughput direct {direct_mbs:.0} MB/s, relayed \
         {relayed_mbs:.0} MB/s",
        relayed.saturating_sub(direct)
    );
    // Medians of many round trips; a margin a busy 2-core machine keeps.
    assert!(
        relayed < direct + Duration::from_millis(15),
        "the relay adds {:?} per round trip",
        relayed.saturating_sub(direct)
    );
}

#[test]
fn a_site_cut_off_is_unreachable_but_keeps_running_and_comes_back() {
    let lab = start_lab();
    let mut echo = EchoProcess::start(&lab, Site::A);
    let addr = sock(Site::A.host_addr(), echo.port);
    let (b_server, _stamps) = stamping_echo(&lab, Site::B);
    connect_and_echo(lab.netns(Site::B), addr).expect("B reaches A before the cut");
    connect_and_echo(lab.netns(Site::A), b_server).expect("A reaches B before the cut");
    // A connection opened before the cut, to use after the reconnect.
    let mut open = lab.netns(Site::B).tcp_connect(addr, CONNECT).unwrap();

    lab.cut_off(Site::A).unwrap();
    assert!(lab.is_cut_off(Site::A));
    let start = Instant::now();
    let from_b = connect_and_echo(lab.netns(Site::B), addr);
    assert!(from_b.is_err(), "B reached A while A was cut off");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    println!(
        "B to cut-off A failed after {:?}: {}",
        start.elapsed(),
        from_b.unwrap_err()
    );
    let out_of_a = connect_and_echo(lab.netns(Site::A), b_server);
    assert!(out_of_a.is_err(), "A reached B while cut off");
    // Inside A all is well: the process runs and answers on A's own address.
    assert!(echo.is_running(), "the process in site A died");
    connect_and_echo(lab.netns(Site::A), addr).expect("A reaches itself while cut off");
    // The client and B still reach each other.
    connect_and_echo(lab.netns(Site::Client), b_server).expect("client reaches B");

    lab.reconnect(Site::A).unwrap();
    assert!(!lab.is_cut_off(Site::A));
    wait_until("B to reach A again", Duration::from_secs(5), || {
        connect_and_echo(lab.netns(Site::B), addr).ok()
    });
    echo_once(&mut open, b"still open").expect("a connection from before the cut works");
    assert!(echo.is_running());
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host_interfaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

#[test]
fn dropping_the_lab_removes_namespaces_interfaces_and_processes() {
    let before = host_interfaces();
    let start = Instant::now();
    let lab = start_lab();
    println!("Lab::start took {:?}", start.elapsed());
    let names = lab.namespace_names();
    assert_eq!(names.len(), 5);
    let listed = netns_list();
    for name in &names {
        assert!(listed.contains(name.as_str()), "{name} not in {listed}");
    }
    lab.add_tap(Site::A, "vm1").unwrap();
    lab.add_bridge(Site::B, "br1", Some((Ipv4Addr::new(10, 62, 2, 1), 24)))
        .unwrap();
    let on_bridge = lab
        .ip(Site::A, &["-o", "link", "show", "master", "br0"])
        .unwrap();
    assert!(on_bridge.contains("vm1"), "{on_bridge}");
    lab.set_wan_rate(Some(100_000_000)).unwrap();
    lab.set_etc_file(Site::A, "hosts", "10.60.2.1 site-b\n")
        .unwrap();
    let mut sleeper = lab.command(Site::A, "sleep").arg("600").spawn().unwrap();
    let etc_dirs: Vec<_> = names
        .iter()
        .map(|n| std::path::PathBuf::from("/etc/netns").join(n))
        .collect();
    assert!(etc_dirs.iter().any(|d| d.exists()));

    let start = Instant::now();
    drop(lab);
    println!("dropping the lab took {:?}", start.elapsed());

    let listed = netns_list();
    for name in &names {
        assert!(!listed.contains(name.as_str()), "{name} left in {listed}");
    }
    assert!(
        etc_dirs.iter().all(|d| !d.exists()),
        "/etc/netns left behind"
    );
    let status = wait_until(
        "the process in the lab to die",
        Duration::from_secs(5),
        || sleeper.try_wait().unwrap(),
    );
    assert!(!status.success(), "sleep 600 ended by itself?");
    let new: Vec<_> = host_interfaces()
        .into_iter()
        .filter(|i| !before.contains(i))
        .collect();
    assert!(new.is_empty(), "interfaces left in the host: {new:?}");
}

#[test]
fn a_panicking_test_still_removes_its_lab() {
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = start_lab();
        names = lab.namespace_names();
        panic!("a test fails while its lab runs");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 5);
    let listed = netns_list();
    for name in &names {
        assert!(!listed.contains(name.as_str()), "{name} left in {listed}");
    }
}

#[test]
fn namespaces_of_dead_labs_are_swept() {
    // A PID that ran and is gone (reaped here).
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let name = format!("lblab-{pid}-dead0-a");
    let made = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(made.success());
    assert!(netns_list().contains(&name));
    // Another lab test starting at the same time may sweep it first: check the result.
    let _ = cleanup_stale_labs().unwrap();
    assert!(!netns_list().contains(&name), "{name} was not swept");
    // A live lab is never swept.
    let lab = start_lab();
    cleanup_stale_labs().unwrap();
    assert!(netns_list().contains(&lab.namespace_names()[0]));
}

#[test]
fn bad_arguments_are_refused() {
    let lab = start_lab();
    assert!(matches!(
        lab.add_tap(Site::A, "a-name-longer-than-15"),
        Err(LabError::Invalid { .. })
    ));
    assert!(matches!(
        lab.set_wan_rate(Some(0)),
        Err(LabError::Invalid { .. })
    ));
    assert!(matches!(
        lab.set_etc_file(Site::A, "../passwd", ""),
        Err(LabError::Invalid { .. })
    ));
}

/// Run by `without_root_or_ip_the_lab_says_what_it_needs` in a child process (as
/// nobody, or without `ip` on PATH); does nothing in a normal run.
#[test]
fn unavailable_helper() {
    if std::env::var_os("LIFEBOAT_LAB_EXPECT_UNAVAILABLE").is_none() {
        return;
    }
    match Lab::start(LabOptions::default()) {
        Err(e @ LabError::Unavailable { .. }) => println!("LAB-ERROR: {e}"),
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("the lab started without root or ip"),
    }
}

#[test]
fn without_root_or_ip_the_lab_says_what_it_needs() {
    let me = std::env::current_exe().unwrap();
    let helper = [
        "--exact",
        "unavailable_helper",
        "--nocapture",
        "--test-threads=1",
    ];
    let cases: [(&str, Command); 2] = [
        ("not root", {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&me)
                .args(helper);
            c
        }),
        ("no ip on PATH", {
            let mut c = Command::new(&me);
            c.args(helper).env("PATH", "/nonexistent");
            c
        }),
    ];
    for (case, mut cmd) in cases {
        let out = cmd
            .env("LIFEBOAT_LAB_EXPECT_UNAVAILABLE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{case}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // libtest prints the line after "test unavailable_helper ... ".
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("LAB-ERROR: ").map(|(_, e)| e))
            .unwrap_or_else(|| panic!("{case}: no error printed: {stdout}"));
        println!("{case}: {line}");
        assert!(
            line.contains("the lab needs root and iproute2 (`ip netns`): "),
            "{case}: {line}"
        );
    }
}

#[test]
fn each_site_can_run_a_libvirtd_of_its_own() {
    use lifeboat_testkit::libvirtd::{domain_dir, qcow2, virsh, SiteDaemon};
    let lab = start_lab();
    let a = SiteDaemon::start(lab.netns(Site::A)).unwrap();
    let b = SiteDaemon::start(lab.netns(Site::B)).unwrap();
    let dir = domain_dir().unwrap();
    let name = format!("lbt-site-{:06x}", std::process::id() & 0xff_ffff);
    // The same name on both sites' daemons, each on its site's bridge: two hosts.
    for (site, daemon) in [("a", &a), ("b", &b)] {
        let disk = dir.path().join(format!("{site}.qcow2"));
        qcow2(&disk, 1 << 20).unwrap();
        let xml = dir.path().join(format!("{site}.xml"));
        std::fs::write(
            &xml,
            format!(
                "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
                 <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
                 <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                 <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
                 <interface type='bridge'><source bridge='br0'/><model type='virtio'/>\
                 </interface></devices></domain>",
                disk.display()
            ),
        )
        .unwrap();
        daemon.virsh(&["define", &xml.to_string_lossy()]).unwrap();
        daemon.virsh(&["start", &name]).unwrap();
    }
    for daemon in [&a, &b] {
        assert_eq!(daemon.virsh(&["list", "--name"]).unwrap().trim(), name);
    }
    // Each domain's NIC is on its own site's bridge, in its site's namespace.
    for site in [Site::A, Site::B] {
        let links = lab
            .ip(site, &["-o", "link", "show", "master", "br0"])
            .unwrap();
        assert!(links.contains("vnet"), "{site:?}: {links}");
    }
    assert!(
        !virsh(&["list", "--all", "--name"]).unwrap().contains(&name),
        "the machine's libvirtd has neither"
    );
    drop(a);
    assert!(
        b.virsh(&["domstate", &name]).unwrap().trim() == "running",
        "site A's daemon gone, B's domain runs on"
    );
}
