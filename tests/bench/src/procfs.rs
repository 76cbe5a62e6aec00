//! What `/proc` tells about a process from outside: CPU ticks, context switches, proportional memory, and which
//! processes belong to a benchmark host (by the unique name in their command line or title).

use anyhow::{Context, Result};

fn read(pid: i32, file: &str) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).with_context(|| format!("read /proc/{pid}/{file}"))
}

/// `utime + stime` of `pid`, in clock ticks (fields 14 and 15 of `/proc/PID/stat`).
pub fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = read(pid, "stat")?;
    // The command name (field 2) may contain spaces and parentheses: count fields after its closing one.
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| -> Result<u64> {
        fields.get(n - 3).and_then(|f| f.parse().ok()).with_context(|| format!("field {n} of /proc/{pid}/stat"))
    };
    Ok(field(14)? + field(15)?)
}

/// Whether `pid` is asleep (state `S`, interruptible sleep: for a master, its `poll`), from `/proc/PID/stat`.
pub fn asleep(pid: i32) -> Result<bool> {
    let stat = read(pid, "stat")?;
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).context("malformed /proc/PID/stat")?;
    Ok(rest.split_whitespace().next() == Some("S"))
}

/// Waits, at most `limit`, until `pid` is asleep (see [`asleep`]); whether it was.
pub fn wait_asleep(pid: i32, limit: std::time::Duration) -> Result<bool> {
    let until = std::time::Instant::now() + limit;
    loop {
        if asleep(pid)? {
            return Ok(true);
        }
        if std::time::Instant::now() >= until {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Voluntary plus involuntary context switches of `pid`: every time it went to sleep or was preempted, so a
/// process that sleeps in one `poll` gains one per wake-up.
pub fn context_switches(pid: i32) -> Result<u64> {
    let status = read(pid, "status")?;
    let mut total = 0;
    for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("{key} in /proc/{pid}/status"))?;
        total += value;
    }
    Ok(total)
}

/// Proportional set size of `pid` in bytes (`Pss` of `/proc/PID/smaps_rollup`): shared pages count once in
/// total over the processes that share them.
pub fn pss_bytes(pid: i32) -> Result<u64> {
    let rollup = read(pid, "smaps_rollup")?;
    let kib: u64 = rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("Pss in /proc/{pid}/smaps_rollup"))?;
    Ok(kib * 1024)
}

/// Resident set size of `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: i32) -> Result<u64> {
    let status = read(pid, "status")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of [`cpu_ticks`].
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Whether the process is a zombie (exited, not yet reaped).
pub fn is_zombie(pid: i32) -> bool {
    read(pid, "stat")
        .ok()
        .and_then(|stat| stat.rfind(')').map(|i| stat[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Live pids whose `/proc/PID/cmdline` contains `needle` (masters and workers carry the host's name in their
/// title, CLI commands in their arguments), excluding this process.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        })
        .filter(|&pid| !is_zombie(pid))
        .collect()
}
