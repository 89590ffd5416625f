//! The format of the state a host keeps under its Lifeboat home, and what an agent does
//! with a home another release wrote. PostgreSQL's `PG_VERSION` and restic's repository
//! `config` are the model: one small file says which format the folder holds, checked
//! before anything in it is read or changed.
//!
//! `HOME/agent/state-version` (0600, written atomically) holds two lines:
//!
//! ```text
//! 1
//! written by Lifeboat 0.1.0
//! ```
//!
//! The first is the state format, an integer; the second the Lifeboat version that last
//! wrote the file, for the messages below. The format covers everything the agent and
//! its drivers keep under the home: `agent/` (identity, enrollment, sealing key, the
//! journals of syncs, jobs, recoveries and handovers, replication records), `vms/` (the
//! QEMU driver's VM folders), `recovered/` and `libvirt/` (the libvirt driver's records).
//!
//! | format | releases | what changed |
//! |---|---|---|
//! | 1 | every release up to and including the one that added this file | the first format; a home without the file that holds any of the folders above is format 1 |
//!
//! When an agent opens a home ([`check`], then [`bring_forward`]):
//! - no file and none of those folders: a new home, marked with [`FORMAT`];
//! - no file but some of those folders: a home of the first release, format 1;
//! - format [`FORMAT`]: nothing to do;
//! - an older format: the steps of [`MIGRATIONS`] from it, in order, the file rewritten
//!   after each (a step is idempotent, so a crash between a step and its mark only
//!   repeats that step);
//! - a newer format, or a file that does not parse: refused with [`StateError`] before
//!   any file of the home is touched. An older binary never reads a newer format.
//!
//! A change to any of these files that an older agent would misread adds a format: bump
//! [`FORMAT`], append its step to [`MIGRATIONS`] and a row to the table above.

use std::path::{Path, PathBuf};

/// The state format this build writes and reads.
pub const FORMAT: u32 = 1;

/// The file, relative to the home.
pub const FILE: &str = "agent/state-version";

/// The folders whose presence, without the file, means a home of the first release.
const STATE_TREES: [&str; 4] = ["agent", "vms", "recovered", "libvirt"];

/// The longest file accepted: two short lines. A longer one is not ours.
const MAX_LEN: u64 = 256;

/// One step forward: brings a home of format `from` to `from + 1`.
pub struct Migration {
    pub from: u32,
    /// What the step changes, for the log.
    pub what: &'static str,
    pub run: fn(home: &Path) -> std::io::Result<()>,
}

/// Every step, oldest first: `MIGRATIONS[i].from == i + 1`, and the last one ends at
/// [`FORMAT`] (a unit test holds both).
pub const MIGRATIONS: &[Migration] = &[];

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{home}: this home was written by Lifeboat {written_by} (state format {found}); this is \
         Lifeboat {this}, which knows up to format {known}: run Lifeboat {written_by} or newer, \
         or restore the home from before the upgrade. Nothing was changed"
    )]
    Newer {
        home: PathBuf,
        found: u32,
        written_by: String,
        this: &'static str,
        known: u32,
    },
    #[error(
        "{path}: not a Lifeboat state-version file ({reason}); restore it from a backup of \
         the home (its first line is the state format, {known} for Lifeboat {this}). Nothing \
         was changed"
    )]
    Unreadable {
        path: PathBuf,
        reason: String,
        this: &'static str,
        known: u32,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bringing {home} from state format {from} to {}: {what}: {source}", .from + 1)]
    Migration {
        home: PathBuf,
        from: u32,
        what: &'static str,
        source: std::io::Error,
    },
}

/// What a home holds, as [`check`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing of Lifeboat's yet.
    New,
    /// State without the file: the first release's.
    FirstRelease,
    /// A file naming this format or an older one.
    Marked { format: u32, written_by: String },
}

impl Found {
    /// The format of the state found (none for a new home).
    pub fn format(&self) -> Option<u32> {
        match self {
            Found::New => None,
            Found::FirstRelease => Some(1),
            Found::Marked { format, .. } => Some(*format),
        }
    }
}

/// Reads the home's format without changing anything; refuses a newer format or a file
/// that is not ours. Every command that opens the home runs this first.
pub fn check(home: &Path) -> Result<Found, StateError> {
    check_against(home, FORMAT)
}

fn check_against(home: &Path, known: u32) -> Result<Found, StateError> {
    let path = home.join(FILE);
    let text = match read_bounded(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(if STATE_TREES.iter().any(|t| home.join(t).exists()) {
                Found::FirstRelease
            } else {
                Found::New
            });
        }
        Err(e) => {
            return Err(StateError::Io {
                what: "reading",
                path,
                source: e,
            })
        }
    };
    let (format, written_by) = parse(&text).map_err(|reason| StateError::Unreadable {
        path: path.clone(),
        reason,
        this: crate::VERSION,
        known,
    })?;
    if format > known {
        return Err(StateError::Newer {
            home: home.to_path_buf(),
            found: format,
            written_by,
            this: crate::VERSION,
            known,
        });
    }
    Ok(Found::Marked { format, written_by })
}

/// Brings the home to [`FORMAT`] from what [`check`] found, and marks it. The agent's
/// folder must exist (`home::open` makes it).
pub fn bring_forward(home: &Path, found: &Found) -> Result<(), StateError> {
    bring_forward_with(home, found, MIGRATIONS, FORMAT)
}

fn bring_forward_with(
    home: &Path,
    found: &Found,
    steps: &[Migration],
    target: u32,
) -> Result<(), StateError> {
    let mut format = match found {
        Found::New => {
            tracing::info!(home = %home.display(), format = target, "a new home");
            return mark(home, target);
        }
        Found::FirstRelease => {
            tracing::info!(home = %home.display(), "a home of the first release (state format 1)");
            1
        }
        Found::Marked { format, .. } if *format == target => return Ok(()),
        Found::Marked { format, .. } => *format,
    };
    while format < target {
        let step = steps.iter().find(|s| s.from == format).ok_or_else(|| {
            // The table test makes this unreachable in a build; say so clearly if not.
            StateError::Migration {
                home: home.to_path_buf(),
                from: format,
                what: "no step known",
                source: std::io::Error::other("this build lacks the step"),
            }
        })?;
        tracing::info!(home = %home.display(), from = format, to = format + 1, what = step.what, "bringing the home forward");
        (step.run)(home).map_err(|source| StateError::Migration {
            home: home.to_path_buf(),
            from: format,
            what: step.what,
            source,
        })?;
        format += 1;
        mark(home, format)?;
    }
    // A home of the first release gets its file even when there is no step to run.
    if matches!(found, Found::FirstRelease) {
        mark(home, target)?;
    }
    Ok(())
}

/// Writes the file: `format`, by this Lifeboat.
fn mark(home: &Path, format: u32) -> Result<(), StateError> {
    let path = home.join(FILE);
    let text = format!("{format}\nwritten by Lifeboat {}\n", crate::VERSION);
    lifeboat_hypervisor::qemu::layout::write_atomically(&path, text.as_bytes()).map_err(|e| {
        StateError::Io {
            what: "writing",
            path,
            source: std::io::Error::other(e.to_string()),
        }
    })
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_LEN + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The format and the version that wrote it; a reason when the text is not ours.
fn parse(text: &str) -> Result<(u32, String), String> {
    if text.len() as u64 > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} bytes"));
    }
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    let format: u32 = first
        .parse()
        .map_err(|_| format!("its first line {first:?} is not a format number"))?;
    if format == 0 {
        return Err("format 0 does not exist".into());
    }
    let written_by = lines
        .next()
        .and_then(|l| l.trim().strip_prefix("written by Lifeboat "))
        .map(str::to_string)
        .unwrap_or_else(|| "(unknown version)".into());
    Ok((format, written_by))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home_with(marker: Option<&str>, trees: &[&str]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for t in trees {
            std::fs::create_dir_all(tmp.path().join(t)).unwrap();
        }
        if let Some(m) = marker {
            std::fs::create_dir_all(tmp.path().join("agent")).unwrap();
            std::fs::write(tmp.path().join(FILE), m).unwrap();
        }
        tmp
    }

    fn marker(home: &Path) -> String {
        std::fs::read_to_string(home.join(FILE)).unwrap()
    }

    #[test]
    fn the_table_of_steps_leads_from_format_1_to_this_format() {
        for (i, step) in MIGRATIONS.iter().enumerate() {
            assert_eq!(step.from, i as u32 + 1, "step {i}: {}", step.what);
        }
        assert_eq!(MIGRATIONS.len() as u32 + 1, FORMAT);
    }

    #[test]
    fn a_new_home_is_marked_with_this_format() {
        let tmp = home_with(None, &[]);
        assert_eq!(check(tmp.path()).unwrap(), Found::New);
        std::fs::create_dir(tmp.path().join("agent")).unwrap();
        bring_forward(tmp.path(), &Found::New).unwrap();
        assert_eq!(
            marker(tmp.path()),
            format!("{FORMAT}\nwritten by Lifeboat {}\n", crate::VERSION)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!tmp.path().join("agent/state-version.tmp").exists());
    }

    #[test]
    fn state_without_the_file_is_the_first_releases_and_gets_marked() {
        for tree in STATE_TREES {
            let tmp = home_with(None, &[tree]);
            let found = check(tmp.path()).unwrap();
            assert_eq!(found, Found::FirstRelease, "{tree}");
            assert_eq!(found.format(), Some(1));
            std::fs::create_dir_all(tmp.path().join("agent")).unwrap();
            bring_forward(tmp.path(), &found).unwrap();
            assert!(marker(tmp.path()).starts_with(&format!("{FORMAT}\n")));
        }
    }

    #[test]
    fn the_same_format_is_left_as_it_is() {
        let text = format!("{FORMAT}\nwritten by Lifeboat 0.0.9\n");
        let tmp = home_with(Some(&text), &[]);
        let found = check(tmp.path()).unwrap();
        assert_eq!(
            found,
            Found::Marked {
                format: FORMAT,
                written_by: "0.0.9".into()
            }
        );
        bring_forward(tmp.path(), &found).unwrap();
        assert_eq!(marker(tmp.path()), text, "not rewritten");
    }

    fn step_2(home: &Path) -> std::io::Result<()> {
        std::fs::write(home.join("agent/step-2"), b"ran")
    }
    fn step_3(home: &Path) -> std::io::Result<()> {
        // Needs the step before it to have run.
        std::fs::read(home.join("agent/step-2"))?;
        std::fs::write(home.join("agent/step-3"), b"ran")
    }
    fn failing(_: &Path) -> std::io::Result<()> {
        Err(std::io::Error::other("disk full"))
    }
    const STEPS: &[Migration] = &[
        Migration {
            from: 1,
            what: "step to 2",
            run: step_2,
        },
        Migration {
            from: 2,
            what: "step to 3",
            run: step_3,
        },
    ];

    #[test]
    fn an_older_format_runs_each_step_in_order_and_is_marked_after_each() {
        // A first-release home, read by a build that knows format 3.
        let tmp = home_with(None, &["agent"]);
        let found = check_against(tmp.path(), 3).unwrap();
        assert_eq!(found, Found::FirstRelease);
        bring_forward_with(tmp.path(), &found, STEPS, 3).unwrap();
        assert!(tmp.path().join("agent/step-3").exists());
        assert!(marker(tmp.path()).starts_with("3\n"));

        // A home marked 2 runs only the last step.
        let tmp = home_with(Some("2\nwritten by Lifeboat 0.2.0\n"), &[]);
        std::fs::write(tmp.path().join("agent/step-2"), b"earlier").unwrap();
        let found = check_against(tmp.path(), 3).unwrap();
        bring_forward_with(tmp.path(), &found, STEPS, 3).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("agent/step-2")).unwrap(),
            b"earlier"
        );
        assert!(marker(tmp.path()).starts_with("3\n"));
    }

    #[test]
    fn a_failed_step_leaves_the_home_marked_at_the_last_step_that_ran() {
        let steps = [
            Migration {
                from: 1,
                what: "step to 2",
                run: step_2,
            },
            Migration {
                from: 2,
                what: "rewrite the journals",
                run: failing,
            },
        ];
        let tmp = home_with(Some("1\nwritten by Lifeboat 0.1.0\n"), &[]);
        let found = check_against(tmp.path(), 3).unwrap();
        let e = bring_forward_with(tmp.path(), &found, &steps, 3).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("from state format 2 to 3: rewrite the journals: disk full"),
            "{text}"
        );
        assert!(marker(tmp.path()).starts_with("2\n"));
    }

    #[test]
    fn a_newer_format_is_refused_naming_both_versions_and_nothing_changes() {
        let text = format!("{}\nwritten by Lifeboat 9.1.0\n", FORMAT + 1);
        let tmp = home_with(Some(&text), &["vms"]);
        let before = std::fs::metadata(tmp.path().join(FILE))
            .unwrap()
            .modified()
            .unwrap();
        let e = check(tmp.path()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StateError::Newer { found, .. } if found == FORMAT + 1));
        for part in [
            format!("written by Lifeboat 9.1.0 (state format {})", FORMAT + 1),
            format!(
                "this is Lifeboat {}, which knows up to format {FORMAT}",
                crate::VERSION
            ),
            "run Lifeboat 9.1.0 or newer, or restore the home from before the upgrade".into(),
        ] {
            assert!(msg.contains(&part), "{msg}\nlacks: {part}");
        }
        assert_eq!(marker(tmp.path()), text);
        assert_eq!(
            std::fs::metadata(tmp.path().join(FILE))
                .unwrap()
                .modified()
                .unwrap(),
            before
        );
    }

    #[test]
    fn a_file_that_is_not_ours_is_refused() {
        let long = "9".repeat(300);
        for (text, reason) in [
            ("", "is not a format number"),
            ("lifeboat\n", "is not a format number"),
            ("0\n", "format 0"),
            ("-1\n", "is not a format number"),
            (long.as_str(), "longer than"),
        ] {
            let tmp = home_with(Some(text), &[]);
            let e = check(tmp.path()).unwrap_err();
            assert!(matches!(e, StateError::Unreadable { .. }), "{text:?}");
            assert!(e.to_string().contains(reason), "{text:?}: {e}");
        }
        // A file without the second line still says its format.
        let tmp = home_with(Some("1"), &[]);
        assert_eq!(check(tmp.path()).unwrap().format(), Some(1));
    }
}
