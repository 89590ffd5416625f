//! A libvirt domain as an administrator makes one, for the libvirt tests: defined with
//! `virsh define` from XML written here (not by Lifeboat), a qcow2 system disk (the test
//! guest), a raw data disk, a virtio NIC on a Linux bridge, a serial console on a socket
//! and the guest agent's channel; and the checks of its points.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_testkit::libvirtd::{domain_dir, ensure_libvirtd, virsh, Daemon, DefinedDomain};
use lifeboat_testkit::{boot_timeout, SerialConsole};
use serde_json::Value;

use super::bridge::{Bridge, BridgeClient};
use super::cluster::{lifeboat, run_ok, Cluster};

pub const MIB: u64 = 1 << 20;

pub fn domain_xml(name: &str, dir: &Path, bridge: &str, serial: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
         <features><acpi/></features><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{dir}/system.qcow2'/><target dev='vda' bus='virtio'/></disk>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{dir}/data.raw'/><target dev='vdb' bus='virtio'/></disk>\
         <interface type='bridge'><mac address='52:54:00:4c:42:01'/>\
         <source bridge='{bridge}'/><model type='virtio'/></interface>\
         <serial type='unix'><source mode='bind' path='{serial}'/>\
         <log file='{dir}/console.log' append='on'/><target port='0'/></serial>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         <graphics type='vnc' autoport='yes' listen='127.0.0.1'/></devices></domain>",
        dir = dir.display(),
        serial = serial.display(),
    )
}

/// Waits for a point of `vm` whose cut began after `after` (RFC 3339 strings compare in
/// time order); returns the points.
pub fn wait_point_after(cl: &Cluster, vm: &str, after: &str, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let points = cl.json(&["points", vm]);
        let points = points.as_array().unwrap().clone();
        let newest = points.iter().filter_map(|p| p["cut_time"].as_str()).max();
        if newest.is_some_and(|t| t > after) {
            return points;
        }
        assert!(
            Instant::now() < deadline,
            "no point of {vm} cut after {after} within {limit:?}; status: {}",
            cl.json(&["status"])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Restores `point`'s `disk` raw and compares it with the domain's image.
pub fn assert_point_equals(cl: &Cluster, point: &str, disk: &str, image: &Path, format: &str) {
    let out = cl.tmp.path().join(format!("{point}-{disk}.raw"));
    let mut c = lifeboat(cl.tmp.path());
    c.args([
        "vault", "--vault", &cl.vault, "restore", point, "--disk", disk,
    ])
    .arg(&out);
    run_ok(c);
    let cmp = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "raw", "-F", format])
        .arg(&out)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "point {point} disk {disk} differs from the paused domain's {}: {}",
        image.display(),
        String::from_utf8_lossy(&cmp.stdout)
    );
    std::fs::remove_file(&out).unwrap();
}

/// The guest runs `writes` (which ends by printing "written"); then a point cut after
/// them must restore equal to both disks of the paused domain, since nothing wrote in
/// between. Returns the points and that newest one.
pub async fn write_and_prove(
    cl: &Cluster,
    console: &mut SerialConsole,
    name: &str,
    disks: (&Path, &Path),
    writes: &str,
) -> (Vec<Value>, Value) {
    let said = console.run(writes, Duration::from_secs(120)).await.unwrap();
    assert!(said.contains("written"), "{said}");
    let written = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let points = tokio::task::block_in_place(|| {
        wait_point_after(cl, name, &written, Duration::from_secs(300))
    });
    virsh(&["suspend", name]).unwrap();
    let newest = points
        .iter()
        .max_by_key(|p| p["cut_time"].as_str().unwrap().to_string())
        .unwrap()
        .clone();
    let id = newest["point"].as_str().unwrap().to_string();
    tokio::task::block_in_place(|| {
        assert_point_equals(cl, &id, "vda", disks.0, "qcow2");
        assert_point_equals(cl, &id, "vdb", disks.1, "raw");
    });
    virsh(&["resume", name]).unwrap();
    (points, newest)
}

/// Runs `f` with the domain's checkpoints while it is paused and no backup job runs
/// (a cut under way finishes; none starts on a paused domain), then resumes it.
pub fn quiet<T>(name: &str, f: impl FnOnce(Vec<String>) -> T) -> T {
    virsh(&["suspend", name]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while virsh(&["domjobinfo", name]).unwrap().contains("Backup") {
        assert!(Instant::now() < deadline, "a backup job ran for 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let names = virsh(&["checkpoint-list", name, "--name"]).unwrap();
    let out = f(names
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect());
    virsh(&["resume", name]).unwrap();
    out
}

/// A running domain an administrator defined, its guest booted; undefined on drop.
pub struct SourceDomain {
    pub name: String,
    pub system: PathBuf,
    pub data: PathBuf,
    pub console: SerialConsole,
    /// The console's socket (bound again by each start of the domain).
    pub serial: PathBuf,
    /// Everything the console printed (libvirt's virtlogd writes it).
    pub console_log: PathBuf,
    /// A client on the bridge, when asked for.
    pub client: Option<BridgeClient>,
    /// The bridge its NIC is on.
    pub bridge: String,
    /// The libvirtd it is defined on.
    pub daemon: Daemon,
    // Dropped in this order: the domain, its own bridge, then its disks' folder.
    _domain: DefinedDomain,
    _own_bridge: Option<Bridge>,
    _dir: tempfile::TempDir,
}

impl SourceDomain {
    /// Defines and boots `lbt-PREFIX-…` on the machine's libvirtd, on a new bridge, with a
    /// [`BridgeClient`] on it if `with_client`.
    pub async fn start(prefix: &str, with_client: bool) -> SourceDomain {
        ensure_libvirtd().unwrap();
        let suffix = format!("{:06x}", std::process::id() & 0xff_ffff);
        let bridge = Bridge::new(&format!("lbt{prefix}{suffix}"));
        let client = with_client.then(|| BridgeClient::new(&bridge));
        let mut domain = SourceDomain::start_on(&Daemon::MACHINE, prefix, &bridge.0).await;
        domain.client = client;
        domain._own_bridge = Some(bridge);
        domain
    }

    /// Defines and boots `lbt-PREFIX-…` on `daemon`, its NIC on `bridge` (which exists
    /// where the daemon runs).
    pub async fn start_on(daemon: &Daemon, prefix: &str, bridge: &str) -> SourceDomain {
        let tmp = domain_dir().unwrap();
        let dir = tmp.path();
        let system = lifeboat_testkit::guest_disk_copy(dir, "system.qcow2").unwrap();
        let data = dir.join("data.raw");
        let f = std::fs::File::create(&data).unwrap();
        f.set_len(32 * MIB).unwrap();
        drop(f);
        // libvirt's QEMU (its own user) binds the serial socket here.
        let sockets = dir.join("sockets");
        std::fs::create_dir(&sockets).unwrap();
        let ok = Command::new("chown")
            .arg("libvirt-qemu")
            .arg(&sockets)
            .status()
            .unwrap();
        assert!(ok.success());
        let serial = sockets.join("serial.sock");
        let suffix = format!("{:06x}", std::process::id() & 0xff_ffff);
        let name = format!("lbt-{prefix}-{suffix}");
        let xml = dir.join("domain.xml");
        std::fs::write(&xml, domain_xml(&name, dir, bridge, &serial)).unwrap();
        let domain = DefinedDomain::define_on(daemon, &xml, &name).unwrap();
        daemon.virsh(&["start", &name]).unwrap();
        let mut console = SerialConsole::connect(&serial, Duration::from_secs(60))
            .await
            .unwrap();
        console.wait_ready(boot_timeout()).await.unwrap();
        SourceDomain {
            name,
            system,
            data,
            console,
            serial,
            console_log: dir.join("console.log"),
            client: None,
            bridge: bridge.to_string(),
            daemon: daemon.clone(),
            _domain: domain,
            _own_bridge: None,
            _dir: tmp,
        }
    }
}

/// Waits until `daemon`'s domain `name` is shut off with the fence in its definition,
/// then checks that `virsh start` is refused naming it and autostart is off.
pub fn assert_fenced_domain(daemon: &Daemon, name: &str, limit: Duration) {
    let virsh = |args: &[&str]| daemon.virsh(args);
    let fence = lifeboat_hypervisor::libvirt::fence::FENCE_ARG;
    let deadline = Instant::now() + limit;
    loop {
        let state = virsh(&["domstate", name]).unwrap_or_default();
        let fenced = virsh(&["dumpxml", "--inactive", name])
            .unwrap_or_default()
            .contains(fence);
        if state.trim() == "shut off" && fenced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "domain {name} was not fenced: {state}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let refused = virsh(&["start", name]).unwrap_err().to_string();
    assert!(
        refused.contains(fence),
        "virsh start must be refused: {refused}"
    );
    let info = virsh(&["dominfo", name]).unwrap();
    assert!(
        info.lines()
            .any(|l| l.starts_with("Autostart:") && l.contains("disable")),
        "{info}"
    );
}

/// A guest's console at `serial` once the guest says it is ready.
pub async fn ready_console(serial: &Path) -> SerialConsole {
    let mut console = SerialConsole::connect(serial, Duration::from_secs(60))
        .await
        .unwrap();
    console.wait_ready(boot_timeout()).await.unwrap();
    console
}

/// What a recovered guest's console at `serial` says of `/data`: its `round` file, then
/// the listing.
pub async fn data_at(serial: &Path) -> String {
    ready_console(serial)
        .await
        .run("cat /data/round; ls /data", Duration::from_secs(60))
        .await
        .unwrap()
}

/// A domain a recovery host's libvirt driver defines (a test copy): however the test
/// ends, it is destroyed and undefined, and the bridges of its own it sat on deleted.
pub struct RecoveredDomain(pub String);

impl Drop for RecoveredDomain {
    fn drop(&mut self) {
        let xml = virsh(&["dumpxml", &self.0]).unwrap_or_default();
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0, "--nvram", "--checkpoints-metadata"]);
        for bridge in xml
            .split("bridge='")
            .skip(1)
            .filter_map(|rest| rest.split('\'').next())
            .filter(|b| b.starts_with("lbi"))
        {
            let _ = Command::new("ip").args(["link", "del", bridge]).output();
        }
        let _ =
            std::fs::remove_dir_all(Path::new("/var/lib/libvirt/lifeboat/recovered").join(&self.0));
    }
}

/// With the source unreachable, the guest writes once more (a write no point holds),
/// then `failover VM --unplanned --point latest --network-map MAP`; checks that B's copy
/// has `kept` in `/data/round` and not the diverged write.
pub async fn diverge_and_fail_over_unplanned(
    cl: &Cluster,
    console: &mut SerialConsole,
    name: &str,
    map: &str,
    beta: &Beta<'_>,
) {
    let out = console
        .run(
            "echo diverged > /data/diverged && sync && echo ok",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(out.contains("ok"), "{out}");
    let moved = tokio::task::block_in_place(|| {
        cl.json(&[
            "failover",
            name,
            "--unplanned",
            "--point",
            "latest",
            "--network-map",
            map,
        ])
    });
    assert_eq!(moved["kind"], "unplanned", "{moved}");
    let files = data_at(&beta.serial(cl, name)).await;
    assert!(files.starts_with("kept"), "{files}");
    assert!(
        !files.contains("diverged"),
        "a write no point holds: {files}"
    );
}

/// How a planned failover of a writing guest went.
pub struct PlannedMove {
    /// Writes the guest acknowledged before it stopped: every one is at B.
    pub acked: usize,
    /// The `failover --planned` command's time.
    pub took: Duration,
    /// From the command to the guest's console ready at B.
    pub ready_after: Duration,
}

/// Where the recovery host beta runs what it recovers.
pub enum Beta<'a> {
    /// The QEMU driver, in beta's home.
    Qemu,
    /// The libvirt driver, on this libvirtd.
    Libvirt(&'a Daemon),
}

impl Beta<'_> {
    /// The serial console socket of beta's recovered VM `name`.
    pub fn serial(&self, cl: &Cluster, name: &str) -> PathBuf {
        match self {
            Beta::Qemu => cl.home("beta").join("vms").join(name).join("serial.sock"),
            Beta::Libvirt(daemon) => daemon.host_path(
                &Path::new("/var/lib/libvirt/lifeboat/recovered")
                    .join(name)
                    .join("serial.sock"),
            ),
        }
    }

    /// How beta describes its VM `name`: the QEMU driver's spec, or the domain's XML.
    pub fn definition(&self, cl: &Cluster, name: &str) -> String {
        match self {
            Beta::Qemu => {
                let spec = cl.home("beta").join("vms").join(name).join("spec.toml");
                std::fs::read_to_string(spec).unwrap()
            }
            Beta::Libvirt(daemon) => daemon.virsh(&["dumpxml", name]).unwrap(),
        }
    }
}

/// The guest writes and acknowledges (`moves::WRITER`) until the power button stops it,
/// then `failover NAME --planned --network-map MAP` to beta. Checks that the source (on
/// `daemon`) is shut off and fenced (`virsh start` refused), that B's VM has every
/// acknowledged write whole, with the source's MAC, and that the protection is failed
/// over.
pub async fn planned_failover_with_writes(
    cl: &Cluster,
    mut console: SerialConsole,
    (name, console_log, daemon): (&str, &Path, &Daemon),
    map: &str,
    beta: &Beta<'_>,
) -> PlannedMove {
    console
        .run(super::moves::WRITER, Duration::from_secs(60))
        .await
        .unwrap();
    drop(console);
    let deadline = Instant::now() + Duration::from_secs(120);
    while super::moves::acked(console_log).len() < 20 {
        assert!(
            Instant::now() < deadline,
            "the guest acknowledged too few writes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| {
        cl.json(&[
            "failover",
            name,
            "--planned",
            "--shutdown-timeout",
            "60s",
            "--network-map",
            map,
        ])
    });
    let took = started.elapsed();
    assert_eq!(out["kind"], "planned", "{out}");
    assert_eq!(out["host"], "beta", "{out}");
    let acks = super::moves::acked(console_log);
    assert_fenced_domain(daemon, name, Duration::from_secs(30));
    let mut moved = ready_console(&beta.serial(cl, name)).await;
    let ready_after = started.elapsed();
    // Each file holds its own number: present and whole.
    let listing = moved
        .run(
            "cd /data/seq && for f in *; do [ \"$(cat $f)\" = \"$f\" ] && echo $f || echo torn-$f; done",
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert!(!listing.contains("torn-"), "torn writes at B: {listing}");
    let present: std::collections::BTreeSet<u64> = listing
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let missing: Vec<&u64> = acks.iter().filter(|n| !present.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes missing at B: {missing:?}"
    );
    let definition = beta.definition(cl, name);
    assert!(
        definition.contains("52:54:00:4c:42:01"),
        "same MAC: {definition}"
    );
    let p = tokio::task::block_in_place(|| cl.protection());
    assert_eq!(p["state"], "failed_over", "{p}");
    PlannedMove {
        acked: acks.len(),
        took,
        ready_after,
    }
}

/// B's guest (console at `serial`) writes `/data/away`; then `failover commit` and
/// `failback`: checks that home's domain on `home` runs again with the fence lifted.
pub async fn write_at_b_commit_and_fail_back(
    cl: &Cluster,
    serial: &Path,
    name: &str,
    home: &Daemon,
) {
    let out = ready_console(serial)
        .await
        .run(
            "echo away > /data/away && sync && echo ok",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(out.contains("ok"), "{out}");
    tokio::task::block_in_place(|| {
        let committed = cl.json(&["failover", "commit", name]);
        assert!(
            committed["message"]
                .as_str()
                .unwrap_or("")
                .contains("committed"),
            "{committed}"
        );
        let back = cl.json(&["failback", name, "--shutdown-timeout", "60s"]);
        assert_eq!(back["state"], "failed_back", "{back}");
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while home.virsh(&["domstate", name]).unwrap_or_default().trim() != "running" {
        assert!(Instant::now() < deadline, "home's domain did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !home
            .virsh(&["dumpxml", "--inactive", name])
            .unwrap()
            .contains(lifeboat_hypervisor::libvirt::fence::FENCE_ARG),
        "the fence at home is lifted"
    );
}

/// `reprotect NAME` after a failback: the domain was tracked afresh at the failback, so
/// the first sync is incremental and reads what changed since (and the 32 MiB raw data
/// disk whole, which cannot carry a checkpoint). Returns that point.
pub fn reprotect_reads_only_the_changes(cl: &Cluster, name: &str) -> Value {
    let before = cl.json(&["points", name]).as_array().unwrap().len();
    let out = cl.json(&["reprotect", name]);
    assert_eq!(out["state"], "protected", "{out}");
    let deadline = Instant::now() + Duration::from_secs(300);
    let first = loop {
        let points = cl.json(&["points", name]);
        let points = points.as_array().unwrap();
        if points.len() > before {
            break points[before].clone();
        }
        assert!(Instant::now() < deadline, "no sync after reprotect");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(first["kind"], "incremental", "{first}");
    let read = first["bytes_read"].as_u64().unwrap();
    assert!(
        read < (32 + 8) * MIB,
        "reprotect read {read} bytes: {first}"
    );
    first
}
