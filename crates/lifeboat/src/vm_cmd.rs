//! `lifeboat vm …`: the VM lifecycle on this host.

use anyhow::{Context, Result};
use lifeboat_hypervisor::{Hypervisor, QemuDriver, VmInfo, VmName, VmSpec, VmState};

use crate::cli::VmCommand;
use crate::output::{bytes, table, Output};

pub fn vm_name(name: &str) -> Result<VmName> {
    VmName::new(name).map_err(anyhow::Error::msg)
}

pub fn state_word(s: &VmState) -> String {
    match s {
        VmState::Stopped => "stopped".into(),
        VmState::Running => "running".into(),
        VmState::Paused(d) => format!("paused ({d})"),
        VmState::Crashed(d) => format!("crashed ({d})"),
    }
}

fn print_vms(vms: &[VmInfo]) {
    if vms.is_empty() {
        println!("No VMs defined. Define one with `lifeboat vm define SPEC.toml`, or run `lifeboat demo`.");
        return;
    }
    let mut rows = vec![vec![
        "NAME".into(),
        "STATE".into(),
        "MEMORY".into(),
        "VCPUS".into(),
        "DISK".into(),
        "FORMAT".into(),
        "VIRTUAL".into(),
        "ALLOCATED".into(),
        "PATH".into(),
    ]];
    for vm in vms {
        for (i, d) in vm.disks.iter().enumerate() {
            let first = i == 0;
            let cell = |s: String| if first { s } else { String::new() };
            rows.push(vec![
                cell(vm.name.to_string()),
                cell(state_word(&vm.state)),
                cell(format!("{} MiB", vm.memory_mib)),
                cell(vm.vcpus.to_string()),
                d.name.to_string(),
                d.format.as_str().into(),
                bytes(d.virtual_size),
                bytes(d.allocated_size),
                d.path.display().to_string(),
            ]);
        }
    }
    table(&rows);
}

pub async fn run(driver: &QemuDriver, out: Output, cmd: VmCommand) -> Result<()> {
    match cmd {
        VmCommand::Define { spec } => {
            let parsed = VmSpec::load(&spec)?;
            let stored = driver.define(parsed).await?;
            out.show(&stored, |s| {
                println!(
                    "Defined VM {} ({}).",
                    s.name,
                    s.uuid.map(|u| u.to_string()).unwrap_or_default()
                );
                println!("Start it with `lifeboat vm start {}`.", s.name);
            });
        }
        VmCommand::Undefine { name } => {
            let vm = vm_name(&name)?;
            driver.undefine(&vm).await?;
            out.show(&serde_json::json!({"undefined": vm}), |_| {
                println!("Undefined VM {vm}; its disks were kept.")
            });
        }
        VmCommand::Start { name } => {
            let vm = vm_name(&name)?;
            driver.start(&vm).await?;
            let serial = driver.serial_socket(&vm)?;
            out.show(
                &serde_json::json!({"started": vm, "serial_socket": serial}),
                |_| {
                    println!("Started VM {vm}.");
                    println!(
                        "Its serial console: {} (e.g. `socat - UNIX-CONNECT:{}`).",
                        serial.display(),
                        serial.display()
                    );
                },
            );
        }
        VmCommand::Stop { name, timeout } => {
            let vm = vm_name(&name)?;
            if !out.json {
                eprintln!(
                    "Pressing the power button of {vm}; forcing it off after {} s…",
                    timeout.as_secs()
                );
            }
            let outcome = driver.shutdown(&vm, timeout).await?;
            out.show(&serde_json::json!({"vm": vm, "outcome": outcome}), |_| {
                println!("VM {vm}: {outcome:?}.");
            });
        }
        VmCommand::Kill { name } => {
            let vm = vm_name(&name)?;
            driver.kill(&vm).await?;
            out.show(&serde_json::json!({"killed": vm}), |_| {
                println!("Killed VM {vm}.")
            });
        }
        VmCommand::Status { name } => {
            let vm = vm_name(&name)?;
            let info = driver
                .list()
                .await?
                .into_iter()
                .find(|v| v.name == vm)
                .with_context(|| format!("VM {vm} is not defined"))?;
            out.show(&info, |i| print_vms(std::slice::from_ref(i)));
        }
        VmCommand::List => {
            let vms = driver.list().await?;
            out.show(&vms, |v| print_vms(v));
        }
    }
    Ok(())
}
