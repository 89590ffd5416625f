//! Running one tool step as a child process and measuring it the same way for every
//! tool: a cold page cache before it, wall time, and the child's own peak resident set
//! from `wait4` (so a tool's RSS is never mixed with this process's or another step's).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One timed run of a tool.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Step {
    pub secs: f64,
    /// Peak RSS of the child (`ru_maxrss`), bytes.
    pub peak_rss: u64,
}

/// Where a step's stdout and stderr go, and what to call it in errors.
pub struct Logs {
    pub dir: PathBuf,
    /// Names the tool in errors (`lifeboat 128K`, `borg lz4`).
    pub tool: String,
}

impl Logs {
    /// Empties the page cache, then runs `cmd` to its end. Fails with the tail of its
    /// stderr when it exits non-zero. Returns the timing and its stdout.
    pub fn run_cold(&self, label: &str, cmd: &mut Command) -> Result<(Step, String)> {
        drop_caches()?;
        self.run(label, cmd)
    }

    /// Runs `cmd` with warm caches (setup steps that are not measured).
    pub fn run(&self, label: &str, cmd: &mut Command) -> Result<(Step, String)> {
        let out_path = self.dir.join(format!("{label}.out"));
        let err_path = self.dir.join(format!("{label}.err"));
        let stdout = std::fs::File::create(&out_path)?;
        let stderr = std::fs::File::create(&err_path)?;
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("{} {label}: start {:?}", self.tool, cmd.get_program()))?;
        let (status, rusage) = wait4(child.id() as libc::pid_t)
            .with_context(|| format!("{} {label}: wait for {:?}", self.tool, cmd.get_program()))?;
        let secs = started.elapsed().as_secs_f64();
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} {label}: {:?} failed (wait status {status:#x}); logs in {}:\n{}",
                self.tool,
                cmd.get_program(),
                self.dir.display(),
                tail.join("\n")
            );
        }
        Ok((
            Step {
                secs,
                // Linux reports ru_maxrss in KiB.
                peak_rss: rusage.ru_maxrss as u64 * 1024,
            },
            stdout,
        ))
    }
}

/// Reaps `pid` and returns its wait status and resource usage.
fn wait4(pid: libc::pid_t) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it in.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to a local i32 and a local rusage.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if r == pid {
            return Ok((status, rusage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err.into());
        }
    }
}

/// Empties the page cache, so every timed step reads from the disk.
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("drop the page cache (/proc/sys/vm/drop_caches): run the benchmark as root")
}

/// Bytes allocated on disk under `dir`, like `du -s --block-size=1`.
pub fn du(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                todo.push(entry.path());
            }
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// Bytes allocated on disk by one file.
pub fn allocated(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .blocks()
        * 512)
}

/// Fails loudly unless `a` and `b` hold the same bytes.
pub fn same_bytes(label: &str, a: &Path, b: &Path) -> Result<()> {
    let out = Command::new("cmp")
        .arg(a)
        .arg(b)
        .output()
        .context("run cmp")?;
    if !out.status.success() {
        bail!(
            "{label}: RESTORE DIFFERS from the image it should equal: cmp {} {}: {}{}",
            a.display(),
            b.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
