//! Containing a worker's whole process tree.
//!
//! A worker's plugin may start helpers; killing the worker's process group ends those that stayed in it, but a
//! helper that called `setsid()` (or `setpgid`) left the group. The master is therefore always a child
//! subreaper: when a worker dies, every descendant it leaves behind is re-parented to the master instead of to
//! init. Each worker marks its environment with `PMHOST_WORKER={pid}` before its plugin loads, which every
//! descendant inherits; when a worker is reaped, or an adopted process is (its own children are then adopted),
//! the master ends each adopted process whose marker names a worker that no longer runs. When the master
//! stops, whatever it adopted is ended too, so nothing titled as a worker outlives a stop.
//!
//! Orphans of a worker that still runs (a helper's child whose parent exited) are left alone until that worker
//! ends. The list of the master's children comes from `/proc/self/task/{pid}/children`: one read, only when a
//! process was reaped, and at most once per [`ORPHAN_SCAN_GAP`]. That list holds every worker, so reading it per
//! reap would make each exit cost O(workers); paced, a churn of thousands of exits a second costs a fixed number
//! of reads, and an orphan lives at most that gap longer.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::core::Master;
use crate::sysinfo::Mono;

/// The environment variable that ties a process to the worker it descends from.
pub const WORKER_MARK: &str = "PMHOST_WORKER";

/// The least time between two looks for orphans.
const ORPHAN_SCAN_GAP: std::time::Duration = std::time::Duration::from_millis(10);

impl Master {
    /// A process was reaped: look for orphans it left now, or when the last look is [`ORPHAN_SCAN_GAP`] old.
    pub(super) fn schedule_orphan_scan(&mut self) {
        let now = Mono::now();
        let at = self.last_orphan_scan.map_or(now, |last| (last + ORPHAN_SCAN_GAP).max(now));
        self.orphan_scan_at = Some(self.orphan_scan_at.map_or(at, |due| due.min(at)));
        if at <= now {
            self.end_orphans(false);
        }
    }

    /// Becomes the subreaper of every descendant (as PID 1 the kernel makes us that anyway).
    pub(super) fn adopt_orphans(&self) {
        if std::process::id() == 1 {
            info!("running as PID 1: adopting and reaping orphaned processes");
        } else if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!("cannot become a subreaper, so helpers that leave their worker's process group may outlive it: {e}");
        }
    }

    /// Ends the adopted processes that descend from workers no longer running (`all`: every adopted process, as
    /// the master stops); returns those it killed.
    pub(super) fn end_orphans(&mut self, all: bool) -> Vec<Pid> {
        let mut killed = Vec::new();
        let now = Mono::now();
        self.last_orphan_scan = Some(now);
        self.orphan_scan_at = None;
        for pid in self.adopted_children() {
            let worker = worker_mark(pid);
            let orphaned = all || worker.is_some_and(|w| !self.workers.contains_key(&w));
            if orphaned {
                info!(pid = pid.as_raw(), worker = worker.map(Pid::as_raw), "ending a process its worker left behind");
                // Its own group first (a setsid'd helper leads one), then the process itself.
                if nix::unistd::getpgid(Some(pid)).is_ok_and(|group| group == pid) {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                let _ = kill(pid, Signal::SIGKILL);
                killed.push(pid);
            }
        }
        killed
    }

    /// The master's children that are not its workers or zygotes: processes it adopted (and zygotes' spares).
    fn adopted_children(&self) -> Vec<Pid> {
        let me = std::process::id();
        let Some(text) = read_proc(&format!("/proc/self/task/{me}/children"), 8 * 1024) else { return Vec::new() };
        String::from_utf8_lossy(&text)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok().map(Pid::from_raw))
            .filter(|pid| !self.workers.contains_key(pid) && !self.zygotes.iter().any(|z| z.pid == *pid))
            .collect()
    }
}

/// Waits, at most `limit` in all, for `pids` (children just sent SIGKILL) to end, and reaps them: a master that
/// stops leaves no process behind, not even one still dying (a zygote's spare, an adopted helper).
pub(super) fn reap_killed(pids: &[Pid], limit: std::time::Duration) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + limit;
    for pid in pids {
        // Gone already (reaped): nothing to wait for.
        let Ok(pidfd) = crate::control::pidfd_open(*pid) else { continue };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::ZERO);
        let _ = poll(&mut [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)], timeout);
        let _ = nix::sys::wait::waitpid(*pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
}

/// A file of `/proc` read whole, into a buffer of `capacity` bytes to begin with: one read and one at its end
/// when it fits. (`std::fs::read` sizes its buffer from the file's length, which `/proc` gives as 0: a scan
/// took ~35 syscalls, most of them reads of a few dozen bytes, and a churn of thousands of workers a second
/// scans up to every [`ORPHAN_SCAN_GAP`].)
fn read_proc(path: &str, capacity: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    // Not `read_to_end`: it asks the file's length and position first (two syscalls that say nothing here).
    let (mut bytes, mut len) = (vec![0u8; capacity], 0);
    loop {
        if len == bytes.len() {
            bytes.resize(len * 2, 0);
        }
        match file.read(&mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    bytes.truncate(len);
    Some(bytes)
}

/// The worker a process descends from, from the mark in its environment.
fn worker_mark(pid: Pid) -> Option<Pid> {
    let environ = read_proc(&format!("/proc/{pid}/environ"), 16 * 1024)?;
    let prefix = format!("{WORKER_MARK}=");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .and_then(|value| std::str::from_utf8(value).ok()?.parse().ok())
        .map(Pid::from_raw)
}
