//! The protected VM and the churn inside it. The VM is defined, started and killed with
//! the release `lifeboat` binary on the agent's home (like `boot_guest` in
//! crates/lifeboat/tests/common/cluster.rs), not with the in-process driver of
//! `crate::guest::BenchVm`, so that every Lifeboat step of this bench is the shipped
//! CLI. Its shell is the serial console of `lifeboat_testkit`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lifeboat_hypervisor::qemu::process;
use lifeboat_hypervisor::{QemuConfig, QemuDriver, VmName};
use lifeboat_testkit::SerialConsole;

use super::procs::{run_ok, Lifeboat};

/// Random bytes past the churn's write size in the guest's source buffer: each write
/// starts at a different byte offset of the buffer (see `churn_loop`).
const SLACK_MIB: u64 = 4;
/// Bytes the source offset moves per write. Odd, so its multiples modulo any power of
/// two (the vault's chunk size) do not repeat for that many writes: no written chunk
/// ever equals an earlier one, and the vault cannot deduplicate the churn away.
const SKIP_STEP: u64 = 4099;
const CMD_TIMEOUT: Duration = Duration::from_secs(600);

/// A running VM, killed on drop however the bench ends.
pub struct Vm {
    lb: Lifeboat,
    home: PathBuf,
    name: String,
    driver: QemuDriver,
    pub console: SerialConsole,
}

/// Defines `name` on the host whose home is `home` (the test guest on vda, an empty
/// qcow2 of `vdb_size` bytes on vdb; 256 MiB, 1 vCPU), starts it and waits for its shell.
pub async fn boot(lb: &Lifeboat, home: &Path, name: &str, vdb_size: u64) -> Result<Vm> {
    std::fs::create_dir_all(home)?;
    let vda = lifeboat_testkit::guest_disk_copy(home, &format!("{name}.qcow2"))?;
    let vdb = home.join(format!("{name}-vdb.qcow2"));
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2"])
        .arg(&vdb)
        .arg(vdb_size.to_string());
    run_ok(c).context("create the churn disk (qemu-img create)")?;
    let spec = home.join(format!("{name}.toml"));
    let mut text = format!("name = \"{name}\"\nmemory_mib = 256\nvcpus = 1\n");
    for (disk, path) in [("vda", &vda), ("vdb", &vdb)] {
        text += &format!(
            "[[disks]]\nname = \"{disk}\"\npath = \"{}\"\nformat = \"qcow2\"\n",
            path.display()
        );
    }
    std::fs::write(&spec, text)?;
    let mut c = lb.on_home(home);
    c.args(["vm", "define"]).arg(&spec);
    run_ok(c)?;
    let driver = QemuDriver::new(QemuConfig::new(home))?;
    let vm_name = VmName::new(name).map_err(|e| anyhow!("VM name {name:?}: {e}"))?;
    let socket = driver.serial_socket(&vm_name)?;
    let log = driver.vm_dir(&vm_name)?.console_log();
    let mut c = lb.on_home(home);
    c.args(["vm", "start", name]);
    run_ok(c)?;
    // A guard before the first await that can fail: no QEMU outlives a failed boot.
    let mut guard = KillOnDrop {
        lb: lb.clone(),
        home: home.to_path_buf(),
        name: name.to_string(),
        driver: QemuDriver::new(QemuConfig::new(home))?,
        armed: true,
    };
    let limit = lifeboat_testkit::boot_timeout();
    let console = async {
        let mut console = SerialConsole::connect(&socket, limit).await?;
        console.wait_ready(limit).await?;
        anyhow::Ok(console)
    }
    .await
    .map_err(|e| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        e.context(format!("guest {name} did not boot; console log:\n{text}"))
    })?;
    guard.armed = false;
    Ok(Vm {
        lb: lb.clone(),
        home: home.to_path_buf(),
        name: name.to_string(),
        driver,
        console,
    })
}

struct KillOnDrop {
    lb: Lifeboat,
    home: PathBuf,
    name: String,
    driver: QemuDriver,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            kill(&self.lb, &self.home, &self.name, &self.driver);
        }
    }
}

/// `lifeboat vm kill`, then SIGKILL to whatever QEMU is still this VM's, in case the
/// CLI failed (the pid file check makes sure a recycled pid is never hit).
pub(crate) fn kill(lb: &Lifeboat, home: &Path, name: &str, driver: &QemuDriver) {
    let mut c = lb.on_home(home);
    c.args(["vm", "kill", name]);
    if let Err(e) = run_ok(c) {
        eprintln!("[rpo] {e:#}");
    }
    let Ok(vm) = VmName::new(name) else { return };
    if let Ok(dir) = driver.vm_dir(&vm) {
        if let Some(pid) = process::read_live_pid(&dir) {
            process::send_kill(pid);
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        kill(&self.lb, &self.home, &self.name, &self.driver);
    }
}

/// The guest's churn: `mib` MiB written to /dev/vdb once a second.
pub struct Churn {
    pub mib: u64,
    /// Seconds the guest took to fill its source buffer from /dev/urandom.
    pub buffer_secs: f64,
}

impl Vm {
    async fn sh(&mut self, cmd: &str) -> Result<String> {
        Ok(self.console.run(cmd, CMD_TIMEOUT).await?)
    }

    /// Fills the source buffer in the guest's RAM (/tmp is on the initramfs): the
    /// churn then costs a copy per write, not /dev/urandom, which is slow under TCG.
    pub async fn prepare_churn(&mut self, mib: u64, disk_mib: u64) -> Result<Churn> {
        if mib == 0 || mib * 2 > disk_mib {
            bail!("churn of {mib} MiB/s: at least 1 MiB and at most half of vdb ({disk_mib} MiB)");
        }
        let started = Instant::now();
        self.sh(&format!(
            "mkdir -p /tmp && dd if=/dev/urandom of=/tmp/churn.buf bs=1M count={} 2>/dev/null && sync",
            mib + SLACK_MIB
        ))
        .await
        .context("fill the guest's churn buffer")?;
        Ok(Churn {
            mib,
            buffer_secs: started.elapsed().as_secs_f64(),
        })
    }

    /// Starts the churn loop in the background of the guest's shell.
    pub async fn start_churn(&mut self, churn: &Churn, disk_mib: u64) -> Result<()> {
        let cmd = churn_loop(churn.mib, disk_mib);
        self.sh(&cmd).await.context("start the churn loop")?;
        Ok(())
    }

    /// Stops the churn loop (it finishes the write it is in).
    pub async fn stop_churn(&mut self) -> Result<()> {
        self.sh("touch /tmp/churn.stop").await?;
        Ok(())
    }

    /// Bytes written to /dev/vdb since boot, by the guest kernel's count
    /// (/sys/block/vdb/stat, field 7: sectors of 512 bytes), and whether a churn write
    /// has failed.
    pub async fn vdb_written(&mut self) -> Result<(u64, bool)> {
        let out = self
            .sh("cat /sys/block/vdb/stat; [ -e /tmp/churn.err ] && echo FAILED || true")
            .await?;
        let sectors = out
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(6))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("unexpected /sys/block/vdb/stat: {out:?}"))?;
        Ok((sectors * 512, out.contains("FAILED")))
    }
}

/// One shell line (a tty line must stay under 4 KiB) that writes `mib` MiB to /dev/vdb
/// once a second, paced by /proc/uptime, until /tmp/churn.stop exists.
///
/// - `oflag=direct`: each write goes to the virtual disk as it is made, not into the
///   guest's page cache, which 256 MiB could not hold and would flush in bursts.
/// - `skip=k*SKIP_STEP` bytes into the buffer: fresh chunk contents every write (see
///   `SKIP_STEP`); the destination rotates over vdb in whole `mib`-MiB slots.
/// - A write that overruns its second starts the next one at once, without trying to
///   catch up: when TCG cannot write `mib` MiB a second, the achieved rate says so.
fn churn_loop(mib: u64, disk_mib: u64) -> String {
    let slots = disk_mib / mib * mib;
    let wrap = SLACK_MIB << 20;
    format!(
        "rm -f /tmp/churn.stop /tmp/churn.err; \
         ( u() {{ read a b </proc/uptime; echo ${{a%.*}}${{a#*.}}; }}; k=0; next=$(u); \
           while [ ! -e /tmp/churn.stop ]; do \
             dd if=/tmp/churn.buf of=/dev/vdb bs=1M count={mib} \
               skip=$((k*{SKIP_STEP}%{wrap})) iflag=skip_bytes \
               seek=$((k*{mib}%{slots})) oflag=direct conv=notrunc 2>/dev/null \
               || echo failed >/tmp/churn.err; \
             k=$((k+1)); next=$((next+100)); now=$(u); \
             if [ $now -lt $next ]; then usleep $(((next-now)*10000)); else next=$now; fi; \
           done ) </dev/null >/dev/null 2>&1 &"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_loop_fits_a_tty_line() {
        let cmd = churn_loop(20, 2048);
        assert!(cmd.len() < 1500, "{} bytes", cmd.len());
        assert!(cmd.contains("seek=$((k*20%2040))"), "{cmd}");
        assert!(cmd.contains("skip=$((k*4099%4194304))"), "{cmd}");
    }
}
