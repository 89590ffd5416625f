//! The benchmark's VM: the test guest on `vda` plus the data disk on `vdb`, run by the
//! QEMU driver under TCG, with a shell on its serial console.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lifeboat_hypervisor::qemu::process;
use lifeboat_hypervisor::{Accel, DiskName, Hypervisor, QemuConfig, QemuDriver, VmName, VmSpec};
use lifeboat_testkit::SerialConsole;

/// A guest command (a batch of `dd`s under TCG) may be slow; this bounds each one.
const CMD_TIMEOUT: Duration = Duration::from_secs(600);

pub struct BenchVm {
    pub driver: QemuDriver,
    pub vm: VmName,
    pub data_disk: PathBuf,
    console: SerialConsole,
}

pub fn disk(name: &str) -> DiskName {
    DiskName::new(name).expect("a valid disk name")
}

impl BenchVm {
    /// Defines and boots `name` with home `home`; returns once its shell answers.
    pub async fn boot(
        name: &str,
        home: &Path,
        system_disk: &Path,
        data_disk: &Path,
    ) -> Result<BenchVm> {
        let mut config = QemuConfig::new(home);
        // KVM is present on the bench machines but does not boot guests.
        config.accel = Accel::Tcg;
        let driver = QemuDriver::new(config)?;
        let spec = VmSpec::parse(
            &format!(
                r#"
name = "{name}"
memory_mib = 256
boot_order = ["vda"]
[[disks]]
name = "vda"
path = "{}"
format = "qcow2"
[[disks]]
name = "vdb"
path = "{}"
format = "qcow2"
"#,
                system_disk.display(),
                data_disk.display()
            ),
            Path::new("lifeboat-bench"),
        )?;
        let vm = spec.name.clone();
        driver.define(spec).await?;
        driver.start(&vm).await?;
        let serial = driver.serial_socket(&vm)?;
        let console_log = driver.vm_dir(&vm)?.console_log();
        let boot = async {
            let mut console =
                SerialConsole::connect(&serial, lifeboat_testkit::boot_timeout()).await?;
            console.wait_ready(lifeboat_testkit::boot_timeout()).await?;
            anyhow::Ok(console)
        };
        let console = match boot.await {
            Ok(c) => c,
            Err(e) => {
                let _ = driver.kill(&vm).await;
                let log = std::fs::read_to_string(&console_log).unwrap_or_default();
                return Err(e.context(format!("guest {name} did not boot; console log:\n{log}")));
            }
        };
        Ok(BenchVm {
            driver,
            vm,
            data_disk: data_disk.to_path_buf(),
            console,
        })
    }

    /// Runs a shell command in the guest; fails on a non-zero exit.
    pub async fn sh(&mut self, cmd: &str) -> Result<String> {
        Ok(self.console.run(cmd, CMD_TIMEOUT).await?)
    }

    pub async fn pause(&self) -> Result<()> {
        Ok(self.driver.pause(&self.vm).await?)
    }

    pub async fn resume(&self) -> Result<()> {
        Ok(self.driver.resume(&self.vm).await?)
    }

    /// Pulls the plug: the benchmark throws the VM away, so no orderly shutdown.
    pub async fn kill(&self) -> Result<()> {
        self.driver
            .kill(&self.vm)
            .await
            .with_context(|| format!("kill VM {}", self.vm))
    }
}

impl Drop for BenchVm {
    fn drop(&mut self) {
        // Never leave a QEMU behind, whatever went wrong. `read_live_pid` checks the
        // process is still this VM's QEMU, so a recycled pid is never hit.
        if let Ok(dir) = self.driver.vm_dir(&self.vm) {
            if let Some(pid) = process::read_live_pid(&dir) {
                process::send_kill(pid);
            }
        }
    }
}
