//! Helpers for failover tests: what a guest acknowledged, where a VM runs, and a watch
//! that fails the test if two copies of a VM ever run at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_testkit::{http_get, wait_http};

use serde_json::Value;

use super::cluster::{boot_guest_with, Cluster, KillVm};

/// The row of `vm` on `host` in `vms list`.
pub fn vm_row(cl: &Cluster, host: &str, vm: &str) -> Option<Value> {
    cl.json(&["vms", "list"])["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["host"] == host && v["vm"] == vm)
        .cloned()
}

pub fn running(row: &Option<Value>) -> bool {
    row.as_ref()
        .is_some_and(|r| r["state"]["state"] == "running")
}

/// The numbers a guest acknowledged on its console: `ACK n` after `n` was written and
/// synced.
pub fn acked(console_log: &Path) -> BTreeSet<u64> {
    std::fs::read_to_string(console_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ACK "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The guest command that writes `/data/seq/N`, appends `N` to `/data/seq.log`, syncs,
/// then acknowledges `ACK N` on the console: ten writes a second at most, 3000 in all.
/// Unpaced and unbounded it filled the guest's small `/data` in minutes
/// (about 10,000 files), then spun on failing writes, a core of TCG for nothing, and
/// every check read each of those files over HTTP (150 s a check in the campaign).
pub const WRITER: &str = "mkdir -p /data/seq; (n=0; while [ $n -lt 3000 ]; do echo $n > /data/seq/$n && echo $n >> /data/seq.log && sync && echo ACK $n > /dev/ttyS0; n=$((n+1)); usleep 100000; done) > /dev/null 2>&1 &";

/// Whether QEMU runs VM `vm` of the host at `home` with its guest running, as QEMU
/// itself says (`query-status`): a QEMU started paused for a final cut runs no guest,
/// and one started held to plug its bridged NICs runs it once continued, so its
/// command line (`-S`) tells neither.
pub fn guest_runs(home: &Path, vm: &str) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let dir = home.join(format!("vms/{vm}"));
    let alive = std::fs::read_to_string(dir.join("qemu.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    if !alive {
        return false;
    }
    // QEMU serves one QMP client at a time: the agent's calls are short, so wait. When
    // the monitor does not answer, the command line decides as before: a QEMU started
    // held (`-S`) runs no guest unless continued, which only QMP could tell.
    let asked = (|| -> Option<bool> {
        let mut qmp = std::os::unix::net::UnixStream::connect(dir.join("qmp.sock")).ok()?;
        qmp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .ok()?;
        qmp.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")
            .ok()?;
        for line in BufReader::new(qmp).lines() {
            let reply: serde_json::Value = match serde_json::from_str(&line.ok()?) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let Some(running) = reply["return"]["running"].as_bool() {
                return Some(running);
            }
        }
        None
    })();
    asked.unwrap_or_else(|| {
        let pid = std::fs::read_to_string(dir.join("qemu.pid")).unwrap_or_default();
        let cmd = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
        !cmd.is_empty() && !cmd.split(|b| *b == 0).any(|a| a == b"-S")
    })
}

/// Samples every 20 ms until dropped (or `stop`): panics — failing the test — if VM `vm`
/// runs on both hosts at once.
pub struct OneCopy {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl OneCopy {
    pub fn watch(homes: [PathBuf; 2], vm: &'static str) -> OneCopy {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = 0;
            while !s.load(Ordering::SeqCst) {
                assert!(
                    !(guest_runs(&homes[0], vm) && guest_runs(&homes[1], vm)),
                    "two running copies of {vm}"
                );
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        OneCopy {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; panics if two copies were ever seen. Returns the samples taken.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("never two running copies")
    }
}

impl Drop for OneCopy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits for a point of `vm` cut after `t` (so it holds every write completed by then).
pub fn wait_point_after(
    cl: &Cluster,
    vm: &str,
    t: chrono::DateTime<chrono::Utc>,
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let points = super::cluster::wait_points(cl, vm, 1, limit);
        let last = points.last().unwrap().clone();
        let cut = chrono::DateTime::parse_from_rfc3339(last["cut_time"].as_str().unwrap()).unwrap();
        if cut > t {
            return last;
        }
        assert!(Instant::now() < deadline, "no point of {vm} after {t}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Writes `away` to `path` in the VM running on beta, through its serial console, synced.
pub async fn write_at_recovery_site(cl: &Cluster, path: &str) {
    let mut console = lifeboat_testkit::SerialConsole::connect(
        &cl.home("beta").join("vms/web/serial.sock"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    console.wait_ready(Duration::from_secs(120)).await.unwrap();
    console
        .run(
            &format!("echo away > {path} && sync"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
}

/// Waits until `host`'s `vm` shows fenced and stopped in the server's inventory.
pub fn wait_fenced_row(cl: &Cluster, host: &str, vm: &str, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let row = vm_row(cl, host, vm);
        if row
            .as_ref()
            .is_some_and(|r| r["fenced"].is_string() && r["state"]["state"] == "stopped")
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{host}'s {vm} was not fenced: {row:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A protected guest on alpha, writing and acknowledging numbered files.
pub async fn writing_guest(cl: &Cluster, http: u16) -> KillVm {
    let (vm, mut console) = boot_guest_with(&cl.home("alpha"), "web", &[], Some(http)).await;
    let (ok, _, err) = cl.protect_web(&["--wait", "--timeout", "5m"]);
    assert!(ok, "{err}");
    console.run(WRITER, Duration::from_secs(60)).await.unwrap();
    let log = cl.home("alpha").join("vms/web/console.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked(&log).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the guest acknowledged too few writes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    vm
}

/// Runs a client command against the cluster's server on another thread.
pub fn in_background(cl: &Cluster, args: &[&str]) -> std::thread::JoinHandle<std::process::Output> {
    let server = (cl.server.url.clone(), cl.server.token.clone());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .args(&args)
            .env("LIFEBOAT_SERVER", &server.0)
            .env("LIFEBOAT_HOME", "/nonexistent-lifeboat-home")
            .env("LIFEBOAT_TOKEN", &server.1)
            .output()
            .unwrap()
    })
}

/// Where the VM runs: "alpha" or "beta", exactly one (waiting for it to start).
pub fn where_it_runs(cl: &Cluster) -> &'static str {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (a, b) = (
            guest_runs(&cl.home("alpha"), "web"),
            guest_runs(&cl.home("beta"), "web"),
        );
        assert!(!(a && b), "two running copies");
        if a {
            return "alpha";
        }
        if b {
            return "beta";
        }
        assert!(Instant::now() < deadline, "the VM runs nowhere");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every write the guest acknowledged is readable from the running copy's httpd.
pub async fn all_acked_present(cl: &Cluster, port: u16) -> usize {
    wait_http(port, "/boot-count", Duration::from_secs(120))
        .await
        .unwrap();
    let acks = acked(&cl.home("alpha").join("vms/web/console.log"));
    // A guest that reads its disk from the vault while it hydrates, on a busy machine,
    // may not answer one request in time: asked again, up to three times.
    let get = |path: String| async move {
        let mut tries = 0;
        loop {
            match http_get(port, &path, Duration::from_secs(20)).await {
                Ok(answer) => break answer,
                Err(e) if tries < 2 => {
                    tries += 1;
                    eprintln!("{path}: {e:#}; asking again");
                }
                Err(e) => panic!("{path} unreadable: {e:#}\n{}", diagnose(cl)),
            }
        }
    };
    // Every acknowledged write is in the log, which was synced before its ack...
    let (code, log) = get("/seq.log".into()).await;
    assert_eq!(code, 200, "the guest's write log is gone");
    let logged: BTreeSet<u64> = String::from_utf8_lossy(&log)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost: Vec<&u64> = acks.difference(&logged).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // ...and the newest acknowledged files are there and whole.
    for n in acks.iter().rev().take(10) {
        let (code, body) = get(format!("/seq/{n}")).await;
        assert_eq!(code, 200, "acknowledged write {n} is lost");
        assert_eq!(String::from_utf8_lossy(&body).trim(), n.to_string());
    }
    acks.len()
}

/// The test guest on alpha as `web`, protected, with `/data/f/kept` written, synced, and
/// in a point; its console, to write more.
pub async fn protected_with_kept_file(
    cl: &Cluster,
    http: u16,
) -> (KillVm, lifeboat_testkit::SerialConsole) {
    let (vm, mut console) = boot_guest_with(&cl.home("alpha"), "web", &[], Some(http)).await;
    let (ok, _, err) = cl.protect_web(&["--wait", "--timeout", "5m"]);
    assert!(ok, "{err}");
    console
        .run(
            "mkdir -p /data/f && echo kept > /data/f/kept && sync",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    wait_point_after(cl, "web", chrono::Utc::now(), Duration::from_secs(120));
    (vm, console)
}

/// Bit for bit: every file under the guest's `/data/f` in alpha's disk is the file as
/// `point` holds it (alpha's VM is stopped for the read, and started again). Returns the
/// point's files, by name.
pub fn home_equals_point(cl: &Cluster, point: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    use super::cluster::{lifeboat, run_ok};
    let stopped = lifeboat(&cl.home("alpha"))
        .args(["vm", "stop", "web"])
        .output()
        .unwrap();
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let scratch = cl.tmp.path().join(format!("bitexact-{point}"));
    std::fs::create_dir_all(scratch.join("p")).unwrap();
    std::fs::create_dir_all(scratch.join("h")).unwrap();
    let point_raw = scratch.join("point.raw");
    let mut c = lifeboat(cl.tmp.path());
    c.args(["vault", "--vault", &cl.vault, "restore", point])
        .arg(&point_raw);
    run_ok(c);
    let home_raw = scratch.join("home.raw");
    let conv = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(cl.home("alpha").join("web.qcow2"))
        .arg(&home_raw)
        .output()
        .unwrap();
    assert!(conv.status.success());
    let at_point =
        lifeboat_testkit::guest_data_files(&point_raw, "/f", &scratch.join("p")).unwrap();
    let at_home = lifeboat_testkit::guest_data_files(&home_raw, "/f", &scratch.join("h")).unwrap();
    assert_eq!(
        at_home, at_point,
        "home's files differ from point {point}'s"
    );
    let started = lifeboat(&cl.home("alpha"))
        .args(["vm", "start", "web"])
        .output()
        .unwrap();
    assert!(started.status.success());
    at_point
}

/// What the running copy's QEMU and its host show, for a failure's message: the
/// recoveries, the NBD sockets of a recovered VM, and QEMU's block jobs and nodes.
pub fn diagnose(cl: &Cluster) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut out = String::new();
    let (ok, list, _) = cl.cli(&["--json", "failover", "list"]);
    out += &format!("failover list ({ok}): {list}\n");
    for host in ["alpha", "beta"] {
        let home = cl.home(host);
        for dir in ["recovered/web", "vms/web"] {
            let names: Vec<String> = std::fs::read_dir(home.join(dir))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            out += &format!("{host}/{dir}: {names:?}\n");
        }
        if !guest_runs(&home, "web") {
            continue;
        }
        let Ok(mut sock) = std::os::unix::net::UnixStream::connect(home.join("vms/web/qmp.sock"))
        else {
            out += &format!("{host}: no QMP socket\n");
            continue;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(sock.try_clone().unwrap());
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        for cmd in [
            "qmp_capabilities",
            "query-block-jobs",
            "query-block",
            "query-status",
        ] {
            let _ = writeln!(sock, "{{\"execute\": \"{cmd}\"}}");
            line.clear();
            let _ = reader.read_line(&mut line);
            out += &format!("{host} {cmd}: {}\n", line.trim());
        }
    }
    out
}
