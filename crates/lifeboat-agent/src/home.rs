//! The agent's part of the Lifeboat home: `agent/` (identity, enrollment, journals),
//! `recovered/` (the disks of VMs brought up here) beside the driver's `vms/`. All of it
//! holds disk data, keys or credentials, so it is its owner's only: directories 0700,
//! files and sockets 0600 (`lifeboat_hypervisor::private`). Its format is versioned by
//! `agent/state-version` (`crate::state_version`).

use std::path::{Path, PathBuf};

use lifeboat_hypervisor::private::{private_dir, tighten_tree};

use crate::state_version::{self, StateError};

/// Checks the home's state format, makes the home private and returns the agent's
/// folder, `HOME/agent`. A home written by a newer Lifeboat is refused before anything in
/// it changes; an older one is brought forward and marked. The trees Lifeboat owns are
/// tightened at every start: an older agent left them readable by everyone (0755
/// folders, 0644 overlays and journals). The operator's own files in the home, such as
/// disk images, are left as they are.
pub fn open(home: &Path) -> Result<PathBuf, StateError> {
    let found = state_version::check(home)?;
    let private = |path: &Path, r: std::io::Result<()>| {
        r.map_err(|source| StateError::Io {
            what: "making private",
            path: path.to_path_buf(),
            source,
        })
    };
    private(home, private_dir(home))?;
    for tree in ["agent", "vms", "recovered"] {
        let path = home.join(tree);
        if path.exists() {
            private(&path, tighten_tree(&path))?;
        }
    }
    let agent_home = home.join("agent");
    private(&agent_home, private_dir(&agent_home))?;
    state_version::bring_forward(home, &found)?;
    Ok(agent_home)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_open_home_from_an_older_agent_is_tightened_but_not_the_operators_files() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let old = [
            "agent/recoveries/r1.json",
            "recovered/web-test/vda.qcow2",
            "vms/web/spec.toml",
        ];
        for f in old {
            let path = home.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"x").unwrap();
            std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
            for dir in path
                .ancestors()
                .skip(1)
                .take_while(|d| d.starts_with(&home))
            {
                std::fs::set_permissions(dir, Permissions::from_mode(0o755)).unwrap();
            }
        }
        let operators = home.join("web.qcow2");
        std::fs::write(&operators, b"the operator's disk").unwrap();
        std::fs::set_permissions(&operators, Permissions::from_mode(0o644)).unwrap();

        assert_eq!(open(&home).unwrap(), home.join("agent"));
        assert!(home.join(crate::state_version::FILE).exists());
        let left = lifeboat_hypervisor::private::exposed(&home).unwrap();
        assert_eq!(
            left,
            vec![(operators, 0o644)],
            "only the operator's file is left"
        );
        assert_eq!(mode(&home), 0o700);
        for f in old {
            assert_eq!(mode(&home.join(f)), 0o600, "{f}");
            assert_eq!(mode(home.join(f).parent().unwrap()), 0o700, "{f}");
        }
    }

    #[test]
    fn a_home_of_a_newer_format_is_refused_and_left_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let journal = home.join("agent/syncs/s1.json");
        std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
        std::fs::write(&journal, b"{}").unwrap();
        std::fs::set_permissions(&journal, Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&home, Permissions::from_mode(0o755)).unwrap();
        let marker = home.join(crate::state_version::FILE);
        let newer = format!(
            "{}\nwritten by Lifeboat 7.0.0\n",
            crate::state_version::FORMAT + 1
        );
        std::fs::write(&marker, &newer).unwrap();

        let e = open(&home).unwrap_err();
        assert!(e.to_string().contains("written by Lifeboat 7.0.0"), "{e}");
        assert_eq!(mode(&home), 0o755, "not tightened");
        assert_eq!(mode(&journal), 0o644, "not tightened");
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), newer);
    }
}
