//! The test guest image: the demo guest built from this source tree's `guest/` (cached
//! on disk by build.sh, memoised here for the process), copied per test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lifeboat_hypervisor::demo_guest::{self, GuestBuilder};

/// Builds (or finds cached) the test guest and returns the path of its qcow2 image.
/// Runs `guest/build.sh` at most once per process; the script takes a file lock, so
/// test processes starting together do not build it twice. Never write to this image:
/// use [`guest_disk_copy`].
pub fn guest_image() -> anyhow::Result<PathBuf> {
    // The error is kept as text so that every caller sees the same failure.
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            // This checkout's builder, whatever a package installed: the tests test it.
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest");
            GuestBuilder::at(dir).build().map_err(|e| e.to_string())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Copies the guest image to `dir/name` (a qcow2 file, no backing file) for a test
/// to boot and write to, and returns its path.
pub fn guest_disk_copy(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    Ok(demo_guest::disk_copy(&guest_image()?, dir, name)?)
}
