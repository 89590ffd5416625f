//! A booted test guest under the QEMU driver, for the driver's integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lifeboat_hypervisor::apply::{apply_to_raw, ApplyStats};
use lifeboat_hypervisor::{
    Accel, Cut, CutKind, Hypervisor, QemuConfig, QemuDriver, VmName, VmSpec,
};
use lifeboat_testkit::SerialConsole;

pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub driver: QemuDriver,
    pub vm: VmName,
    pub disk: PathBuf,
    pub http_port: u16,
    pub console: Option<SerialConsole>,
}

pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);

impl Lab {
    /// Defines and boots the test guest; returns once its shell answers.
    pub async fn boot(name: &str) -> Result<Lab> {
        Self::boot_with(name, |_| {}).await
    }

    pub async fn boot_with(name: &str, tune: impl FnOnce(&mut QemuConfig)) -> Result<Lab> {
        let tmp = tempfile::Builder::new().prefix("lb").tempdir_in("/tmp")?;
        let disk = lifeboat_testkit::guest_disk_copy(tmp.path(), "disk.qcow2")?;
        let http_port = lifeboat_testkit::free_tcp_port();
        let mut config = QemuConfig::new(tmp.path().join("home"));
        config.accel = Accel::Tcg;
        tune(&mut config);
        let driver = QemuDriver::new(config)?;
        let spec = VmSpec::parse(
            &format!(
                r#"
name = "{name}"
memory_mib = 256
[[disks]]
name = "vda"
path = "{}"
format = "qcow2"
[[nics]]
mac = "52:54:00:12:34:56"
network = "user"
host_forwards = [{{ host_port = {http_port}, guest_port = 80 }}]
"#,
                disk.display()
            ),
            Path::new("test"),
        )?;
        let vm = spec.name.clone();
        driver.define(spec).await?;
        let mut lab = Lab {
            tmp,
            driver,
            vm,
            disk,
            http_port,
            console: None,
        };
        lab.start().await?;
        Ok(lab)
    }

    pub async fn start(&mut self) -> Result<()> {
        self.driver.start(&self.vm).await?;
        let serial = self.driver.serial_socket(&self.vm)?;
        let mut console = SerialConsole::connect(&serial, lifeboat_testkit::boot_timeout()).await?;
        console
            .wait_ready(lifeboat_testkit::boot_timeout())
            .await
            .with_context(|| format!("guest did not boot; console log: {}", self.console_log()))?;
        self.console = Some(console);
        Ok(())
    }

    pub fn console_log(&self) -> String {
        let p = self
            .tmp
            .path()
            .join("home/vms")
            .join(self.vm.as_str())
            .join("console.log");
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Runs a shell command in the guest.
    pub async fn sh(&mut self, cmd: &str) -> Result<String> {
        Ok(self
            .console
            .as_mut()
            .context("guest console not connected")?
            .run(cmd, CMD_TIMEOUT)
            .await?)
    }

    /// Writes `count` random 64 KiB blocks into /data/NAME at block `seek`, then syncs.
    pub async fn write_random(&mut self, name: &str, seek: u32, count: u32) -> Result<()> {
        self.sh(&format!(
            "dd if=/dev/urandom of=/data/{name} bs=65536 seek={seek} count={count} conv=notrunc 2>/dev/null && sync"
        ))
        .await
        .map(drop)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.tmp.path().join(file)
    }

    pub async fn apply(
        &self,
        cut: &impl Cut,
        image: &Path,
    ) -> Result<lifeboat_hypervisor::apply::ApplyStats> {
        let disk = lifeboat_hypervisor::DiskName::new("vda").unwrap();
        Ok(apply_to_raw(cut, &disk, image).await?)
    }

    /// Takes a cut of `kind`, applies it onto `image` and commits it.
    pub async fn cut_into(&self, kind: CutKind, image: &Path) -> Result<ApplyStats> {
        let cut = match kind {
            CutKind::Full => self.driver.begin_full_cut(&self.vm).await?,
            CutKind::Incremental => self.driver.begin_incremental_cut(&self.vm).await?,
        };
        let stats = self.apply(&cut, image).await?;
        cut.commit().await?;
        Ok(stats)
    }

    /// Pauses the VM (so the disk stops changing), brings `image` up to date with an
    /// incremental cut, and says whether it now equals the live disk. The VM stays paused.
    pub async fn sync_paused_and_compare(&self, image: &Path) -> Result<(ApplyStats, bool)> {
        self.driver.pause(&self.vm).await?;
        let stats = self.cut_into(CutKind::Incremental, image).await?;
        Ok((stats, self.equals_live(image)?))
    }

    /// The live disk's content, read while the VM is paused (QEMU flushed it).
    pub fn snapshot_live(&self, out: &Path) -> Result<()> {
        qemu_img(
            &["convert", "-U", "-f", "qcow2", "-O", "raw"],
            &[&self.disk, out],
        )
    }

    /// True when `image` (raw) holds exactly the live disk's content. Pause the VM first.
    pub fn equals_live(&self, image: &Path) -> Result<bool> {
        let out = std::process::Command::new("qemu-img")
            .args(["compare", "-U", "-f", "raw", "-F", "qcow2"])
            .arg(image)
            .arg(&self.disk)
            .output()?;
        ensure!(
            out.status.code() == Some(0) || out.status.code() == Some(1),
            "qemu-img compare failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.status.code() == Some(0))
    }
}

pub fn qemu_img(args: &[&str], paths: &[&Path]) -> Result<()> {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .args(paths)
        .output()?;
    ensure!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

pub fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    Ok(std::fs::read(a)? == std::fs::read(b)?)
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Never leave a QEMU behind, whatever the test did.
        let pid_file = self
            .tmp
            .path()
            .join("home/vms")
            .join(self.vm.as_str())
            .join("qemu.pid");
        if let Ok(pid) = std::fs::read_to_string(pid_file) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}
