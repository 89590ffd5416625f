//! The tools under test, each driven through its own command line on the same two
//! images: Lifeboat (`lifeboat vault …`, once per chunk size), borg (repokey, lz4) and
//! restic (repository v2). Each stores the image, then the changed copy on top of it,
//! then restores the changed copy; every restore is compared with the changed image.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::child::{allocated, du, same_bytes, Logs, Step};

const PASSPHRASE: &str = "lifeboat-bench vault passphrase";

/// The two images and the changed-range list, shared by every tool.
pub struct Inputs {
    /// The base image and its changed copy, in one directory so borg and restic can
    /// store them by a short relative name.
    pub data_dir: PathBuf,
    pub base: &'static str,
    pub changed: &'static str,
    pub ranges: PathBuf,
}

impl Inputs {
    fn base(&self) -> PathBuf {
        self.data_dir.join(self.base)
    }
    fn changed(&self) -> PathBuf {
        self.data_dir.join(self.changed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolResult {
    /// `lifeboat 128K`, `borg lz4`, `restic`.
    pub tool: String,
    /// Lifeboat only: the vault's chunk size.
    pub chunk_size: Option<u64>,
    pub full: Step,
    /// The changed copy on top of the first point/archive/snapshot. For Lifeboat: with
    /// `--changed`, reading only the listed ranges.
    pub incremental: Step,
    /// Lifeboat only: the same incremental without `--changed` (reads the whole image
    /// and compares chunk digests with the parent's), on top of the full point.
    pub incremental_digest: Option<Step>,
    pub restore: Step,
    /// Repository bytes on disk (allocated) after the full backup.
    pub stored_after_full: u64,
    /// What the incremental added to it.
    pub growth: u64,
    /// Lifeboat only: what the digest-compare incremental added on top of that.
    pub growth_digest: Option<u64>,
    /// Bytes the restored image allocates (holes kept or not).
    pub restore_allocated: u64,
    /// The largest peak RSS of any of this tool's steps.
    pub peak_rss: u64,
}

fn max_rss(steps: &[Step]) -> u64 {
    steps.iter().map(|s| s.peak_rss).max().unwrap_or(0)
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

/// `point.point` of `lifeboat --json vault put-image`'s report.
fn point_id(label: &str, json: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .with_context(|| format!("{label}: put-image printed no JSON report: {json:?}"))?;
    v["point"]["point"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{label}: no point id in {json:?}"))
}

pub fn lifeboat(bin: &Path, work: &Path, inputs: &Inputs, chunk_size: u64) -> Result<ToolResult> {
    let tag = format!("{}K", chunk_size >> 10);
    let dir = work.join(format!("lifeboat-{tag}"));
    fresh_dir(&dir)?;
    let vault_dir = dir.join("vault");
    let logs = Logs {
        dir: dir.clone(),
        tool: format!("lifeboat {tag}"),
    };
    let url = format!("file://{}", vault_dir.display());
    let lb = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.env("LIFEBOAT_PASSPHRASE", PASSPHRASE)
            .env_remove("LIFEBOAT_KEY_FILE")
            .args(["--json", "vault", "--vault", &url])
            .args(args);
        c
    };
    let label = |step: &str| format!("lifeboat {tag} {step}");
    logs.run("init", &mut lb(&["init", "--chunk-size", &tag]))?;
    let empty = du(&vault_dir)?;

    let base = inputs.base();
    let changed = inputs.changed();
    let (full, out) = logs.run_cold("full", lb(&["put-image", "--name", "bench"]).arg(&base))?;
    let full_point = point_id(&label("full"), &out)?;
    let after_full = du(&vault_dir)?;

    let (incremental, out) = logs.run_cold(
        "incremental",
        lb(&[
            "put-image",
            "--name",
            "bench",
            "--parent",
            &full_point,
            "--changed",
        ])
        .arg(&inputs.ranges)
        .arg(&changed),
    )?;
    let inc_point = point_id(&label("incremental"), &out)?;
    let after_inc = du(&vault_dir)?;

    let restored = dir.join("restored.raw");
    let (restore, _) = logs.run_cold("restore", lb(&["restore", &inc_point]).arg(&restored))?;
    same_bytes(&label("restore"), &restored, &changed)?;
    let restore_allocated = allocated(&restored)?;
    std::fs::remove_file(&restored)?;

    // Last, so that it cannot help the steps above; it builds on the full point too.
    let (incremental_digest, _) = logs.run_cold(
        "incremental-digest",
        lb(&["put-image", "--name", "bench", "--parent", &full_point]).arg(&changed),
    )?;
    let after_digest = du(&vault_dir)?;

    let steps = [full, incremental, restore, incremental_digest];
    Ok(ToolResult {
        tool: format!("lifeboat {tag}"),
        chunk_size: Some(chunk_size),
        full,
        incremental,
        incremental_digest: Some(incremental_digest),
        restore,
        stored_after_full: after_full - empty,
        growth: after_inc - after_full,
        growth_digest: Some(after_digest - after_inc),
        restore_allocated,
        peak_rss: max_rss(&steps),
    })
}

/// Checks that `tool` runs (`tool version_arg`), or says how to install it.
pub fn require(tool: &str, version_arg: &str, package: &str) -> Result<()> {
    match Command::new(tool).arg(version_arg).output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => bail!("{tool} not found: apt-get install {package} (or pass --skip-peers)"),
    }
}

pub fn borg(work: &Path, inputs: &Inputs) -> Result<ToolResult> {
    let dir = work.join("borg");
    fresh_dir(&dir)?;
    let repo = dir.join("repo");
    let logs = Logs {
        dir: dir.clone(),
        tool: "borg".into(),
    };
    let borg = |args: &[&str]| {
        let mut c = Command::new("borg");
        c.env("BORG_PASSPHRASE", PASSPHRASE)
            // Keys, cache and security dirs inside the work dir: nothing left behind.
            .env("BORG_BASE_DIR", &dir)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "no")
            .current_dir(&inputs.data_dir)
            .args(args);
        c
    };
    let repo_s = repo.to_str().context("work dir path is not UTF-8")?;
    logs.run("init", &mut borg(&["init", "-e", "repokey", repo_s]))?;
    let empty = du(&repo)?;
    let archive = |name: &str| format!("{repo_s}::{name}");
    let (full, _) = logs.run_cold(
        "full",
        &mut borg(&[
            "create",
            "--compression",
            "lz4",
            &archive("full"),
            inputs.base,
        ]),
    )?;
    let after_full = du(&repo)?;
    let (incremental, _) = logs.run_cold(
        "incremental",
        &mut borg(&[
            "create",
            "--compression",
            "lz4",
            &archive("changed"),
            inputs.changed,
        ]),
    )?;
    let after_inc = du(&repo)?;
    let target = dir.join("restore");
    fresh_dir(&target)?;
    let (restore, _) = logs.run_cold(
        "restore",
        borg(&["extract", "--sparse", &archive("changed")]).current_dir(&target),
    )?;
    peer_result(
        "borg lz4",
        &target,
        inputs,
        [full, incremental, restore],
        [empty, after_full, after_inc],
    )
}

pub fn restic(work: &Path, inputs: &Inputs) -> Result<ToolResult> {
    let dir = work.join("restic");
    fresh_dir(&dir)?;
    let repo = dir.join("repo");
    let logs = Logs {
        dir: dir.clone(),
        tool: "restic".into(),
    };
    let restic = |args: &[&str]| {
        let mut c = Command::new("restic");
        c.env("RESTIC_PASSWORD", PASSPHRASE)
            .env("RESTIC_REPOSITORY", &repo)
            .env("RESTIC_CACHE_DIR", dir.join("cache"))
            .current_dir(&inputs.data_dir)
            .args(args);
        c
    };
    logs.run("init", &mut restic(&["init", "--repository-version", "2"]))?;
    let empty = du(&repo)?;
    let (full, _) = logs.run_cold("full", &mut restic(&["backup", inputs.base]))?;
    let after_full = du(&repo)?;
    let (incremental, out) = logs.run_cold(
        "incremental",
        &mut restic(&["backup", "--json", inputs.changed]),
    )?;
    let after_inc = du(&repo)?;
    let snapshot = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["snapshot_id"].as_str().map(str::to_string))
        .context("restic backup --json printed no snapshot_id")?;
    let target = dir.join("restore");
    fresh_dir(&target)?;
    let target_s = target.to_str().context("work dir path is not UTF-8")?;
    let (restore, _) = logs.run_cold(
        "restore",
        &mut restic(&["restore", &snapshot, "--target", target_s]),
    )?;
    peer_result(
        "restic",
        &target,
        inputs,
        [full, incremental, restore],
        [empty, after_full, after_inc],
    )
}

/// A peer's row, once its restore of the changed image into `target` is checked byte for
/// byte: `steps` are its full, incremental and restore steps, `sizes` the repository's
/// size empty, after the full and after the incremental backup.
fn peer_result(
    tool: &str,
    target: &Path,
    inputs: &Inputs,
    steps: [Step; 3],
    sizes: [u64; 3],
) -> Result<ToolResult> {
    let restored = target.join(inputs.changed);
    same_bytes(&format!("{tool} restore"), &restored, &inputs.changed())?;
    let restore_allocated = allocated(&restored)?;
    std::fs::remove_dir_all(target)?;
    let [full, incremental, restore] = steps;
    let [empty, after_full, after_inc] = sizes;
    Ok(ToolResult {
        tool: tool.into(),
        chunk_size: None,
        full,
        incremental,
        incremental_digest: None,
        restore,
        stored_after_full: after_full - empty,
        growth: after_inc - after_full,
        growth_digest: None,
        restore_allocated,
        peak_rss: max_rss(&steps),
    })
}
