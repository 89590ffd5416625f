//! The test guest image: built by `guest/build.sh` (cached on disk by that script,
//! memoised here for the process), copied per test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/build.sh")
}

/// Builds (or finds cached) the test guest and returns the path of its qcow2 image.
/// Runs `guest/build.sh` at most once per process; the script takes a file lock, so
/// test processes starting together do not build it twice. Never write to this image:
/// use [`guest_disk_copy`].
pub fn guest_image() -> anyhow::Result<PathBuf> {
    // The error is kept as text so that every caller sees the same failure.
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| run_build_script().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn run_build_script() -> anyhow::Result<PathBuf> {
    let script = build_script();
    tracing::info!(script = %script.display(), "building or finding the test guest");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "{} failed ({}); its stderr:\n{stderr}",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or("").trim();
    let image = PathBuf::from(last);
    if !image.is_absolute() || !image.is_file() {
        bail!(
            "{} printed {last:?} as its last line, not the path of an image; its stderr:\n{stderr}",
            script.display()
        );
    }
    Ok(image)
}

/// Copies the guest image to `dir/name` (a qcow2 file, no backing file) for a test
/// to boot and write to, and returns its path.
pub fn guest_disk_copy(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let image = guest_image()?;
    let disk = dir.join(name);
    std::fs::copy(&image, &disk)
        .with_context(|| format!("copy test guest {} to {}", image.display(), disk.display()))?;
    Ok(disk)
}
