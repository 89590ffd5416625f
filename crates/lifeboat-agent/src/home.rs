//! The agent's part of the Lifeboat home: `agent/` (identity, enrollment, journals),
//! `recovered/` (the disks of VMs brought up here) beside the driver's `vms/`. All of it
//! holds disk data, keys or credentials, so it is its owner's only: directories 0700,
//! files and sockets 0600 (`lifeboat_hypervisor::private`).

use std::path::{Path, PathBuf};

use lifeboat_hypervisor::private::{private_dir, tighten_tree};

/// Makes the home private and returns the agent's folder, `HOME/agent`. The trees
/// Lifeboat owns are tightened at every start: an older agent left them readable by
/// everyone (0755 folders, 0644 overlays and journals). The operator's own files in the
/// home, such as disk images, are left as they are.
pub fn open(home: &Path) -> std::io::Result<PathBuf> {
    private_dir(home)?;
    for tree in ["agent", "vms", "recovered"] {
        let path = home.join(tree);
        if path.exists() {
            tighten_tree(&path)?;
        }
    }
    let agent_home = home.join("agent");
    private_dir(&agent_home)?;
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
}
