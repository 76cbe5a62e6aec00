//! Facts about processes and time read from the system: memory from `/proc`, local wall-clock text, the
//! monotonic clock shared by every process on the machine.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Resident set size of `pid` in bytes, from `/proc/PID/statm`; `None` if the process is gone.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Resident set size in bytes from an open `/proc/PID/statm` (re-read from its start: proc regenerates it), so a
/// snapshot of many workers costs one `pread` per worker instead of a path walk, open, read and close.
pub fn rss_bytes_of(statm: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 128];
    let len = statm.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..len]).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// What `/proc/PID/stat` says about a process: whether it is stopped (state `T`, by SIGSTOP or a terminal; `t`,
/// by a tracer) and its resident set size. `None` if the process is gone.
pub fn process_state(pid: i32) -> Option<ProcessState> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat, page_size())
}

/// The user a process runs as (the owner of `/proc/PID`: its effective uid while it is dumpable, which a worker
/// that switched user makes itself again). `None` if the process is gone.
pub fn process_uid(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}")).ok().map(|meta| meta.uid())
}

/// A process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessState {
    /// Stopped by a signal or a tracer: it runs no code until it gets SIGCONT.
    pub stopped: bool,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

fn parse_stat(stat: &str, page_size: u64) -> Option<ProcessState> {
    // The command name (field 2) is in parentheses and may contain anything, spaces and ')' included.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    // Field 24 (rss, in pages) is the 22nd after the name.
    let pages: u64 = fields.nth(20)?.parse().ok()?;
    Some(ProcessState { stopped: matches!(state, "T" | "t"), rss_bytes: pages * page_size })
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |size| size as u64)
}

/// Nanoseconds on `CLOCK_MONOTONIC`, comparable between processes on this machine.
pub fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// `YYYY-MM-DD HH:MM:SS` in local time (the format of the original's logs and status table).
pub fn local_time_text(at: SystemTime) -> String {
    let secs = unix_seconds(at) as libc::time_t;
    // SAFETY: `tm` is plain data; localtime_r writes only into it and reads the time zone.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// A point on `CLOCK_MONOTONIC` (the clock timerfd deadlines use), as time since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Mono(pub Duration);

impl Mono {
    /// Now.
    pub fn now() -> Mono {
        Mono(Duration::from_nanos(monotonic_ns()))
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Mono) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for Mono {
    type Output = Mono;
    fn add(self, rhs: Duration) -> Mono {
        Mono(self.0 + rhs)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_rss_is_positive() {
        assert!(super::rss_bytes(std::process::id() as i32).unwrap() > 0);
        let statm = std::fs::File::open("/proc/self/statm").unwrap();
        let before = super::rss_bytes_of(&statm).unwrap();
        let grown = vec![1u8; 32 << 20];
        let after = super::rss_bytes_of(&statm).unwrap();
        assert!(after >= before + (16 << 20), "a held statm is read afresh: {before} -> {after}");
        drop(grown);
    }

    #[test]
    fn stat_lines_give_the_stopped_state_and_rss() {
        let line = |state: &str| {
            format!("42 (a) b) c) {state} 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 100 1000000 250 184467 1 1")
        };
        let running = super::parse_stat(&line("S"), 4096).unwrap();
        assert_eq!(running, super::ProcessState { stopped: false, rss_bytes: 250 * 4096 });
        assert!(super::parse_stat(&line("T"), 4096).unwrap().stopped);
        assert!(super::parse_stat(&line("t"), 4096).unwrap().stopped);
        assert_eq!(super::parse_stat("42 (x", 4096), None);
        let me = super::process_state(std::process::id() as i32).unwrap();
        assert!(!me.stopped && me.rss_bytes > 0, "{me:?}");
    }

    #[test]
    fn local_time_has_the_documented_shape() {
        let text = super::local_time_text(std::time::SystemTime::now());
        assert_eq!(text.len(), 19);
        assert_eq!(&text[4..5], "-");
        assert_eq!(&text[13..14], ":");
    }
}
