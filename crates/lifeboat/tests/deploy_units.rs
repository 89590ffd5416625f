//! deploy/systemd's units pass `systemd-analyze verify` (run with this build's binary in
//! place of /usr/bin/lifeboat), and the agent's unit keeps what lets VMs outlive it: the
//! default KillMode (the VMs are not in its cgroup: qemu_vm_outlives_agent), and no
//! setting that would reach them (a PrivateNetwork or a PrivateTmp would hide the taps
//! and the monitors' sockets from the VMs the next agent finds).

use std::path::Path;
use std::process::Command;

fn units() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_units_verify_with_systemd_analyze() {
    let units = units();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "lifeboat-agent.service",
            "lifeboat-server.service",
            "lifeboat-vms.slice"
        ]
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, text) in &units {
        let path = tmp.path().join(name);
        std::fs::write(
            &path,
            text.replace("/usr/bin/lifeboat", env!("CARGO_BIN_EXE_lifeboat")),
        )
        .unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze (package systemd; scripts/test installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_agents_unit_keeps_the_settings_that_spare_its_vms() {
    let (_, agent) = units()
        .into_iter()
        .find(|(n, _)| n == "lifeboat-agent.service")
        .unwrap();
    let lines: Vec<&str> = agent
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(lines.contains(&"KillMode=control-group"), "{agent}");
    for reaching in [
        "PrivateNetwork=",
        "PrivateTmp=",
        "PrivateDevices=",
        "ProtectSystem=",
    ] {
        assert!(
            !lines.iter().any(|l| l.starts_with(reaching)),
            "{reaching} in the agent's unit: {agent}"
        );
    }
    // The flags it starts the agent with are the agent's, and none that would override
    // /etc/lifeboat/agent.toml unasked.
    let args = lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("Environment=\"LIFEBOAT_AGENT_ARGS=")
                .or_else(|| l.strip_prefix("Environment=LIFEBOAT_AGENT_ARGS="))
        })
        .unwrap()
        .trim_end_matches('"');
    assert_eq!(args, "", "the agent's settings are its config file's");
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("agent")
        .args(args.split_whitespace())
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
