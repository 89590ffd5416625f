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
