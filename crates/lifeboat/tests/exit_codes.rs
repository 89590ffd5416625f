//! The exit codes README's "Exit codes" lists, each from the real binary: a script can
//! tell a server that does not answer (6, retry) from a refused token (5), a wrong vault
//! passphrase (7) and an interrupted (130) or terminated (143) command; `--json` makes the error an object.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::start_server;

fn run(home: &std::path::Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("LIFEBOAT_TOKEN")
        .env_remove("LIFEBOAT_PASSPHRASE")
        .env("LIFEBOAT_CONFIG", home.join("no-client.toml"))
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

/// Whether process `pid` has a handler for `signal` (its bit in /proc/PID/status SigCgt).
fn catches(pid: u32, signal: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

fn code_and_err(out: &Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn each_cause_a_script_acts_on_has_its_own_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("client");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("no-client.toml"), "").unwrap();

    // 6: nothing listens there.
    let port = lifeboat_testkit::free_tcp_port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, err) = code_and_err(&run(
        &home,
        &[("LIFEBOAT_TOKEN", "t")],
        &["hosts", "list", "--server", &url],
    ));
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains(&format!("cannot reach the server at {url}")),
        "{err}"
    );

    // 5: a token the server does not know.
    let server = start_server(&tmp.path().join("server"), None);
    let (code, err) = code_and_err(&run(
        &home,
        &[("LIFEBOAT_TOKEN", "not-the-token")],
        &["hosts", "list", "--server", &server.url],
    ));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("refused the API token"), "{err}");
    // …and the right one works.
    let out = run(
        &home,
        &[("LIFEBOAT_TOKEN", &server.token)],
        &["hosts", "list", "--server", &server.url],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A LIFEBOAT_CONFIG naming a file that is not there is said, not fatal.
    let out = run(
        &home,
        &[
            ("LIFEBOAT_TOKEN", &server.token),
            ("LIFEBOAT_CONFIG", "/nonexistent/client.toml"),
        ],
        &["hosts", "list", "--server", &server.url],
    );
    let (code, err) = code_and_err(&out);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("/nonexistent/client.toml, which does not exist"),
        "{err}"
    );
    // …but a broken one is refused, by file, line and key (exit 2).
    let bad = home.join("bad-client.toml");
    std::fs::write(&bad, "server = \"https://x\"\ntokn = \"t\"\n").unwrap();
    let (code, err) = code_and_err(&run(
        &home,
        &[("LIFEBOAT_CONFIG", bad.to_str().unwrap())],
        &["hosts", "list"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad-client.toml:2: unknown field `tokn`"),
        "{err}"
    );

    // 2: bad usage; with --json as an object too.
    let (code, err) = code_and_err(&run(&home, &[], &["--json", "hosts", "lst"]));
    assert_eq!(code, 2, "{err}");
    let err: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(err["exit_code"], 2, "{err}");
    assert!(err["error"].as_str().unwrap().contains("lst"), "{err}");
    let (code, err) = code_and_err(&run(&home, &[], &["hosts", "lst"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    // A daemon's broken config file: 2, named by file and line, before anything starts.
    let conf = home.join("server.toml");
    std::fs::write(&conf, "listen = \"127.0.0.1:0\"\ninsecure_http = \"yes\"\n").unwrap();
    let (code, err) = code_and_err(&run(
        &home,
        &[],
        &["server", "--config", conf.to_str().unwrap()],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.toml:2: "), "{err}");
    assert!(err.contains("insecure_http"), "{err}");

    // 7: a passphrase that opens none of the vault's key slots.
    let vault = format!("file://{}", tmp.path().join("vault").display());
    let out = run(
        &home,
        &[("LIFEBOAT_PASSPHRASE", "right one")],
        &["vault", "--vault", &vault, "init"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, err) = code_and_err(&run(
        &home,
        &[("LIFEBOAT_PASSPHRASE", "wrong one")],
        &["vault", "--vault", &vault, "list"],
    ));
    assert_eq!(code, 7, "{err}");

    // --json: the error is one JSON object, with the code.
    let (code, err) = code_and_err(&run(
        &home,
        &[("LIFEBOAT_PASSPHRASE", "wrong one")],
        &["--json", "vault", "--vault", &vault, "list"],
    ));
    assert_eq!(code, 7, "{err}");
    let err: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(err["exit_code"], 7, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("passphrase"),
        "{err}"
    );

    // 130: Ctrl-C stops a command (a long scan), 143: SIGTERM does; each says so.
    for (signal, code, says) in [
        (libc::SIGINT, 130, "interrupted"),
        (libc::SIGTERM, 143, "terminated"),
    ] {
        let mut scan = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .arg("--home")
            .arg(&home)
            .args(["hosts", "scan", "10.255.0.0/16", "--ports", "7443"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Signalled once it catches the signal (/proc's SigCgt mask), not before.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !catches(scan.id(), signal) {
            assert!(scan.try_wait().unwrap().is_none(), "the scan ended at once");
            assert!(
                Instant::now() < deadline,
                "the scan never caught signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: a signal to a child of this test.
        unsafe { libc::kill(scan.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = scan.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the scan did not stop on {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = std::io::read_to_string(scan.stderr.take().unwrap()).unwrap();
        assert_eq!(status.code(), Some(code), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// 3: `vault verify` finds the point whose data was changed in the vault, names it, the
/// disk and the offset, and exits 3; the intact point of another VM verifies (0).
#[test]
fn verify_exits_3_naming_the_damaged_point() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("client");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("no-client.toml"), "").unwrap();
    let dir = tmp.path().join("vault");
    let vault = format!("file://{}", dir.display());
    let pass = [("LIFEBOAT_PASSPHRASE", "pw")];
    let ok = |args: &[&str]| {
        let mut all = vec!["--json", "vault", "--vault", &vault];
        all.extend_from_slice(args);
        let out = run(&home, &pass, &all);
        let (code, err) = code_and_err(&out);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    ok(&["init", "--chunk-size", "64K"]);
    let mut points = Vec::new();
    let mut packs_of = Vec::new();
    for (i, name) in ["web1", "db1"].into_iter().enumerate() {
        let img = tmp.path().join(format!("{name}.raw"));
        std::fs::write(&img, lifeboat_testkit::random_bytes(i as u64 + 1, 2 << 20)).unwrap();
        let before = files_under(&dir.join("packs"));
        let put = ok(&["put-image", "--name", name, img.to_str().unwrap()]);
        points.push(put["point"]["point"].as_str().unwrap().to_string());
        let new: Vec<_> = files_under(&dir.join("packs"))
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert!(!new.is_empty(), "{name} added no pack");
        packs_of.push(new);
    }
    let clean = run(&home, &pass, &["vault", "--vault", &vault, "verify"]);
    assert_eq!(code_and_err(&clean).0, 0, "{}", code_and_err(&clean).1);

    // Rot in the middle of web1's biggest pack: inside a chunk's sealed bytes.
    let pack = packs_of[0]
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(pack, bytes).unwrap();

    let out = run(
        &home,
        &pass,
        &["--json", "vault", "--vault", &vault, "verify"],
    );
    let (code, err) = code_and_err(&out);
    assert_eq!(code, 3, "{err}");
    let err: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(err["exit_code"], 3, "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let verdicts = report["points"].as_array().unwrap();
    let verdict = |point: &str| {
        verdicts
            .iter()
            .find(|v| v["point"] == point)
            .unwrap_or_else(|| panic!("no verdict on {point}: {report}"))
            .clone()
    };
    let web = verdict(&points[0]);
    assert_eq!(
        (web["name"].as_str(), web["status"].as_str()),
        (Some("web1"), Some("damaged")),
        "{report}"
    );
    let problem = &web["problems"][0];
    assert_eq!(problem["object"], "chunk", "{report}");
    assert_eq!(problem["fault"], "tampered", "{report}");
    assert!(problem["offset"].as_u64().unwrap() < 2 << 20, "{report}");
    assert_eq!(verdict(&points[1])["status"], "ok", "{report}");
    // The text report names the point too; the intact point alone verifies.
    let out = run(&home, &pass, &["vault", "--vault", &vault, "verify"]);
    assert_eq!(out.status.code(), Some(3));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("DAMAGED: point {} of web1", points[0])),
        "{said}"
    );
    let out = run(
        &home,
        &pass,
        &["vault", "--vault", &vault, "verify", &points[1]],
    );
    assert_eq!(code_and_err(&out).0, 0, "{}", code_and_err(&out).1);
}

/// 4: `protect --wait --timeout` gives up when no point comes in time (here the VM is
/// defined but stopped, so no sync can cut it), says replication goes on, and it does:
/// the protection stays, waiting for the VM.
#[test]
fn protect_wait_gives_up_with_4_and_the_protection_stays() {
    let cl = common::cluster::cluster(None);
    let alpha = cl.home("alpha");
    let disk = alpha.join("web.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("16M")
        .status()
        .unwrap();
    assert!(made.success());
    let spec = alpha.join("web.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"web\"\nmemory_mib = 128\nvcpus = 1\n[[disks]]\nname = \"vda\"\npath = \"{}\"\nformat = \"qcow2\"\n",
            disk.display()
        ),
    )
    .unwrap();
    let mut define = common::cluster::lifeboat(&alpha);
    define.args(["vm", "define"]).arg(&spec);
    common::cluster::run_ok(define);

    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args(["--json", "protect", "web", "--vault", &cl.vault])
        // Waiting for the first point is the default: --timeout alone bounds it.
        .args(["--recovery-host", "beta", "--timeout", "3s"])
        .env("LIFEBOAT_SERVER", &cl.server.url)
        .env("LIFEBOAT_TOKEN", &cl.server.token)
        .env("LIFEBOAT_PASSPHRASE", common::cluster::PASSPHRASE)
        .env("LIFEBOAT_HOME", "/nonexistent-lifeboat-home")
        .env("LIFEBOAT_CONFIG", tmp_config(&cl))
        .output()
        .unwrap();
    let (code, err) = code_and_err(&out);
    assert_eq!(code, 4, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "gave up only after {:?}",
        started.elapsed()
    );
    let err: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(err["exit_code"], 4, "{err}");
    let message = err["error"].as_str().unwrap();
    assert!(
        message.contains("no recovery point yet") && message.contains("replication goes on"),
        "{message}"
    );
    let p = cl.protection();
    assert_eq!(p["vm"], "web", "{p}");
    assert!(p["last_point"].is_null(), "{p}");
    assert_ne!(p["state"], "protected", "{p}");
}

/// An empty client config file, so the machine's own does not count.
fn tmp_config(cl: &common::cluster::Cluster) -> std::path::PathBuf {
    let path = cl.tmp.path().join("no-client.toml");
    std::fs::write(&path, "").unwrap();
    path
}
