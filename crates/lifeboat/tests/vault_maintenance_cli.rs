//! `lifeboat vault prune` and `vault stats` through the real binary on a folder vault.
//!
//! prune: points planted at chosen ages (real points' manifests sealed again under older
//! ids, as a month of syncs would have left them) are kept or deleted exactly as README's
//! `--keep-within 24h --keep-hourly 7d --keep-daily 4w` says, `--dry-run` deletes nothing,
//! and after `gc` every kept point still verifies and restores bit for bit.
//! stats: its numbers are what was written, counted here from the images themselves and
//! from the folder's files.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use chrono::{DateTime, Duration, DurationRound, Utc};
use lifeboat_vault::backend::{Backend, VaultUrl};
use lifeboat_vault::format::{self, Name, PointId};
use lifeboat_vault::{PointRef, Unlock, Vault};
use serde_json::Value;

const PASS: &str = "prune and stats";
const CHUNK: usize = 64 << 10;

struct Env {
    tmp: tempfile::TempDir,
    url: String,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file://{}", tmp.path().join("vault").display());
        let env = Env { tmp, url };
        env.ok(&["init", "--chunk-size", "64K"]);
        env
    }
    fn path(&self, f: &str) -> PathBuf {
        self.tmp.path().join(f)
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .args(["vault", "--vault", &self.url])
            .args(args)
            .env("LIFEBOAT_PASSPHRASE", PASS)
            .env_remove("LIFEBOAT_KEY_FILE")
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lifeboat vault {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
    /// `put-image`'s report.
    fn put(&self, name: &str, image: &Path, parent: Option<&str>) -> Value {
        let mut args = vec!["put-image", "--name", name];
        if let Some(p) = parent {
            args.extend(["--parent", p]);
        }
        args.push(image.to_str().unwrap());
        self.json(&args)
    }
    /// The ids `vault list` shows, per name.
    fn listed(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in self.json(&["list"]).as_array().unwrap() {
            out.entry(p["name"].as_str().unwrap().to_string())
                .or_default()
                .insert(p["point"].as_str().unwrap().to_string());
        }
        out
    }
    fn restores_to(&self, point: &str, image: &Path) {
        let out = self.path(&format!("restored-{point}.raw"));
        self.ok(&["restore", point, out.to_str().unwrap()]);
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(image).unwrap(),
            "point {point} does not restore to {}",
            image.display()
        );
        std::fs::remove_file(out).unwrap();
    }
}

/// A sparse 8 MiB image: 1 MiB of random bytes at 1 MiB, 512 KiB of one repeated 64 KiB
/// block at 4 MiB (8 equal chunks), holes elsewhere.
fn image(path: &Path, seed: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(8 << 20).unwrap();
    f.write_all_at(&lifeboat_testkit::random_bytes(seed, 1 << 20), 1 << 20)
        .unwrap();
    let block = lifeboat_testkit::random_bytes(seed + 1000, CHUNK);
    for i in 0..8 {
        f.write_all_at(&block, (4 << 20) + i * CHUNK as u64)
            .unwrap();
    }
}

/// The image's chunks that are not all zeros, in order.
fn data_chunks(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .chunks(CHUNK)
        .filter(|c| c.iter().any(|&b| b != 0))
        .map(<[u8]>::to_vec)
        .collect()
}

fn distinct(chunks: &[Vec<u8>]) -> HashSet<&Vec<u8>> {
    chunks.iter().collect()
}

async fn open(url: &str) -> Vault {
    let backend = Backend::open(&VaultUrl::parse(url).unwrap(), Default::default())
        .await
        .unwrap();
    Vault::open(backend, Unlock::Passphrase(PASS.into()))
        .await
        .unwrap()
}

/// Seals `from`'s manifest again as a point of the same VM taken at `at`, with no parent:
/// a point as old syncs left it, holding `from`'s data. Returns its id.
async fn plant(vault: &Vault, from: &PointRef, at: DateTime<Utc>, random: u32) -> String {
    let mut m = vault.manifest(from).await.unwrap();
    m.point = PointId::from_parts(at.timestamp_millis() as u64, random).unwrap();
    m.parent = None;
    let keys = vault.keys_for(&from.name).unwrap();
    let (key, sealed) = format::seal_manifest(&keys, &m).unwrap();
    assert!(vault
        .backend()
        .put_if_absent(&key, Bytes::from(sealed))
        .await
        .unwrap());
    m.point.to_string()
}

fn point_ref(name: &str, id: &str) -> PointRef {
    PointRef {
        name: Name::new(name).unwrap(),
        point: id.parse().unwrap(),
    }
}

#[test]
fn prune_keeps_exactly_what_the_policy_says_and_kept_points_restore() {
    let env = Env::new();
    let (a, b) = (env.path("a.raw"), env.path("b.raw"));
    image(&a, 1);
    image(&b, 2);
    let web_a = env.put("web1", &a, None)["point"]["point"]
        .as_str()
        .unwrap()
        .to_string();
    let web_b = env.put("web1", &b, Some("latest"))["point"]["point"]
        .as_str()
        .unwrap()
        .to_string();
    let db_now = env.put("db1", &b, None)["point"]["point"]
        .as_str()
        .unwrap()
        .to_string();

    // Ages chosen against each rule, with margins of hours, never on a bucket's edge.
    let now = Utc::now();
    let hour = (now - Duration::days(3))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let day = (now - Duration::days(14))
        .duration_trunc(Duration::days(1))
        .unwrap();
    let (web, db) = (point_ref("web1", &web_a), point_ref("db1", &db_now));
    let ages = [
        ("within 24h", &web, now - Duration::hours(2)),
        ("hour's newest", &web, hour + Duration::minutes(40)),
        ("hour's older", &web, hour + Duration::minutes(10)),
        ("day's newest", &web, day + Duration::hours(20)),
        ("day's older", &web, day + Duration::hours(2)),
        ("past 4 weeks", &web, now - Duration::days(40)),
        ("db1 past 4 weeks", &db, now - Duration::days(40)),
    ];
    let planted: Vec<(&str, String)> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let vault = open(&env.url).await;
        let mut planted = Vec::new();
        for (n, (what, from, at)) in ages.iter().enumerate() {
            planted.push((*what, plant(&vault, from, *at, n as u32 + 1).await));
        }
        planted
    });
    let id = |what: &str| planted.iter().find(|(w, _)| *w == what).unwrap().1.clone();
    let before = env.listed();
    assert_eq!(before["web1"].len(), 8, "{before:?}");

    let policy = [
        "--keep-within",
        "24h",
        "--keep-hourly",
        "7d",
        "--keep-daily",
        "4w",
    ];
    let doomed: BTreeSet<String> = ["hour's older", "day's older", "past 4 weeks"]
        .iter()
        .map(|w| id(w))
        .chain([id("db1 past 4 weeks")])
        .collect();

    // --dry-run: the plan decides exactly that, and nothing goes.
    let mut args = vec!["prune"];
    args.extend(policy);
    args.push("--dry-run");
    let plan = env.json(&args);
    let mut decided = BTreeMap::new();
    for name in plan["names"].as_array().unwrap() {
        for d in name["decisions"].as_array().unwrap() {
            let keep = !d["keep"].as_array().unwrap().is_empty();
            decided.insert(d["point"].as_str().unwrap().to_string(), keep);
        }
    }
    for (name, points) in &before {
        for p in points {
            assert_eq!(
                decided.get(p),
                Some(&!doomed.contains(p)),
                "{name} point {p}: {plan:#}"
            );
        }
    }
    assert_eq!(env.listed(), before, "a dry run deleted points");
    let text = env.ok(&args);
    assert!(
        text.contains(&format!("Would delete {} point(s)", doomed.len())),
        "{text}"
    );
    for point in &doomed {
        assert!(text.contains(&format!("delete {point}")), "{text}");
    }

    // For real: exactly the doomed go, whatever their VM; all the rest stay.
    let mut args = vec!["prune"];
    args.extend(policy);
    env.ok(&args);
    let after = env.listed();
    let mut expected = before.clone();
    for set in expected.values_mut() {
        set.retain(|p| !doomed.contains(p));
    }
    assert_eq!(after, expected);
    assert_eq!(after["db1"], BTreeSet::from([db_now.clone()]));
    assert!(after["web1"].contains(&web_a) && after["web1"].contains(&web_b));

    // gc frees what no kept point needs; every kept point still verifies and restores.
    env.ok(&["gc", "--grace", "0s"]);
    env.ok(&["verify"]);
    env.restores_to(&web_a, &a);
    env.restores_to(&web_b, &b);
    env.restores_to(&db_now, &b);
    for what in ["within 24h", "hour's newest", "day's newest"] {
        env.restores_to(&id(what), &a);
    }
}

#[test]
fn stats_count_what_was_written() {
    let env = Env::new();
    let (a, b) = (env.path("a.raw"), env.path("b.raw"));
    image(&a, 1);
    // b: a with two chunks rewritten (one in the random run, one over a hole).
    std::fs::copy(&a, &b).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
    f.write_all_at(
        &lifeboat_testkit::random_bytes(77, CHUNK),
        (1 << 20) + 3 * CHUNK as u64,
    )
    .unwrap();
    f.write_all_at(&lifeboat_testkit::random_bytes(78, CHUNK), 7 << 20)
        .unwrap();
    drop(f);
    let puts = [
        env.put("web1", &a, None),
        env.put("web1", &b, Some("latest")),
        // The same data under another VM: a key per VM, so it is stored again.
        env.put("db1", &a, None),
    ];

    let s = env.json(&["stats"]);
    let (ca, cb) = (data_chunks(&a), data_chunks(&b));
    let u64_of = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("{v} in {s}"));
    assert_eq!(u64_of(&s["points"]), 3, "{s}");
    assert_eq!(u64_of(&s["names"]), 2, "{s}");
    assert_eq!(u64_of(&s["logical_bytes"]), 3 * (8 << 20), "{s}");
    // What a restore of each point writes: its chunks that are not holes.
    let data = |c: &[Vec<u8>]| (c.len() * CHUNK) as u64;
    assert_eq!(
        u64_of(&s["logical_data_bytes"]),
        2 * data(&ca) + data(&cb),
        "{s}"
    );
    // Chunk ids: equal data within one VM is one chunk, each VM has its own.
    let web_distinct: HashSet<&Vec<u8>> = distinct(&ca).union(&distinct(&cb)).copied().collect();
    let unique = web_distinct.len() + distinct(&ca).len();
    assert_eq!(u64_of(&s["unique_chunks"]), unique as u64, "{s}");
    assert_eq!(
        u64_of(&s["unique_plain_bytes"]),
        (unique * CHUNK) as u64,
        "{s}"
    );
    let ratio = s["dedup_ratio"].as_f64().unwrap();
    let expected = (2 * data(&ca) + data(&cb)) as f64 / (unique * CHUNK) as f64;
    assert!(
        (ratio - expected).abs() < 1e-9,
        "{ratio} vs {expected}: {s}"
    );
    // Stored bytes are the packs' files in the folder, to the byte.
    let packs = walk(&env.path("vault/packs"));
    assert_eq!(u64_of(&s["packs"]), packs.len() as u64, "{s}");
    assert_eq!(
        u64_of(&s["stored_bytes"]),
        packs
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum::<u64>(),
        "{s}"
    );
    // Per point, what put-image said it added: a's distinct chunks, then the 2 changed
    // ones, then a's distinct chunks again for db1.
    let rows = s["per_point"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{s}");
    for (row, put) in rows.iter().zip(&puts) {
        assert_eq!(row["point"], put["point"]["point"], "{s}");
        for field in ["new_chunks", "new_bytes_plain", "new_bytes_stored"] {
            assert_eq!(row[field], put[field], "{field}: {row} vs {put}");
        }
    }
    let new_chunks: Vec<u64> = rows.iter().map(|r| u64_of(&r["new_chunks"])).collect();
    let a_distinct = distinct(&ca).len() as u64;
    assert_eq!(new_chunks, [a_distinct, 2, a_distinct], "{s}");
    assert_eq!(u64_of(&rows[1]["new_bytes_plain"]), 2 * CHUNK as u64, "{s}");
    // Random data does not compress: what the packs hold is at least the new chunks.
    let stored_new: u64 = rows.iter().map(|r| u64_of(&r["new_bytes_stored"])).sum();
    assert!(stored_new <= u64_of(&s["stored_bytes"]), "{s}");
    assert!(stored_new >= unique as u64 * CHUNK as u64, "{s}");

    // The text output says the same.
    let text = env.ok(&["stats"]);
    assert!(text.contains("3 point(s) of 2 name(s)"), "{text}");
    assert!(
        text.contains(&format!("({unique} unique chunks)")),
        "{text}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
