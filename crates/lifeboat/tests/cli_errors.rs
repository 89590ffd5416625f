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

#[test]
fn an_agent_asked_for_the_libvirt_driver_says_it_is_not_in_this_version() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (code, err) = lifeboat(
        &home,
        &[
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--hypervisor",
            "libvirt",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("libvirt driver is not in this version") && err.contains("--hypervisor qemu"),
        "{err}"
    );
    let (code, err) = lifeboat(&home, &["agent", "--hypervisor", "xen"]);
    assert_eq!(code, 2, "usage errors exit 2: {err}");
}
