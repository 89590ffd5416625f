//! Boots the test guest twice from one disk with plain QEMU: the serial shell, the
//! HTTP view of /data, an orderly ACPI power-down, and persistence across boots.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use lifeboat_testkit::{
    boot_timeout, free_tcp_port, guest_disk_copy, http_get, wait_http, SerialConsole,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::{sleep, Instant};

const CMD: Duration = Duration::from_secs(30);

/// A QEMU process, killed and reaped on drop.
struct Qemu {
    child: Child,
    serial: PathBuf,
    serial_log: PathBuf,
    qmp: PathBuf,
    http_port: u16,
}

impl Qemu {
    fn start(dir: &Path, disk: &Path, run: &str) -> anyhow::Result<Self> {
        let serial = dir.join(format!("{run}.serial.sock"));
        let serial_log = dir.join(format!("{run}.serial.log"));
        let qmp = dir.join(format!("{run}.qmp.sock"));
        let http_port = free_tcp_port();
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "256",
                "-smp",
                "1",
                "-nodefaults",
                "-display",
                "none",
            ])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
            .arg("-netdev")
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{http_port}-:80"))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ser0,path={},server=on,wait=off,logfile={}",
                serial.display(),
                serial_log.display()
            ))
            .args(["-serial", "chardev:ser0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(Stdio::null())
            .spawn()
            .context("start qemu-system-x86_64")?;
        Ok(Self {
            child,
            serial,
            serial_log,
            qmp,
            http_port,
        })
    }

    fn console_log(&self) -> String {
        std::fs::read_to_string(&self.serial_log).unwrap_or_default()
    }

    /// Presses the ACPI power button over QMP.
    async fn system_powerdown(&self) -> anyhow::Result<()> {
        let stream = UnixStream::connect(&self.qmp)
            .await
            .context("connect to QMP")?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        lines.next_line().await?.context("QMP greeting")?;
        for cmd in ["qmp_capabilities", "system_powerdown"] {
            write
                .write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())
                .await?;
            loop {
                let line = lines
                    .next_line()
                    .await?
                    .with_context(|| format!("QMP {cmd}: closed"))?;
                if line.contains("\"return\"") {
                    break;
                }
                if line.contains("\"error\"") {
                    bail!("QMP {cmd}: {line}");
                }
            }
        }
        Ok(())
    }

    async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("QEMU still running {limit:?} after power-down");
            }
            sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn boot(dir: &Path, disk: &Path, run: &str) -> anyhow::Result<(Qemu, SerialConsole)> {
    let qemu = Qemu::start(dir, disk, run)?;
    let started = Instant::now();
    let mut console = SerialConsole::connect(&qemu.serial, Duration::from_secs(30)).await?;
    if let Err(e) = console.wait_ready(boot_timeout()).await {
        bail!("{e:#}\nconsole log:\n{}", qemu.console_log());
    }
    eprintln!(
        "{run}: shell answered {:.1} s after QEMU started",
        started.elapsed().as_secs_f64()
    );
    Ok((qemu, console))
}

async fn power_down(qemu: &mut Qemu) -> anyhow::Result<()> {
    let pressed = Instant::now();
    qemu.system_powerdown().await?;
    let status = qemu
        .wait_exit(Duration::from_secs(60))
        .await
        .with_context(|| format!("console log:\n{}", qemu.console_log()))?;
    assert!(status.success(), "QEMU exit status {status}");
    let log = qemu.console_log();
    assert!(
        log.contains("/data is clean"),
        "no clean unmount; console log:\n{log}"
    );
    eprintln!(
        "powered off {:.1} s after system_powerdown",
        pressed.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test]
async fn guest_boots_serves_data_and_keeps_it_across_a_clean_power_down() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = guest_disk_copy(dir.path(), "disk.qcow2")?;

    // First boot: write through the serial shell, read back over HTTP.
    let (mut qemu, mut console) = boot(dir.path(), &disk, "boot1").await?;
    assert_eq!(console.run("cat /data/boot-count", CMD).await?, "1");
    console.run("echo hello > /data/x.txt && sync", CMD).await?;
    let err = console.run("echo oops; false", CMD).await.unwrap_err();
    assert!(format!("{err:#}").contains("oops"), "{err:#}");
    // Output without a final newline, and text that looks like a marker.
    assert_eq!(
        console.run("printf '__LBEND_x 0'", CMD).await?,
        "__LBEND_x 0"
    );
    assert_eq!(
        console.run("ls /data | sort", CMD).await?,
        "boot-count\nindex.html\nlost+found\nx.txt"
    );

    let index = wait_http(qemu.http_port, "/index.html", boot_timeout()).await?;
    assert_eq!(index, b"lifeboat test guest\n");
    let (status, body) = http_get(qemu.http_port, "/x.txt", CMD).await?;
    assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
    let (status, _) = http_get(qemu.http_port, "/missing", CMD).await?;
    assert_eq!(status, 404);

    power_down(&mut qemu).await?;
    drop(console);
    drop(qemu);

    // Second boot from the same disk.
    let (mut qemu, mut console) = boot(dir.path(), &disk, "boot2").await?;
    assert_eq!(console.run("cat /data/boot-count", CMD).await?, "2");
    assert_eq!(console.run("cat /data/x.txt", CMD).await?, "hello");
    let body = wait_http(qemu.http_port, "/boot-count", boot_timeout()).await?;
    assert_eq!(body, b"2\n");
    power_down(&mut qemu).await?;
    Ok(())
}
