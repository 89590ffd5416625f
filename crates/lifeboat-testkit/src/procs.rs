//! What /proc says of a process: CPU time, and fields of its status (peak and current
//! RSS, threads). For tests and benchmarks that measure a Lifeboat process from outside.

use anyhow::{anyhow, Context, Result};

/// CPU time a process has used so far (user + system), in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat (did the process exit?)"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // after the last ')'. There, field 3 (state) is index 0, so utime (14) is index 11.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: no ')' in {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: bad field {}: {stat:?}", i + 3))
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
