//! kill -9 at random moments during `put-image` and during `gc`, 50 times over: afterwards
//! `verify` is clean (no manifest names a missing or damaged object) and every committed
//! point restores to exactly one of the images that were stored.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ITERATIONS: usize = 50;
const SIZE: usize = 3 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn digest(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

struct Vault {
    tmp: tempfile::TempDir,
    url: String,
    key: std::path::PathBuf,
}

impl Vault {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
        c.args(["vault", "--vault", &self.url, "--key-file"])
            .arg(&self.key)
            .args(args)
            .env_remove("LIFEBOAT_PASSPHRASE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// Lets `child` run for `delay`, then SIGKILLs it; true if it finished by itself, successfully.
fn kill_after(mut child: Child, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() >= deadline {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kill_9_during_put_image_and_gc_never_tears_the_vault() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("vault").display());
    let key = tmp.path().join("vault.key");
    let init = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args([
            "vault",
            "--vault",
            &url,
            "init",
            "--chunk-size",
            "64K",
            "--pack-size",
            "1M",
        ])
        .env("LIFEBOAT_PASSPHRASE", "crash test")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let export = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args(["vault", "--vault", &url, "key", "export"])
        .arg(&key)
        .env("LIFEBOAT_PASSPHRASE", "crash test")
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let v = Vault { tmp, url, key };

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut image = vec![0u8; SIZE];
    let mut attempted = HashSet::new();
    let (mut puts_done, mut puts_killed, mut gcs_killed) = (0, 0, 0);
    let img_path = v.tmp.path().join("image.raw");
    // Kill moments are drawn from the time a whole put and gc take on this machine, so the
    // test kills and completes both kinds of run however fast or busy the machine is.
    std::fs::write(&img_path, &image).unwrap();
    attempted.insert(digest(&image));
    let img = img_path.to_str().unwrap().to_string();
    let started = Instant::now();
    v.ok(&["put-image", "--name", "crashy", &img]);
    let put_ms = (started.elapsed().as_millis() as u64 * 3 / 2).max(10);
    let started = Instant::now();
    v.ok(&["gc", "--grace", "0s"]);
    let gc_ms = (started.elapsed().as_millis() as u64 * 3 / 2).max(10);
    for i in 0..ITERATIONS {
        // Change a few regions: random data, text, or zeros (holes).
        for _ in 0..1 + rng.below(4) {
            let off = rng.below(SIZE as u64 - 300_000) as usize;
            let len = 1 + rng.below(300_000) as usize;
            let kind = rng.below(3);
            for b in &mut image[off..off + len] {
                *b = match kind {
                    0 => rng.next() as u8,
                    1 => b'x',
                    _ => 0,
                };
            }
        }
        std::fs::write(&img_path, &image).unwrap();
        attempted.insert(digest(&image));

        let img = img_path.to_str().unwrap().to_string();
        let mut args = vec!["put-image", "--name", "crashy"];
        if i % 4 != 0 {
            args.extend(["--parent", "latest"]);
        }
        args.push(&img);
        let child = v.cmd(&args).spawn().unwrap();
        if kill_after(child, Duration::from_millis(rng.below(put_ms))) {
            puts_done += 1;
        } else {
            puts_killed += 1;
        }
        if i % 2 == 1 {
            let child = v.cmd(&["gc", "--grace", "0s"]).spawn().unwrap();
            if !kill_after(child, Duration::from_millis(rng.below(gc_ms))) {
                gcs_killed += 1;
            }
        }
    }
    assert!(
        puts_killed >= 10 && puts_done >= 5,
        "the test must both kill and finish writers: {puts_killed} killed, {puts_done} done"
    );
    assert!(gcs_killed >= 3, "the test must kill gc runs: {gcs_killed}");

    v.ok(&["gc", "--grace", "0s"]);
    let verify = v.cmd(&["--json", "verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "verify after the crashes: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let points: serde_json::Value = serde_json::from_str(&v.ok(&["--json", "list"])).unwrap();
    let points = points.as_array().unwrap();
    assert!(
        points.len() >= puts_done,
        "every finished put-image left a point"
    );
    for p in points {
        let id = p["point"].as_str().unwrap();
        let out = v.tmp.path().join("restored.raw");
        v.ok(&["restore", id, out.to_str().unwrap()]);
        let restored = std::fs::read(&out).unwrap();
        assert!(
            attempted.contains(&digest(&restored)),
            "point {id} restores to bytes that were never stored"
        );
    }
}
