//! Files only their owner reads. Everything Lifeboat keeps under its home holds disk
//! data (overlays, fleecing images), keys or credentials, or tells where they are, so
//! every file there is 0600, every directory 0700 and every Unix socket 0600
//! (DESIGN.md, "Security"). The modes are set explicitly, never left to the umask: the
//! agent may run under any umask, and QEMU sets its own (027) when it daemonizes.
//!
//! The agent and the driver use these helpers for everything they create; files that
//! another program makes (QEMU's sockets and logs, `qemu-img create`'s images) are
//! tightened right after, inside a directory that is already 0700.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every directory Lifeboat makes.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file and socket Lifeboat makes.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents 0700, and tightens `dir` to 0700 if it was there
/// (a home made by an older Lifeboat, or by hand).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Sets an existing file or socket to 0600 (one another program made).
pub fn make_private(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
}

/// Opens `path` for writing, created 0600; a file that was there is tightened to 0600 and,
/// with `truncate`, emptied (without it, writes append).
pub fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(truncate)
        .append(!truncate)
        .mode(FILE_MODE)
        .open(path)?;
    // `mode` applies only to a file made now.
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Writes `contents` to `path`, 0600 (not atomic; see `layout::write_atomically`).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    open_private(path, true)?.write_all(contents)
}

/// Visits `root` (followed if it is a link: a tree kept on another volume) and everything
/// below it (links there are neither followed nor visited), with each one's metadata and
/// whether it is `root`. Entries that vanish meanwhile (a cut closing) are skipped. A
/// folder below `root` that cannot be read goes to `unreadable`, which says whether that
/// ends the walk; `root` itself must be readable.
fn walk(
    root: &Path,
    mut visit: impl FnMut(&Path, &std::fs::Metadata, bool) -> std::io::Result<()>,
    mut unreadable: impl FnMut(&Path, std::io::Error) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut stack = vec![(root.to_path_buf(), true)];
    while let Some((path, is_root)) = stack.pop() {
        let meta = match if is_root {
            std::fs::metadata(&path)
        } else {
            std::fs::symlink_metadata(&path)
        } {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        visit(&path, &meta, is_root)?;
        if meta.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(entries) => stack.extend(entries.flatten().map(|e| (e.path(), false))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if is_root => return Err(e),
                Err(e) => unreadable(&path, e)?,
            }
        }
    }
    Ok(())
}

/// Takes group's and others' access away from everything under `root` and `root` itself
/// (directories keep or get the owner's rwx; an owner's read-only image stays read-only),
/// walking as `walk` does. For the trees Lifeboat owns under its home, which an older
/// Lifeboat made readable by everyone. What below `root` cannot be changed or read (a
/// read-only mount, a file of another owner on NFS) is logged and left, so an upgrade
/// never stops the agent there.
pub fn tighten_tree(root: &Path) -> std::io::Result<()> {
    walk(
        root,
        |path, meta, is_root| {
            let old = meta.permissions().mode() & 0o7777;
            let new = if meta.is_dir() {
                (old & !0o077) | 0o700
            } else {
                old & !0o077
            };
            if new == old {
                return Ok(());
            }
            match std::fs::set_permissions(path, Permissions::from_mode(new)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) if !is_root => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot make this private; left as it is");
                    Ok(())
                }
                done => done,
            }
        },
        |path, e| {
            tracing::warn!(path = %path.display(), error = %e, "cannot look into this folder to make it private");
            Ok(())
        },
    )
}

/// Paths under `root` (and `root`) that group or others may read, write or enter, with
/// their modes: what a check of a home reports (walking as `tighten_tree` does).
pub fn exposed(root: &Path) -> std::io::Result<Vec<(std::path::PathBuf, u32)>> {
    let mut out = Vec::new();
    walk(
        root,
        |path, meta, _| {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                out.push((path.to_path_buf(), mode));
            }
            Ok(())
        },
        |_, e| Err(e),
    )?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// The umask most systems run with: without the helpers, files would be 0644.
    fn usual_umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    }

    #[test]
    fn dirs_are_made_and_tightened_0700() {
        usual_umask();
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("home/agent/recoveries");
        private_dir(&deep).unwrap();
        for d in ["home", "home/agent", "home/agent/recoveries"] {
            assert_eq!(mode(&tmp.path().join(d)), 0o700, "{d}");
        }
        let old = tmp.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, Permissions::from_mode(0o755)).unwrap();
        private_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700, "an existing directory is tightened");
    }

    #[test]
    fn files_are_written_0600_even_over_an_open_one() {
        usual_umask();
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("key");
        write_private(&f, b"secret").unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        write_private(&f, b"new").unwrap();
        assert_eq!(
            (mode(&f), std::fs::read(&f).unwrap()),
            (0o600, b"new".to_vec())
        );
        let log = tmp.path().join("log");
        open_private(&log, false).unwrap().write_all(b"a").unwrap();
        open_private(&log, false).unwrap().write_all(b"b").unwrap();
        assert_eq!(
            std::fs::read(&log).unwrap(),
            b"ab",
            "without truncate it appends"
        );
        assert_eq!(mode(&log), 0o600);
    }

    #[test]
    fn a_tree_is_tightened_and_checked() {
        usual_umask();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("home");
        std::fs::create_dir_all(root.join("vms/web")).unwrap();
        std::fs::write(root.join("vms/web/disk.qcow2"), b"data").unwrap();
        let sock = root.join("vms/web/qmp.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        std::fs::set_permissions(&sock, Permissions::from_mode(0o755)).unwrap();
        let before = exposed(&root).unwrap();
        assert_eq!(
            before.len(),
            5,
            "home, vms, web, the image, the socket: {before:?}"
        );
        // An operator's read-only base image stays read-only.
        let base = root.join("vms/web/base.raw");
        std::fs::write(&base, b"base").unwrap();
        std::fs::set_permissions(&base, Permissions::from_mode(0o444)).unwrap();
        tighten_tree(&root).unwrap();
        assert_eq!(exposed(&root).unwrap(), vec![]);
        assert_eq!(
            mode(&sock),
            0o700,
            "group and others lose access; the owner keeps it"
        );
        assert_eq!(mode(&base), 0o400, "read-only stays read-only");
        assert_eq!(mode(&root.join("vms/web")), 0o700);
        // A tree kept elsewhere behind a link (a common layout) is tightened too.
        let elsewhere = tmp.path().join("other-volume");
        std::fs::create_dir_all(elsewhere.join("web")).unwrap();
        std::fs::write(elsewhere.join("web/vda.qcow2"), b"disk").unwrap();
        let linked = tmp.path().join("recovered");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        assert!(!exposed(&linked).unwrap().is_empty());
        tighten_tree(&linked).unwrap();
        assert_eq!(exposed(&linked).unwrap(), vec![]);
        assert_eq!(mode(&elsewhere.join("web/vda.qcow2")), 0o600);
        assert_eq!(
            mode(Path::new("/etc/passwd")) & 0o004,
            0o004,
            "a link's target is left alone"
        );
    }
}
