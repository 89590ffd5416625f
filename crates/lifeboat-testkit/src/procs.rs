//! What /proc says of a process: CPU time, and fields of its status (peak and current
//! RSS, threads). For tests and benchmarks that measure a Lifeboat process from outside.

use anyhow::{anyhow, Context, Result};

/// CPU time a process has used so far (user + system), in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// One thread of a process: its id, its name (the kernel keeps 15 bytes) and the CPU
/// time it has used so far, in seconds.
#[derive(Clone, Debug)]
pub struct ThreadCpu {
    pub tid: u32,
    pub name: String,
    pub seconds: f64,
}

/// Every thread of a process with its CPU time, from /proc/PID/task/*/{stat,comm}. A
/// thread that ends between the listing and the read is left out.
pub fn thread_cpu(pid: u32) -> Result<Vec<ThreadCpu>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("read /proc/{pid}/task (did the process exit?)"))?;
    let mut threads = Vec::new();
    for task in tasks {
        let dir = task?.path();
        let Some(tid) = dir.file_name().and_then(|n| n.to_str()?.parse().ok()) else {
            continue;
        };
        let (Ok(name), Ok(seconds)) = (
            std::fs::read_to_string(dir.join("comm")),
            stat_cpu_seconds(&dir.join("stat").to_string_lossy()),
        ) else {
            continue;
        };
        threads.push(ThreadCpu {
            tid,
            name: name.trim_end().to_string(),
            seconds,
        });
    }
    Ok(threads)
}

/// User + system time from a stat file of /proc (a process's or a thread's).
fn stat_cpu_seconds(path: &str) -> Result<f64> {
    let stat =
        std::fs::read_to_string(path).with_context(|| format!("read {path} (did it exit?)"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // after the last ')'. There, field 3 (state) is index 0, so utime (14) is index 11.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: no ')' in {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("{path}: bad field {}: {stat:?}", i + 3))
    };
    let used = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok(used as f64 / hz)
}

/// The number a field of /proc/PID/status starts with (`Threads`; `VmHWM` in kB).
pub fn status_number(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status (did the process exit?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no {field}"))
}

/// A `kB` field of /proc/PID/status (`VmHWM`, `VmRSS`), in bytes.
pub fn status_kb(pid: u32, field: &str) -> Result<u64> {
    Ok(status_number(pid, field)? * 1024)
}
