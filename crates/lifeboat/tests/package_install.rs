//! The Debian package, built and installed as an administrator would (docs/install.md):
//! `scripts/package` packages this build's binary; `dpkg-deb` shows what is in it; then
//! `dpkg -i` installs it into a fresh root and everything after runs there with the
//! installed files only: the version, a man page, the bash completion, the units under
//! `systemd-analyze verify`, a server and an agent started as their units start them,
//! the agent enrolled, and the README's quick start (`lifeboat up`), which builds the
//! demo guest with the packaged builder, boots it and protects it.
//!
//! The fresh root: an overlay whose lower layer is this machine's `/` and whose upper
//! layer is a tmpfs, mounted in a mount namespace of its own (`unshare --mount`), entered
//! with `nsenter` and `chroot`. Nothing of the install reaches the host, and no network
//! is needed to make the root (the guest's builder fetches Debian's qemu-guest-agent
//! package, as on any first build). Before `dpkg -i`, none of the package's files exists
//! in the root.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::Duration;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The fresh root: the namespace's holder process and the overlay's mount point.
struct Root {
    holder: Child,
    /// Closing it ends the holder (it waits for end of input).
    stdin: Option<ChildStdin>,
    merged: PathBuf,
}

impl Root {
    /// Mounts the overlay in a new mount namespace, under `dir` (on this machine's `/`).
    fn new(dir: &Path) -> Root {
        let merged = dir.join("root");
        std::fs::create_dir_all(&merged).unwrap();
        std::fs::create_dir_all(dir.join("layers")).unwrap();
        let script = r#"
            set -eu
            dir=$1
            mount -t tmpfs -o mode=0755 lifeboat-install-test "$dir/layers"
            mkdir "$dir/layers/upper" "$dir/layers/work"
            mount -t overlay overlay \
                -o "lowerdir=/,upperdir=$dir/layers/upper,workdir=$dir/layers/work" "$dir/root"
            mount -t proc proc "$dir/root/proc"
            mount --rbind /sys "$dir/root/sys"
            mount --rbind /dev "$dir/root/dev"
            echo ready
            read -r _ || true
        "#;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--fork", "--"])
            .args(["bash", "-c", script, "holder"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux)");
        let stdin = holder.stdin.take();
        let mut ready = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(
            ready.trim(),
            "ready",
            "the overlay root was not mounted (needs root and overlayfs)"
        );
        Root {
            holder,
            stdin,
            merged,
        }
    }

    /// `program` run inside the root, with a clean environment (no LIFEBOAT_*).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .arg("--target")
            .arg(self.holder.id().to_string())
            .args(["--mount", "--", "chroot"])
            .arg(&self.merged)
            .arg(program);
        c
    }

    fn lifeboat(&self, args: &[&str]) -> Command {
        let mut c = self.command("lifeboat");
        c.args(args);
        c
    }

    /// `bash -c script` in the root.
    fn sh(&self, script: &str) -> Output {
        let mut c = self.command("bash");
        c.args(["-c", script]);
        c.output().unwrap()
    }

    /// `sh`, which must succeed; its stdout.
    fn sh_ok(&self, script: &str) -> String {
        ok(self.sh(script), script)
    }

    /// Copies a file of this machine into the root's /tmp; returns its path there.
    fn copy_in(&self, file: &Path) -> String {
        let inside = format!("/tmp/{}", file.file_name().unwrap().to_string_lossy());
        let out = Command::new("nsenter")
            .arg("--target")
            .arg(self.holder.id().to_string())
            .args(["--mount", "--", "cp"])
            .arg(file)
            .arg(self.merged.join(inside.trim_start_matches('/')))
            .output()
            .unwrap();
        ok(out, "copy the package into the root");
        inside
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.holder.wait();
    }
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Stops what runs in the root however the test ends: `up`, and its demo VM, whose QEMU
/// would otherwise keep the namespace alive.
struct StopUp<'a>(&'a Root, Child);
impl Drop for StopUp<'_> {
    fn drop(&mut self) {
        let _ = self.1.kill();
        let _ = self.1.wait();
        let _ = self
            .0
            .lifeboat(&["--home", "/var/lib/lifeboat-up", "vm", "kill", "demo"])
            .output();
    }
}

/// scripts/package with this build's binary; the .deb's path.
fn build_package(out: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("bash")
        .arg(repo.join("scripts/package"))
        .args([
            "--fast",
            "--binary",
            env!("CARGO_BIN_EXE_lifeboat"),
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    let stdout = ok(output, "scripts/package");
    let deb = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    let name = format!("lifeboat_{}_amd64.deb", env!("CARGO_PKG_VERSION"));
    assert_eq!(deb, out.join(&name), "{stdout}");
    assert!(deb.is_file(), "{}", deb.display());
    deb
}

/// The package's files (not folders), as absolute paths.
fn package_files(deb: &Path) -> Vec<String> {
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .unwrap();
    ok(out, "dpkg-deb -c")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| !p.ends_with('/'))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

fn check_contents(deb: &Path) -> Vec<String> {
    let files = package_files(deb);
    for want in [
        "/usr/bin/lifeboat",
        "/lib/systemd/system/lifeboat-server.service",
        "/lib/systemd/system/lifeboat-agent.service",
        "/lib/systemd/system/lifeboat-vms.slice",
        "/etc/lifeboat/server.toml",
        "/etc/lifeboat/agent.toml",
        "/usr/share/man/man1/lifeboat.1.gz",
        "/usr/share/man/man1/lifeboat-server.1.gz",
        "/usr/share/man/man1/lifeboat-agent.1.gz",
        "/usr/share/man/man1/lifeboat-vault-init.1.gz",
        "/usr/share/bash-completion/completions/lifeboat",
        "/usr/share/zsh/vendor-completions/_lifeboat",
        "/usr/share/fish/vendor_completions.d/lifeboat.fish",
        "/usr/share/lifeboat/guest/build.sh",
        "/usr/share/lifeboat/guest/init.sh",
        "/usr/share/lifeboat/guest/syslinux.cfg",
        "/usr/share/doc/lifeboat/copyright",
        "/usr/share/doc/lifeboat/changelog.Debian.gz",
        "/usr/share/doc/lifeboat/changelog.gz",
        "/usr/share/doc/lifeboat/install.md",
    ] {
        assert!(files.iter().any(|f| f == want), "no {want} in {files:#?}");
    }
    // A man page per visible subcommand, none for the hidden `generate`.
    assert!(!files.iter().any(|f| f.contains("lifeboat-generate")));
    let info = Command::new("dpkg-deb")
        .arg("-I")
        .arg(deb)
        .output()
        .unwrap();
    let info = ok(info, "dpkg-deb -I");
    for want in [
        "Package: lifeboat",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Architecture: amd64",
        "libvirt0",
        "Recommends: qemu-system-x86",
        "conffiles",
        "postinst",
    ] {
        assert!(info.contains(want), "no {want:?} in dpkg-deb -I:\n{info}");
    }
    let conffiles = Command::new("dpkg-deb")
        .args(["-I"])
        .arg(deb)
        .arg("conffiles")
        .output()
        .unwrap();
    assert_eq!(
        ok(conffiles, "dpkg-deb -I conffiles"),
        "/etc/lifeboat/server.toml\n/etc/lifeboat/agent.toml\n"
    );
    files
}

#[test]
fn the_package_installs_into_a_fresh_root_and_runs_the_quick_start() {
    let tmp = tempfile::Builder::new()
        .prefix("lbpkg")
        .tempdir_in("/tmp")
        .unwrap();
    let deb = build_package(&tmp.path().join("out"));
    let files = check_contents(&deb);

    let root = Root::new(tmp.path());
    let existing: Vec<&String> = files
        .iter()
        .filter(|f| root.sh(&format!("test -e '{f}'")).status.success())
        .collect();
    assert!(
        existing.is_empty(),
        "before the install, the root already has {existing:?}"
    );
    assert!(!root.sh("dpkg -s lifeboat").status.success());
    assert!(!root.sh("test -e /var/cache/lifeboat").status.success());

    let inside = root.copy_in(&deb);
    root.sh_ok(&format!("dpkg -i {inside}"));
    let status = root.sh_ok("dpkg-query -W -f '${Status} ${Conffiles}' lifeboat");
    assert!(status.starts_with("install ok installed"), "{status}");
    assert!(status.contains("/etc/lifeboat/agent.toml"), "{status}");

    // The installed files: version, man page, completion, conffiles, units.
    let version = ok(root.lifeboat(&["--version"]).output().unwrap(), "version");
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let page = root.sh_ok("man -w lifeboat && man -w lifeboat-agent");
    assert!(
        page.contains("/usr/share/man/man1/lifeboat.1.gz"),
        "man -w: {page}"
    );
    let complete = root
        .sh_ok("source /usr/share/bash-completion/completions/lifeboat && complete -p lifeboat");
    assert!(complete.trim_end().ends_with(" lifeboat"), "{complete}");
    // The default config files cannot break startup: only comments.
    let settings = root.sh_ok("grep -hv -e '^#' -e '^$' /etc/lifeboat/*.toml || true");
    assert_eq!(settings, "", "settings in the default config files");
    if root.sh("command -v systemd-analyze").status.success() {
        let out = root.sh(
            "systemd-analyze verify /lib/systemd/system/lifeboat-server.service \
             /lib/systemd/system/lifeboat-agent.service /lib/systemd/system/lifeboat-vms.slice 2>&1",
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && said.trim().is_empty(), "{said}");
    }

    // Settings as docs/install.md makes them: uncommented in the installed files (ports
    // the system picks).
    root.sh_ok(
        "sed -i 's|^# listen = .*|listen = \"127.0.0.1:0\"|' /etc/lifeboat/server.toml && \
         sed -i -e 's|^# listen = .*|listen = \"127.0.0.1:0\"|' \
                -e 's|^# hypervisor = .*|hypervisor = \"qemu\"|' \
                -e 's|^# hostname = .*|hostname = \"alpha\"|' \
                -e 's|^# accel = .*|accel = \"tcg\"|' /etc/lifeboat/agent.toml",
    );
    // A server and an agent as their units run them (the units' ExecStart, no flags, and
    // LIFEBOAT_HOME), the agent enrolled.
    let mut c = root.lifeboat(&["server"]);
    c.env("LIFEBOAT_HOME", "/var/lib/lifeboat-server");
    let server = common::spawn_server(c, Path::new("/nonexistent-outside-the-root"));
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let mut c = root.lifeboat(&["agent"]);
    c.env("LIFEBOAT_HOME", "/var/lib/lifeboat");
    let agent = common::spawn_agent(c);
    let client = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = root.lifeboat(args);
        c.env("LIFEBOAT_SERVER", &server.url)
            .env("LIFEBOAT_SERVER_FINGERPRINT", &server.fingerprint)
            .env("LIFEBOAT_TOKEN", &server.token)
            .envs(env.iter().copied());
        ok(c.output().unwrap(), &format!("lifeboat {args:?}"))
    };
    let address = format!("127.0.0.1:{}", agent.port);
    client(
        &[
            "hosts",
            "enroll",
            &address,
            "--fingerprint",
            &agent.fingerprint,
        ],
        &[("LIFEBOAT_ENROLL_CODE", agent.code.as_deref().unwrap())],
    );
    let hosts = client(&["--json", "hosts", "list"], &[]);
    assert!(hosts.contains("\"alpha\""), "{hosts}");
    // On the server's machine a client needs only the server's address: the token and
    // the certificate are found in the unit's home, /var/lib/lifeboat-server.
    let mut c = root.lifeboat(&["--json", "hosts", "list"]);
    c.env("LIFEBOAT_SERVER", &server.url);
    let hosts = ok(
        c.output().unwrap(),
        "hosts list with neither token nor fingerprint",
    );
    assert!(hosts.contains("\"alpha\""), "{hosts}");

    // The README's quick start, from the package: `lifeboat up` builds the demo guest
    // with the packaged builder (LIFEBOAT_GUEST_DIR unset), boots it and protects it.
    let mut child = root
        .lifeboat(&[
            "--home",
            "/var/lib/lifeboat-up",
            "--accel",
            "tcg",
            "up",
            "--listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _up = StopUp(&root, child);
    let seen = common::up_until_running(stdout);
    // Built by the packaged builder into the system's cache, not found in the user's.
    assert!(
        seen.contains("guest image: /var/cache/lifeboat/guest/")
            && seen.contains("(from /usr/share/lifeboat/guest/build.sh)"),
        "{seen}"
    );
    assert!(seen.contains("demo is Protected: recovery point"), "{seen}");
    let image = root.sh_ok("ls /var/cache/lifeboat/guest/*/guest.qcow2");
    assert_eq!(image.lines().count(), 1, "{image}");

    // And fail it over, as the operator would on the server's machine: a test copy from
    // its newest point, then removed (the CLI finds the token and certificate in the
    // home; the server's URL `up` printed).
    let url = seen
        .lines()
        .find_map(|l| l.trim().strip_prefix("API:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no API line: {seen}"))
        .to_string();
    let up_cli = |args: &[&str]| {
        let mut c = root.lifeboat(&["--home", "/var/lib/lifeboat-up"]);
        c.args(args).args(["--server", &url]);
        ok(c.output().unwrap(), &format!("lifeboat {args:?}"))
    };
    let copy: serde_json::Value =
        serde_json::from_str(&up_cli(&["--json", "failover", "demo", "--test"])).unwrap();
    assert_eq!(copy["vm"], "demo-test", "{copy}");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let vms: serde_json::Value =
            serde_json::from_str(&up_cli(&["--json", "vms", "list"])).unwrap();
        let running = vms["vms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["vm"] == "demo-test" && v["state"]["state"] == "running");
        if running {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the test copy never ran: {vms}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    up_cli(&["failover", "cleanup", "demo"]);
}
