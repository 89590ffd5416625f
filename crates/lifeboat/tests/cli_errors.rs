//! Bad input to the CLI gets a clear message and a non-zero exit code.

use std::process::Command;

fn lifeboat(home: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn unknown_vms_bad_specs_and_bad_names_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, err) = lifeboat(tmp.path(), &["vm", "start", "ghost"]);
    assert_eq!(code, 1);
    assert!(err.contains("VM ghost is not defined"), "{err}");

    let (code, err) = lifeboat(tmp.path(), &["vm", "start", "Bad Name"]);
    assert_eq!(code, 1);
    assert!(err.contains("not valid"), "{err}");

    let spec = tmp.path().join("bad.toml");
    std::fs::write(&spec, "name = \"x\"\nmemory_mib = 5\n[[disks]]\nname = \"vda\"\npath = \"/d.qcow2\"\nformat = \"qcow2\"\n").unwrap();
    let (code, err) = lifeboat(tmp.path(), &["vm", "define", spec.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("memory_mib") && err.contains("bad.toml"),
        "{err}"
    );

    let (code, err) = lifeboat(tmp.path(), &["--accel", "warp", "vm", "list"]);
    assert_eq!(code, 2, "usage errors exit 2");
    assert!(err.contains("warp"), "{err}");
}

/// Whether `--hypervisor libvirt` is refused depends on libvirtd answering: the driver's
/// unit test (`auto_takes_libvirt_when_it_answers_and_qemu_otherwise`) covers both.
#[test]
fn an_unknown_hypervisor_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (code, err) = lifeboat(&home, &["agent", "--hypervisor", "xen"]);
    assert_eq!(code, 2, "usage errors exit 2: {err}");
}

#[test]
fn every_duration_flag_takes_one_syntax() {
    let tmp = tempfile::tempdir().unwrap();
    // A number without a unit is refused by each, at parsing, with what to write.
    for args in [
        &["vm", "stop", "web", "--timeout", "30"][..],
        &["failover", "web", "--planned", "--shutdown-timeout", "120"],
        &["failback", "web", "--shutdown-timeout", "120"],
        &[
            "protect",
            "web",
            "--vault",
            "file:///v",
            "--recovery-host",
            "b",
            "--timeout",
            "600",
        ],
        &["hosts", "scan", "10.0.0.0/30", "--timeout", "2"],
        &[
            "network",
            "web",
            "--dns-name",
            "w.example",
            "--dns-zone",
            "example",
            "--dns-server",
            "10.0.0.1",
            "--dns-key",
            "k",
            "--dns-ttl",
            "60",
        ],
    ] {
        let (code, err) = lifeboat(tmp.path(), args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("has no unit; write e.g. 24h, 7d or 4w"),
            "{args:?}: {err}"
        );
    }
    // The same flags take 30s, 2m, 1h; a unit that is none of s, m, h, d, w is named.
    let (code, err) = lifeboat(tmp.path(), &["vm", "stop", "web", "--timeout", "2y"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unit \"y\" is not one of s, m, h, d, w"),
        "{err}"
    );
    let (code, err) = lifeboat(tmp.path(), &["vm", "stop", "web", "--timeout", "2m"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("VM web is not defined"), "{err}");
}

#[test]
fn a_vm_named_like_a_subcommand_is_named_with_its_host() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, err) = lifeboat(tmp.path(), &["failover", "list", "--planned"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("to fail over a VM named list, write it with its host: `lifeboat failover HOST/list --planned`"),
        "{err}"
    );
    // Help says which is which: `vm` is this host's, `vms` every host's.
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("(Every enrolled host's VMs, from the server: `lifeboat vms list`.)"),
        "{help}"
    );
    assert!(
        help.contains("(This host's own QEMU-driver VMs without a server: `lifeboat vm`.)"),
        "{help}"
    );
}

/// `protect` waits for the first point by default; `--no-wait` returns at once, so a
/// bound on the wait (or asking to wait) with it is a contradiction, refused at parsing.
#[test]
fn protect_no_wait_contradicts_a_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "protect",
        "web",
        "--vault",
        "file:///v",
        "--recovery-host",
        "b",
    ];
    for extra in [
        &["--no-wait", "--timeout", "5m"][..],
        &["--no-wait", "--wait"],
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, err) = lifeboat(tmp.path(), &args);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(
            err.contains("--no-wait") && err.contains("cannot be used"),
            "{err}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args(["protect", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--no-wait") && help.contains("instead of waiting for the"),
        "{help}"
    );
}
