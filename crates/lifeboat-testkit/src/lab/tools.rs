//! The iproute2 tools the lab drives (`ip`, `tc`), and the check that they and root
//! are there before anything is made.

use std::process::Command;

use super::{ns_name, LabError, Netns};

pub(super) fn check_prerequisites() -> Result<(), LabError> {
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(LabError::Unavailable {
            reason: format!("this process runs as uid {euid}, not root; run the lab tests as root"),
        });
    }
    for (tool, args) in [("ip", ["netns", "list"]), ("tc", ["qdisc", "show"])] {
        match Command::new(tool).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(LabError::Unavailable {
                    reason: format!(
                        "`{tool} {}` failed: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim_end()
                    ),
                })
            }
            Err(e) => {
                return Err(LabError::Unavailable {
                    reason: format!("cannot run `{tool}` ({e}); install iproute2"),
                })
            }
        }
    }
    Ok(())
}

pub(super) fn ip(ns: &Netns, args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(["-n", ns_name(ns)]).args(args))
}

pub(super) fn tc(ns: &Netns, args: &[&str]) -> Result<String, LabError> {
    run(Command::new("tc").args(["-n", ns_name(ns)]).args(args))
}

/// Runs a command to completion; a failure carries the command line and its stderr.
pub(super) fn run(cmd: &mut Command) -> Result<String, LabError> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().map_err(|source| LabError::Io {
        what: format!("run `{line}`"),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: line,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
