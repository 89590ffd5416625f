//! `lifeboat cbt full|cut|status|reset` through the real binary, on the test guest with a
//! data disk (vdb) that only this test writes, from inside the guest: a full cut carries
//! every allocated block and builds a replica equal to the disk; an incremental cut carries
//! exactly the 64 KiB granules the guest wrote, and applied, keeps the replica equal;
//! `--abort` leaves the changes for the next cut; after `reset` a cut must be full again.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cluster::{boot_guest, lifeboat, run_ok};
use lifeboat_testkit::SerialConsole;
use serde_json::Value;

/// The dirty bitmap's granularity (QEMU's default for these disks).
const GRANULE: u64 = 64 << 10;
const DATA_MIB: u64 = 16;
/// vdb's data at creation: its first MiBs, the rest is holes.
const ALLOCATED_MIB: u64 = 4;

fn cbt(home: &Path, args: &[&str]) -> Value {
    let mut c = lifeboat(home);
    c.args(["--json", "cbt"]).args(args);
    let out = run_ok(c);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The granules the cut's extents on `disk` cover.
fn granules(report: &Value, disk: &str) -> BTreeSet<u64> {
    let d = report["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["disk"] == disk)
        .unwrap_or_else(|| panic!("no disk {disk}: {report}"));
    let mut out = BTreeSet::new();
    for e in d["extents"].as_array().unwrap() {
        let (off, len) = (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        assert!(off % GRANULE == 0 && len % GRANULE == 0, "{e}");
        out.extend((off..off + len).step_by(GRANULE as usize));
    }
    out
}

/// The granules a write of `len` bytes at `off` touches.
fn touched(off: u64, len: u64) -> BTreeSet<u64> {
    (off / GRANULE * GRANULE..off + len)
        .step_by(GRANULE as usize)
        .collect()
}

/// Writes random bytes to the guest's /dev/vdb at `off` (4 KiB aligned), synced.
async fn guest_writes(console: &mut SerialConsole, off: u64, len: u64) -> BTreeSet<u64> {
    console
        .run(
            &format!(
                "dd if=/dev/urandom of=/dev/vdb bs=4096 seek={} count={} conv=fsync 2>/dev/null && sync",
                off / 4096,
                len / 4096
            ),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    touched(off, len)
}

/// Whether the raw replica equals the live qcow2 disk (read while QEMU holds it).
fn same(replica: &Path, disk: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-U", "-f", "raw", "-F", "qcow2"])
        .arg(replica)
        .arg(disk)
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbt_cuts_carry_exactly_what_the_guest_wrote() {
    let tmp = tempfile::Builder::new()
        .prefix("lbc")
        .tempdir_in("/tmp")
        .unwrap();
    let home = tmp.path().join("host");
    std::fs::create_dir_all(&home).unwrap();
    let raw = tmp.path().join("data.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(DATA_MIB << 20).unwrap();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..ALLOCATED_MIB << 20)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 0).unwrap();
    drop(f);
    let data = tmp.path().join("data.qcow2");
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&data);
    run_ok(c);
    let (_vm, mut console) = boot_guest(&home, "web", std::slice::from_ref(&data)).await;
    let replica = tmp.path().join("replica.raw");
    let replica_vdb = tmp.path().join("replica-vdb.raw");
    let status = |home: &Path| cbt(home, &["status", "web"]);

    assert_eq!(status(&home)["state"], "not_tracking");
    let mut c = lifeboat(&home);
    c.args(["cbt", "cut", "web"]);
    let refused = c.output().unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("start it with a full cut first"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Full: every allocated block of vdb (its data, not its holes), a replica equal to it.
    let full = cbt(&home, &["full", "web", "--out", replica.to_str().unwrap()]);
    assert_eq!(
        (full["kind"].as_str(), full["committed"].as_bool()),
        (Some("full"), Some(true))
    );
    assert_eq!(
        granules(&full, "vdb"),
        touched(0, ALLOCATED_MIB << 20),
        "{full}"
    );
    assert!(same(&replica_vdb, &data), "the full cut's vdb differs");
    assert_eq!(status(&home)["state"], "tracking");

    // Incremental: exactly the granules written (a 4 KiB write in the data, 192 KiB over
    // a hole), and applied, the replica equals the disk again.
    let mut wrote = guest_writes(&mut console, 300 * 4096, 4096).await;
    wrote.extend(guest_writes(&mut console, 6 << 20, 3 * GRANULE).await);
    let dirty = status(&home)["dirty_bytes"].as_u64().unwrap();
    assert!(dirty >= wrote.len() as u64 * GRANULE, "{dirty}");
    let cut = cbt(&home, &["cut", "web", "--apply", replica.to_str().unwrap()]);
    assert_eq!(cut["kind"], "incremental", "{cut}");
    assert_eq!(granules(&cut, "vdb"), wrote, "{cut}");
    assert!(
        same(&replica_vdb, &data),
        "the replica differs after the cut"
    );

    // --abort: the changes stay for the next cut, which carries them again.
    let wrote = guest_writes(&mut console, 10 << 20, 4096).await;
    let aborted = cbt(&home, &["cut", "web", "--abort"]);
    assert_eq!(aborted["committed"], false, "{aborted}");
    assert_eq!(granules(&aborted, "vdb"), wrote, "{aborted}");
    let cut = cbt(&home, &["cut", "web", "--apply", replica.to_str().unwrap()]);
    assert_eq!(granules(&cut, "vdb"), wrote, "{cut}");
    assert!(
        same(&replica_vdb, &data),
        "the replica differs after --abort"
    );

    // reset: tracking gone, an incremental cut refused, the next cut is a full one that
    // carries every allocated block again (the data and what the guest added).
    let reset = cbt(&home, &["reset", "web"]);
    assert_eq!(reset["reset"], "web", "{reset}");
    assert_eq!(status(&home)["state"], "not_tracking");
    let mut c = lifeboat(&home);
    c.args(["cbt", "cut", "web"]);
    assert!(!c.output().unwrap().status.success());
    let fresh = tmp.path().join("fresh.raw");
    let full = cbt(&home, &["full", "web", "--out", fresh.to_str().unwrap()]);
    assert_eq!(full["kind"], "full", "{full}");
    let all = granules(&full, "vdb");
    assert!(
        all.is_superset(&touched(0, ALLOCATED_MIB << 20)) && all.contains(&(6 << 20)),
        "{full}"
    );
    assert!(same(&tmp.path().join("fresh-vdb.raw"), &data));
}
