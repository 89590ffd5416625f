//! NICs on a host's Linux bridge (`network = "bridge:br0"`): QEMU (running as root)
//! creates the VM's tap device itself, so it goes away when QEMU exits; the driver plugs
//! it into the bridge while the CPUs are still held, so the guest's first packet already
//! reaches the bridge.

use std::path::Path;

use crate::error::{HypervisorError, Result};
use crate::spec::{NetworkKind, VmName, VmSpec};

/// The tap device of NIC `index` of `vm`: stable, unique per VM name, at most 15 bytes
/// (Linux's limit), and recognisably ours (`lb…`).
pub fn tap_name(vm: &VmName, index: usize) -> String {
    format!("lb{:08x}n{index}", name_hash(vm))
}

/// A stable 32-bit hash of a VM's name (FNV-1a), for host interface names that must fit
/// 15 bytes. Two names hashing alike on one host make the second interface fail to be
/// created (busy), never shared.
pub fn name_hash(vm: &VmName) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in vm.as_str().bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// The bridged NICs of `spec`: (index, tap, bridge).
pub fn bridged(spec: &VmSpec) -> Vec<(usize, String, String)> {
    spec.nics
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match NetworkKind::parse(&n.network) {
            Some(NetworkKind::Bridge(br)) => Some((i, tap_name(&spec.name, i), br.to_string())),
            _ => None,
        })
        .collect()
}

/// Whether this host can plug a NIC on `network`: a bridge must exist; a libvirt
/// network needs a libvirt host (`libvirt`: the driver is libvirt's, which checks its
/// networks when it defines the domain). The error says what to do.
pub fn check_network(network: &str, sys_class_net: &Path, libvirt: bool) -> Result<(), String> {
    match NetworkKind::parse(network) {
        Some(NetworkKind::Bridge(b)) if !sys_class_net.join(b).join("bridge").exists() => {
            Err(format!(
                "there is no network \"{b}\" on this host: no bridge {b} (`ip link add {b} \
                 type bridge` makes one, `ip -br link show type bridge` lists them; or map \
                 the NIC to one it has with --network-map)"
            ))
        }
        Some(NetworkKind::LibvirtNetwork(n)) if !libvirt => Err(format!(
            "there is no network \"{n}\" on this host: network:{n} is a libvirt network and \
             this host runs the QEMU driver; map it to a bridge (--network-map {n}=bridge:NAME)"
        )),
        _ => Ok(()),
    }
}

/// Refuses, before QEMU starts, NICs this host cannot plug (`check_network`).
pub fn check_host(spec: &VmSpec, sys_class_net: &Path) -> Result<()> {
    for nic in &spec.nics {
        check_network(&nic.network, sys_class_net, false).map_err(|reason| {
            HypervisorError::StartFailed {
                vm: spec.name.clone(),
                reason: format!("NIC {}: {reason}", nic.mac),
            }
        })?;
    }
    Ok(())
}

/// Plugs each bridged NIC's tap (created by QEMU) into its bridge and brings it up.
pub async fn plug(spec: &VmSpec) -> Result<()> {
    for (_, tap, br) in bridged(spec) {
        for args in [
            vec!["link", "set", tap.as_str(), "master", br.as_str()],
            vec!["link", "set", tap.as_str(), "up"],
        ] {
            run_ip(&args).await.map_err(|e| match e {
                HypervisorError::Tool { tool, reason } => HypervisorError::StartFailed {
                    vm: spec.name.clone(),
                    reason: format!("plugging tap {tap} into bridge {br}: {tool}: {reason}"),
                },
                other => other,
            })?;
        }
    }
    Ok(())
}

/// Runs `ip ARGS…`; its stderr is the error.
pub(crate) async fn run_ip(args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| HypervisorError::Tool {
            tool: "ip".into(),
            reason: format!("{e} (install iproute2)"),
        })?;
    if !out.status.success() {
        return Err(HypervisorError::Tool {
            tool: format!("ip {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_linux_and_differ_per_vm_and_nic() {
        let a = VmName::new("a-very-long-vm-name-that-fills-forty-ch").unwrap();
        let b = VmName::new("b").unwrap();
        let names = [tap_name(&a, 0), tap_name(&a, 7), tap_name(&b, 0)];
        for n in &names {
            assert!(n.len() <= 15 && n.starts_with("lb"), "{n}");
        }
        assert_ne!(names[0], names[1]);
        assert_ne!(names[0], names[2]);
        assert_eq!(tap_name(&b, 0), tap_name(&b, 0), "stable");
    }

    #[test]
    fn a_missing_bridge_or_a_libvirt_network_is_refused_before_start() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sys.path().join("br0/bridge")).unwrap();
        std::fs::create_dir_all(sys.path().join("eth0")).unwrap();
        let spec = |net: &str| {
            VmSpec::parse(
                &format!(
                    "name = \"v\"\nmemory_mib = 64\n[[disks]]\nname = \"vda\"\npath = \"/d\"\n\
                     format = \"raw\"\n[[nics]]\nmac = \"52:54:00:00:00:01\"\nnetwork = \"{net}\"\n"
                ),
                Path::new("t"),
            )
            .unwrap()
        };
        check_host(&spec("bridge:br0"), sys.path()).unwrap();
        check_host(&spec("user"), sys.path()).unwrap();
        for (net, want) in [
            ("bridge:br9", "no bridge br9"),
            ("bridge:eth0", "no bridge eth0"),
            ("network:default", "--network-map default="),
        ] {
            let e = check_host(&spec(net), sys.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{net}: {e}");
        }
        // A libvirt host has libvirt networks, and no more bridges than the host has.
        check_network("network:default", sys.path(), true).unwrap();
        let e = check_network("bridge:br9", sys.path(), true).unwrap_err();
        assert!(e.contains("no bridge br9"), "{e}");
        for lacking in ["bridge:br9", "network:default"] {
            let e = check_network(lacking, sys.path(), false).unwrap_err();
            assert!(
                e.contains("there is no network") && e.contains("--network-map"),
                "{e}"
            );
        }
    }
}
