//! The demo guest: a 64 MiB self-booting qcow2 disk that `guest/build.sh` makes from
//! Debian packages (cloud kernel, busybox-static, syslinux), booted by `lifeboat demo` and
//! `lifeboat up` and by the tests. Its contract is in `guest/init.sh`: `/data` on
//! `/dev/vda2`, busybox httpd on port 80, a root shell on the first serial port
//! ([`crate::serial_console::SerialConsole`]), a clean power-off on the ACPI button.
//!
//! The builder (build.sh, init.sh, syslinux.cfg) is found at run time, never at a path
//! fixed when the binary was compiled, in this order:
//!
//! 1. `LIFEBOAT_GUEST_DIR`, when set (a folder holding `build.sh`);
//! 2. `/usr/share/lifeboat/guest`, where the Debian package installs it;
//! 3. the `guest/` folder of a source tree (a folder with `Cargo.toml` and
//!    `guest/build.sh`) that holds the running executable or the current directory: a
//!    development build.
//!
//! build.sh caches the image under a hash of its inputs, in `LIFEBOAT_GUEST_CACHE` when
//! set, else in the user's cache (`~/.cache/lifeboat/guest`). The packaged builder run as
//! root caches in `/var/cache/lifeboat/guest` instead, where an installed system keeps
//! what it can rebuild (the package's purge removes it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Names the folder holding the builder, ahead of every other place.
pub const GUEST_DIR_ENV: &str = "LIFEBOAT_GUEST_DIR";
/// Where build.sh keeps its images when set (build.sh reads it).
pub const GUEST_CACHE_ENV: &str = "LIFEBOAT_GUEST_CACHE";
/// Where the Debian package installs the builder.
pub const PACKAGED_DIR: &str = "/usr/share/lifeboat/guest";
/// Where the packaged builder, run as root, keeps its images.
pub const SYSTEM_CACHE: &str = "/var/cache/lifeboat/guest";

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(
        "no demo guest builder (build.sh) found; looked in {}. Install the lifeboat package, \
         or set {GUEST_DIR_ENV} to the guest/ folder of a Lifeboat source tree",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { tried: Vec<PathBuf> },
    #[error("{GUEST_DIR_ENV}={}: no build.sh there", dir.display())]
    NoScript { dir: PathBuf },
    #[error("run {}: {source}", script.display())]
    Run {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error("{} failed ({status}); its stderr:\n{stderr}", script.display())]
    Failed {
        script: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "{} printed {last:?} as its last line, not the path of an image; its stderr:\n{stderr}",
        script.display()
    )]
    NoImage {
        script: PathBuf,
        last: String,
        stderr: String,
    },
    #[error("copy the demo guest {} to {}: {source}", image.display(), disk.display())]
    Copy {
        image: PathBuf,
        disk: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = GuestError> = std::result::Result<T, E>;

/// A folder holding `build.sh`, and where its images are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBuilder {
    dir: PathBuf,
    /// `None`: build.sh's own choice (`LIFEBOAT_GUEST_CACHE`, else the user's cache).
    cache: Option<PathBuf>,
}

impl GuestBuilder {
    /// The builder in `dir`, caching where build.sh chooses.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            cache: None,
        }
    }

    /// Finds the builder as the module's header says.
    pub fn locate() -> Result<Self> {
        let exe = std::env::current_exe().ok();
        let cwd = std::env::current_dir().ok();
        let root = is_root();
        Self::locate_from(
            std::env::var_os(GUEST_DIR_ENV).map(PathBuf::from),
            Path::new(PACKAGED_DIR),
            &[exe.as_deref(), cwd.as_deref()],
            root && std::env::var_os(GUEST_CACHE_ENV).is_none(),
        )
    }

    /// `locate` with its inputs given: the env's folder, the packaged folder, where to
    /// look for a source tree, and whether the packaged builder caches in
    /// [`SYSTEM_CACHE`].
    fn locate_from(
        env_dir: Option<PathBuf>,
        packaged: &Path,
        starts: &[Option<&Path>],
        system_cache: bool,
    ) -> Result<Self> {
        if let Some(dir) = env_dir.filter(|d| !d.as_os_str().is_empty()) {
            if !dir.join("build.sh").is_file() {
                return Err(GuestError::NoScript { dir });
            }
            return Ok(Self::at(dir));
        }
        let mut tried = vec![packaged.to_path_buf()];
        if packaged.join("build.sh").is_file() {
            return Ok(Self {
                dir: packaged.to_path_buf(),
                cache: system_cache.then(|| PathBuf::from(SYSTEM_CACHE)),
            });
        }
        for start in starts.iter().flatten() {
            if let Some(dir) = source_tree_guest(start) {
                return Ok(Self::at(dir));
            }
            tried.push(start.join("(its folders)/guest"));
        }
        Err(GuestError::NotFound { tried })
    }

    pub fn script(&self) -> PathBuf {
        self.dir.join("build.sh")
    }

    /// Where the images go when not build.sh's default.
    pub fn cache(&self) -> Option<&Path> {
        self.cache.as_deref()
    }

    /// Builds the image, or finds it cached, and returns its path. Blocks (the first
    /// build takes a minute or more; a cached one comes back at once). build.sh takes a
    /// file lock, so two processes never build the same image at once. Never write to
    /// the image: boot a [`disk_copy`].
    pub fn build(&self) -> Result<PathBuf> {
        let script = self.script();
        tracing::info!(script = %script.display(), "building or finding the demo guest");
        let mut command = Command::new("bash");
        command.arg(&script);
        if let Some(cache) = &self.cache {
            command.env(GUEST_CACHE_ENV, cache);
        }
        let output = command.output().map_err(|source| GuestError::Run {
            script: script.clone(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        if !output.status.success() {
            return Err(GuestError::Failed {
                script,
                status: output.status,
                stderr,
            });
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last = stdout.lines().last().unwrap_or("").trim().to_string();
        let image = PathBuf::from(&last);
        if !image.is_absolute() || !image.is_file() {
            return Err(GuestError::NoImage {
                script,
                last,
                stderr,
            });
        }
        Ok(image)
    }
}

/// Copies the built `image` to `dir/name` (a qcow2 file of its own, no backing file) for
/// a VM to boot and write to, and returns its path.
pub fn disk_copy(image: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let disk = dir.join(name);
    std::fs::copy(image, &disk).map_err(|source| GuestError::Copy {
        image: image.to_owned(),
        disk: disk.clone(),
        source,
    })?;
    Ok(disk)
}

/// The `guest/` folder of the source tree holding `start`, if any.
fn source_tree_guest(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join("Cargo.toml").is_file() && d.join("guest/build.sh").is_file())
        .map(|d| d.join("guest"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder_in(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("build.sh"), "#!/bin/bash\n").unwrap();
        dir.to_path_buf()
    }

    #[test]
    fn the_env_wins_then_the_package_then_a_source_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let env = builder_in(&tmp.path().join("env"));
        let packaged = builder_in(&tmp.path().join("usr/share/lifeboat/guest"));
        let tree = tmp.path().join("src");
        builder_in(&tree.join("guest"));
        std::fs::write(tree.join("Cargo.toml"), "").unwrap();
        let exe = tree.join("target/debug/lifeboat");
        let starts = [Some(exe.as_path())];

        let b = GuestBuilder::locate_from(Some(env.clone()), &packaged, &starts, true).unwrap();
        assert_eq!(b, GuestBuilder::at(&env));

        let b = GuestBuilder::locate_from(None, &packaged, &starts, true).unwrap();
        assert_eq!(b.script(), packaged.join("build.sh"));
        assert_eq!(b.cache(), Some(Path::new(SYSTEM_CACHE)));
        let b = GuestBuilder::locate_from(None, &packaged, &starts, false).unwrap();
        assert_eq!(b.cache(), None, "not root, or LIFEBOAT_GUEST_CACHE set");

        let none = tmp.path().join("nowhere");
        let b = GuestBuilder::locate_from(None, &none, &starts, true).unwrap();
        assert_eq!(
            b,
            GuestBuilder::at(tree.join("guest")),
            "development: no cache"
        );

        let err = GuestBuilder::locate_from(None, &none, &[Some(tmp.path())], true).unwrap_err();
        assert!(err.to_string().contains(GUEST_DIR_ENV), "{err}");
        let err = GuestBuilder::locate_from(Some(tmp.path().into()), &packaged, &starts, true)
            .unwrap_err();
        assert!(matches!(err, GuestError::NoScript { .. }), "{err}");
    }
}
