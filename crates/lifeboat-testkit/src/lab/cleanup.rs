//! Removing labs: one namespace at a time (also what `Drop for Lab` does), and the
//! sweep of labs whose process died without dropping them (SIGKILL, a crashed runner).

use std::io;
use std::path::PathBuf;
use std::process::Command;

use super::netns::NETNS_RUN_DIR;
use super::tools::run;
use super::{etc_dir, LabError, ETC_NETNS_DIR, NAME_PREFIX};

/// Deletes the namespaces (and `/etc/netns` directories) of labs whose process is gone:
/// `lblab-PID-…` where no process PID runs. Returns the names removed. [`Lab::start`](super::Lab::start)
/// calls it; a CI job may call it before the tests too.
pub fn cleanup_stale_labs() -> Result<Vec<String>, LabError> {
    let mut names = std::collections::BTreeSet::new();
    for dir in [NETNS_RUN_DIR, ETC_NETNS_DIR] {
        match std::fs::read_dir(dir) {
            Ok(entries) => names.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LabError::Io {
                    what: format!("list {dir}"),
                    source,
                })
            }
        }
    }
    let mut removed = Vec::new();
    for name in names {
        let Some(pid) = lab_pid(&name) else { continue };
        if pid == std::process::id() || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_namespace(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

/// The PID in a lab namespace's name `lblab-PID-…`.
fn lab_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NAME_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Kills what still runs in a namespace, deletes it and its `/etc/netns` directory.
/// Each part is skipped if already gone, so this also finishes a half-done removal.
pub(super) fn remove_namespace(name: &str) -> Result<(), LabError> {
    let handle = PathBuf::from(NETNS_RUN_DIR).join(name);
    if handle.exists() {
        // Processes would keep the namespace (and its interfaces) alive after the
        // name is gone; in a deleted lab they have nothing left to do.
        let pids = run(Command::new("ip").args(["netns", "pids", name]))?;
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if pid != std::process::id() as i32 {
                // SAFETY: kill(2) with a pid and a signal number touches no memory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        run(Command::new("ip").args(["netns", "delete", name]))?;
    }
    let etc = etc_dir(name);
    match std::fs::remove_dir_all(&etc) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LabError::Io {
            what: format!("remove {}", etc.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}
