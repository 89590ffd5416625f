//! A VM never lives in the agent's cgroup or process group, so stopping, restarting or
//! upgrading the agent's service never stops it (docs/install.md, "VMs outlive the
//! agent"). This machine has no systemd as PID 1, so the placement tested is the one
//! without it: QEMU moved into a cgroup of its own under the cgroup v2 hierarchy.
//!
//! The agent's service is played by a cgroup made here, as systemd makes one for
//! `lifeboat-agent.service`: a long-running process stands for the agent, and the VM is
//! started from inside that cgroup and process group (`lifeboat vm start`: the driver's
//! one way to start QEMU, the agent's too). Then the cgroup is killed whole, as systemd's
//! default `KillMode=control-group` stops a unit, and the process group is signalled: the
//! guest runs on and answers on its console.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{lifeboat, run_ok, KillVm};
use common::moves::guest_runs;
use lifeboat_hypervisor::qemu::placement::{cgroup_of, Placement, CGROUP_DIR};
use lifeboat_hypervisor::{QemuConfig, QemuDriver, VmName};
use lifeboat_testkit::{boot_timeout, SerialConsole};

/// A host home under `dir` with the test guest defined as VM `web` (not started).
fn defined_web(dir: &Path) -> PathBuf {
    let home = dir.join("host");
    std::fs::create_dir_all(&home).unwrap();
    let disk = lifeboat_testkit::guest_disk_copy(&home, "web.qcow2").unwrap();
    let spec = home.join("web.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"web\"\nmemory_mib = 256\nvcpus = 1\n[[disks]]\nname = \"vda\"\npath = \"{}\"\nformat = \"qcow2\"\n",
            disk.display()
        ),
    )
    .unwrap();
    let mut define = lifeboat(&home);
    define.args(["vm", "define"]).arg(&spec);
    run_ok(define);
    home
}

/// A cgroup standing for the agent's unit, removed (after its processes) when dropped.
struct UnitCgroup(PathBuf);

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn procs(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Fields 6 and 5 of /proc/PID/stat: the session and the process group.
fn session_and_group(pid: u32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[3].parse().unwrap(), f[2].parse().unwrap())
}

/// `cmd`, run from inside `cgroup` and in process group `group` (0: a new one, as a
/// service's main process has): a shell joins the cgroup, then execs it.
fn in_unit(cgroup: &Path, group: i32, cmd: &mut Command) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && shift && exec "$@""#)
        .arg(cgroup)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .process_group(group);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agents_cgroup_and_process_group_leaves_the_vm_running() {
    let Placement::Cgroup(root) = Placement::detect() else {
        panic!(
            "this machine offers no writable cgroup v2 hierarchy (found {:?}): the placement \
             without systemd cannot be tested here",
            Placement::detect()
        );
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = defined_web(tmp.path());

    // The agent's unit: its cgroup, and a process that lives as long as the agent would.
    let unit = UnitCgroup(root.join(format!("lbtest-agent-{}", std::process::id())));
    std::fs::create_dir(&unit.0).unwrap();
    let mut agent = in_unit(&unit.0, 0, Command::new("sleep").arg("600"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let agent_pid = agent.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !procs(&unit.0).contains(&agent_pid) {
        assert!(
            Instant::now() < deadline,
            "the agent never joined its cgroup"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut start = lifeboat(&home);
    start.args(["vm", "start", "web"]);
    // In the agent's own process group, as the agent's children are.
    run_ok(in_unit(&unit.0, agent_pid as i32, &mut start));
    let _guard = KillVm(home.clone(), "web");
    let qemu: u32 = std::fs::read_to_string(home.join("vms/web/qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // Where QEMU lives: a cgroup of its own, its own session and process group.
    let unit_cgroup = cgroup_of(agent_pid).unwrap();
    let vm_cgroup = cgroup_of(qemu).unwrap();
    assert!(
        vm_cgroup.starts_with(&format!("/{CGROUP_DIR}/web-")) && vm_cgroup != unit_cgroup,
        "QEMU is in {vm_cgroup}, the agent in {unit_cgroup}"
    );
    let (vm_session, vm_group) = session_and_group(qemu);
    let (agent_session, agent_group) = session_and_group(agent_pid);
    assert!(
        vm_session != agent_session && vm_group != agent_group,
        "QEMU shares the agent's session or process group: {vm_session}/{vm_group} vs {agent_session}/{agent_group}"
    );

    let driver = QemuDriver::new(QemuConfig::new(&home)).unwrap();
    let socket = driver.serial_socket(&VmName::new("web").unwrap()).unwrap();
    let mut console = SerialConsole::connect(&socket, Duration::from_secs(60))
        .await
        .unwrap();
    console.wait_ready(boot_timeout()).await.unwrap();

    // The unit stops: every process of its cgroup killed, its process group signalled.
    std::fs::write(unit.0.join("cgroup.kill"), "1").unwrap();
    // SAFETY: a plain syscall on a process group made by this test.
    unsafe { libc::killpg(agent_group, libc::SIGKILL) };
    agent.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !procs(&unit.0).is_empty() {
        assert!(Instant::now() < deadline, "the unit's cgroup did not empty");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The VM runs on: QEMU says its guest runs, and the guest answers.
    assert!(guest_runs(&home, "web"), "the VM stopped with the agent");
    let answer = console
        .run("echo still-$((40+2))", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(answer.contains("still-42"), "{answer}");
}

/// A `systemd-run` stand-in on PATH: it records its arguments, and either fails as
/// systemd-run does without a system bus or runs what follows `--`.
fn systemd_run_shim(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let shim = bin.join("systemd-run");
    std::fs::write(
        &shim,
        "#!/bin/sh\necho \"$@\" >> \"$SHIM_LOG\"\n\
         if [ -n \"$SHIM_FAIL\" ]; then\n\
           echo 'Failed to create bus connection: No such file or directory' >&2; exit 1\n\
         fi\n\
         while [ \"$1\" != -- ]; do shift; done; shift\nexec \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// With systemd (`LIFEBOAT_VM_PLACEMENT=systemd`, this machine has none as PID 1, so a
/// stand-in plays systemd-run): QEMU starts through `systemd-run --scope` in
/// lifeboat-vms.slice; when systemd-run cannot reach systemd, the VM starts anyway, in a
/// cgroup of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_starts_through_systemd_run_and_without_it_when_it_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let home = defined_web(tmp.path());
    let bin = systemd_run_shim(tmp.path());
    let log = tmp.path().join("systemd-run.args");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _guard = KillVm(home.clone(), "web");
    for fail in [false, true] {
        let mut start = lifeboat(&home);
        start
            .args(["vm", "start", "web"])
            .env("LIFEBOAT_VM_PLACEMENT", "systemd")
            .env("PATH", &path)
            .env("SHIM_LOG", &log);
        if fail {
            start.env("SHIM_FAIL", "1");
        }
        let out = start.output().unwrap();
        assert!(
            out.status.success(),
            "fail={fail}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let args = std::fs::read_to_string(&log).unwrap();
        let last = args.lines().last().unwrap();
        assert!(
            last.starts_with(
                "--scope --quiet --collect --slice=lifeboat-vms.slice --unit=lifeboat-vm-web-"
            ) && last.contains(" -- qemu-system-x86_64 -name web,"),
            "{last}"
        );
        assert!(guest_runs(&home, "web"), "fail={fail}: the VM does not run");
        let qemu: u32 = std::fs::read_to_string(home.join("vms/web/qemu.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if fail {
            // Refused: started without systemd, in a cgroup of its own, and said so.
            let cgroup = cgroup_of(qemu).unwrap();
            assert!(
                cgroup.starts_with(&format!("/{CGROUP_DIR}/web-")),
                "{cgroup}"
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("systemd-run refused"), "{err}");
        }
        assert!(lifeboat(&home)
            .args(["vm", "kill", "web"])
            .status()
            .unwrap()
            .success());
    }
}
