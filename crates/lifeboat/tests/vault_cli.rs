//! `lifeboat vault …` end to end through the real binary on a folder vault: store images
//! (raw and qcow2, full and incremental), list, restore bit for bit, and manage keys.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

struct Env {
    tmp: tempfile::TempDir,
    url: String,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file://{}", tmp.path().join("vault").display());
        Env { tmp, url }
    }
    fn path(&self, f: &str) -> std::path::PathBuf {
        self.tmp.path().join(f)
    }
    fn run(&self, pass: Option<&str>, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
        c.args(["vault", "--vault", &self.url]).args(args);
        c.env_remove("LIFEBOAT_PASSPHRASE")
            .env_remove("LIFEBOAT_KEY_FILE");
        if let Some(p) = pass {
            c.env("LIFEBOAT_PASSPHRASE", p);
        }
        c.output().unwrap()
    }
    fn ok(&self, pass: Option<&str>, args: &[&str]) -> String {
        let out = self.run(pass, args);
        assert!(
            out.status.success(),
            "lifeboat vault {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// A sparse 48 MiB image: text at 1 MiB, random data at 30 MiB, holes elsewhere.
fn make_image(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(48 << 20).unwrap();
    let text: Vec<u8> = b"a line of a log file\n"
        .iter()
        .cycle()
        .take(3 << 20)
        .copied()
        .collect();
    f.write_all_at(&text, 1 << 20).unwrap();
    let mut x: u32 = 12345;
    let random: Vec<u8> = (0..(2 << 20))
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    f.write_all_at(&random, 30 << 20).unwrap();
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn mode(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
}

#[test]
fn images_go_in_and_come_back_bit_for_bit() {
    // The umask most hosts run with: a file made without an explicit mode is 0644.
    // SAFETY: umask only swaps the process's file-mode mask.
    unsafe {
        libc::umask(0o022);
    }
    let env = Env::new();
    let pass = Some("s3cret pass");
    env.ok(pass, &["init", "--chunk-size", "64K"]);

    let img = env.path("disk.raw");
    make_image(&img);
    let first = json(&env.ok(
        pass,
        &[
            "--json",
            "put-image",
            "--name",
            "web1",
            img.to_str().unwrap(),
        ],
    ));
    let p1 = first["point"]["point"].as_str().unwrap().to_string();
    assert!(
        first["bytes_read"].as_u64().unwrap() < 8 << 20,
        "holes are not read: {first}"
    );

    // Change 2 small ranges and store only those, on top of the first point.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(b"CHANGED", 1 << 20).unwrap();
    f.write_all_at(&[7u8; 100_000], 40 << 20).unwrap();
    let ranges = env.path("changed.txt");
    std::fs::write(&ranges, format!("{} 7\n{} 100000\n", 1 << 20, 40 << 20)).unwrap();
    let second = json(&env.ok(
        pass,
        &[
            "--json",
            "put-image",
            "--name",
            "web1",
            "--parent",
            "latest",
            "--changed",
            ranges.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    ));
    assert!(
        second["new_bytes_stored"].as_u64().unwrap() < 400 << 10,
        "{second}"
    );
    let p2 = second["point"]["point"].as_str().unwrap().to_string();

    let out = env.path("p2.raw");
    env.ok(pass, &["restore", &p2, out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    assert_eq!(mode(&out), 0o600, "a restored disk is its owner's only");

    // A qcow2 image, and a qcow2 restore, with a digest-compare pass against p1.
    let q = env.path("disk.qcow2");
    assert!(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&img)
        .arg(&q)
        .status()
        .unwrap()
        .success());
    let third = json(&env.ok(
        pass,
        &[
            "--json",
            "put-image",
            "--name",
            "web1",
            "--parent",
            &p1,
            q.to_str().unwrap(),
        ],
    ));
    assert!(
        third["new_chunks"].as_u64().unwrap() <= 4,
        "only the changed chunks differ: {third}"
    );
    let p3 = third["point"]["point"].as_str().unwrap().to_string();
    let out_q = env.path("p3.qcow2");
    env.ok(pass, &["restore", &p3, out_q.to_str().unwrap()]);
    let same = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(&out_q)
        .arg(&img)
        .status()
        .unwrap();
    assert!(same.success(), "qcow2 restore differs from the image");
    assert_eq!(mode(&out_q), 0o600, "a restored disk is its owner's only");

    let listed = json(&env.ok(pass, &["--json", "list", "--name", "web1"]));
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["point"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [p1.as_str(), p2.as_str(), p3.as_str()]);
}

#[test]
fn keys_passphrases_and_their_errors() {
    let env = Env::new();
    env.ok(Some("first"), &["init"]);
    let wrong = env.run(Some("nope"), &["list"]);
    assert_eq!(wrong.status.code(), Some(7), "a wrong passphrase exits 7");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let none = env.run(None, &["list"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("LIFEBOAT_PASSPHRASE"));

    let key = env.path("vault.key");
    env.ok(Some("first"), &["key", "export", key.to_str().unwrap()]);
    let mode = std::fs::metadata(&key).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    env.ok(None, &["--key-file", key.to_str().unwrap(), "list"]);

    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    let passwd = c
        .args(["vault", "--vault", &env.url, "key", "passwd"])
        .env("LIFEBOAT_PASSPHRASE", "first")
        .env("LIFEBOAT_NEW_PASSPHRASE", "second")
        .output()
        .unwrap();
    assert!(
        passwd.status.success(),
        "{}",
        String::from_utf8_lossy(&passwd.stderr)
    );
    assert!(!env.run(Some("first"), &["list"]).status.success());
    env.ok(Some("second"), &["list"]);
    env.ok(None, &["--key-file", key.to_str().unwrap(), "list"]);

    // add-passphrase (with the key file): a second key slot; the new passphrase opens the
    // vault, the old one still does, and a wrong one still does not.
    let added = json(&env.ok(
        Some("third"),
        &[
            "--json",
            "--key-file",
            key.to_str().unwrap(),
            "key",
            "add-passphrase",
        ],
    ));
    assert_eq!(added["key_slots"], 2, "{added}");
    let p1 = env.path("p1.raw");
    std::fs::write(&p1, b"what the new passphrase must read back".repeat(1000)).unwrap();
    let put = json(&env.ok(
        Some("third"),
        &[
            "--json",
            "put-image",
            "--name",
            "web1",
            p1.to_str().unwrap(),
        ],
    ));
    let id = put["point"]["point"].as_str().unwrap().to_string();
    for pass in ["second", "third"] {
        let listed = json(&env.ok(Some(pass), &["--json", "list"]));
        assert_eq!(listed[0]["point"], id.as_str(), "{pass}: {listed}");
        let back = env.path(&format!("back-{pass}.raw"));
        env.ok(Some(pass), &["restore", &id, back.to_str().unwrap()]);
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&p1).unwrap());
    }
    assert_eq!(env.run(Some("first"), &["list"]).status.code(), Some(7));
    // Without a key file it is refused, saying what it needs.
    let refused = env.run(Some("fourth"), &["key", "add-passphrase"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--key-file"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let again = env.run(Some("x"), &["init"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn images_are_taken_for_what_their_name_says_and_unsafe_ones_are_refused() {
    let env = Env::new();
    let pass = Some("pw");
    env.ok(pass, &["init", "--chunk-size", "64K"]);

    // A raw disk whose guest wrote a qcow2 header (with a backing file) at sector 0: it
    // is stored as the raw bytes it is, never opened as qcow2.
    let secret = env.path("host-secret.txt");
    std::fs::write(&secret, "host secret").unwrap();
    let tricky = env.path("guest.raw");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&tricky)
        .arg("1M")
        .status()
        .unwrap();
    assert!(made.success());
    let put = json(&env.ok(
        pass,
        &[
            "--json",
            "put-image",
            "--name",
            "g",
            tricky.to_str().unwrap(),
        ],
    ));
    let out = env.path("g.raw");
    env.ok(
        pass,
        &[
            "restore",
            put["point"]["point"].as_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&tricky).unwrap()
    );

    // As qcow2, the backing file is refused rather than read.
    let refused = env.run(
        pass,
        &[
            "put-image",
            "--name",
            "g",
            "--format",
            "qcow2",
            tricky.to_str().unwrap(),
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("backing file"));

    // --changed on top of a parent of another size would zero everything else: refused.
    let img = env.path("disk.raw");
    make_image(&img);
    env.ok(pass, &["put-image", "--name", "r", img.to_str().unwrap()]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let ranges = env.path("r.txt");
    std::fs::write(&ranges, "0 4096\n").unwrap();
    let resized = env.run(
        pass,
        &[
            "put-image",
            "--name",
            "r",
            "--parent",
            "latest",
            "--changed",
            ranges.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    assert_eq!(resized.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&resized.stderr).contains("drop --changed"));
    // In full it works and restores bit for bit.
    let full = json(&env.ok(
        pass,
        &[
            "--json",
            "put-image",
            "--name",
            "r",
            "--parent",
            "latest",
            img.to_str().unwrap(),
        ],
    ));
    let out = env.path("r.raw");
    env.ok(
        pass,
        &[
            "restore",
            full["point"]["point"].as_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());

    let empty = env.path("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    let e = env.run(pass, &["put-image", "--name", "e", empty.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("empty"));
}

#[test]
fn a_vault_has_a_key_per_vm_unless_asked_to_share_one() {
    let scoped = Env::new();
    scoped.ok(Some("pw"), &["init", "--chunk-size", "64K"]);
    let config = |env: &Env| -> serde_json::Value {
        json(&std::fs::read_to_string(env.tmp.path().join("vault/config")).unwrap())
    };
    assert_eq!(config(&scoped)["lifeboat_vault"], 2);
    let img = scoped.path("web.raw");
    make_image(&img);
    scoped.ok(
        Some("pw"),
        &["put-image", "--name", "web1", img.to_str().unwrap()],
    );
    scoped.ok(
        Some("pw"),
        &["put-image", "--name", "db1", img.to_str().unwrap()],
    );

    // One VM's key: a file that opens that VM's points and holds no master key.
    let web_key = scoped.path("web1.key");
    scoped.ok(
        Some("pw"),
        &["key", "export", web_key.to_str().unwrap(), "--vm", "web1"],
    );
    let file = json(&std::fs::read_to_string(&web_key).unwrap());
    assert_eq!(
        (file["lifeboat_vault_key"].as_u64(), file["scope"].as_str()),
        (Some(2), Some("web1"))
    );
    assert!(file.get("master_key").is_none(), "{file}");
    let with_key = |args: &[&str]| {
        let mut all = vec!["--key-file", web_key.to_str().unwrap()];
        all.extend_from_slice(args);
        scoped.run(None, &all)
    };
    // It lists and restores that VM's points; another VM's point is not found with it.
    let listed = json(&String::from_utf8_lossy(
        &with_key(&["--json", "list"]).stdout,
    ));
    let mine = listed.as_array().unwrap();
    assert_eq!(mine.len(), 1, "{listed}");
    assert_eq!(mine[0]["name"], "web1");
    let out = scoped.path("web1.out");
    let id = mine[0]["point"].as_str().unwrap();
    assert!(with_key(&["restore", id, out.to_str().unwrap()])
        .status
        .success());
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    let all = json(&scoped.ok(Some("pw"), &["--json", "list"]));
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    let db = all
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "db1")
        .unwrap()["point"]
        .as_str()
        .unwrap()
        .to_string();
    let other = with_key(&["restore", &db, scoped.path("db1.out").to_str().unwrap()]);
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains(&format!("no recovery point {db}")), "{err}");
    // A VM's key cannot add a passphrase (that needs the master key).
    let added = with_key(&["key", "add-passphrase"]);
    assert!(
        String::from_utf8_lossy(&added.stderr).contains("master key"),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    // --shared-key: format 1, one key for every VM, so no key of one VM to export.
    let shared = Env::new();
    shared.ok(Some("pw"), &["init", "--shared-key"]);
    assert_eq!(config(&shared)["lifeboat_vault"], 1);
    let refused = shared.run(
        Some("pw"),
        &[
            "key",
            "export",
            shared.path("k").to_str().unwrap(),
            "--vm",
            "web1",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only a format-2 vault has a key per VM"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
