//! Event-driven waits with deadlines: for a condition on files (inotify on their directory) and for processes to
//! exit (pidfds), recording when each exit was seen.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::clock::{check_interrupted, mono_ns};

/// Re-check interval when no event came: only a safety net for an event lost between a check and the watch
/// (every condition here is reflected in a watched file, so the events drive the waits). It never affects a
/// figure: marker timestamps come from the plugin, exit times from the pidfds.
const SAFETY_NET: Duration = Duration::from_millis(500);

/// Wakes up when a file in one of the watched directories is created, written, renamed in or closed.
pub struct DirWatch {
    inotify: Inotify,
}

impl DirWatch {
    /// Watches `dirs` (each must exist).
    pub fn new<P: AsRef<Path>>(dirs: &[P]) -> Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).context("inotify_init")?;
        let flags = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE;
        for dir in dirs {
            let dir = dir.as_ref();
            inotify.add_watch(dir, flags).with_context(|| format!("watch {}", dir.display()))?;
        }
        Ok(DirWatch { inotify })
    }

    /// Waits until `condition` returns a value, re-checking on every change in the watched directories; fails
    /// with `what` after `deadline`.
    pub fn wait_for<T>(&self, what: &str, deadline: Duration, mut condition: impl FnMut() -> Option<T>) -> Result<T> {
        let until = mono_ns() + deadline.as_nanos() as u64;
        loop {
            if let Some(value) = condition() {
                return Ok(value);
            }
            check_interrupted()?;
            let now = mono_ns();
            if now >= until {
                bail!("timed out after {deadline:?} waiting for {what}");
            }
            let left = Duration::from_nanos(until - now).min(SAFETY_NET);
            let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout(left)) {
                // Drain the queue: the condition is re-read as a whole, so which file changed does not matter.
                Ok(n) if n > 0 => while matches!(self.inotify.read_events(), Ok(events) if !events.is_empty()) {},
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll inotify"),
            }
        }
    }
}

/// Pidfds of a set of processes, to learn when each exits.
pub struct ExitWatch {
    pending: Vec<(i32, OwnedFd)>,
    /// Pids that had exited before they could be watched.
    gone: Vec<i32>,
}

impl ExitWatch {
    /// Opens a pidfd for every pid (before the action whose effect is measured, so no exit is missed).
    pub fn new(pids: &[i32]) -> ExitWatch {
        let mut pending = Vec::new();
        let mut gone = Vec::new();
        for &pid in pids {
            // SAFETY: pidfd_open with a pid and no flags returns a new descriptor or -1.
            let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if raw >= 0 {
                // SAFETY: a non-negative result is a fresh descriptor that nothing else owns.
                pending.push((pid, unsafe { OwnedFd::from_raw_fd(raw as i32) }));
            } else {
                gone.push(pid);
            }
        }
        ExitWatch { pending, gone }
    }

    /// Pids that were already gone when the watch was made.
    pub fn already_gone(&self) -> &[i32] {
        &self.gone
    }

    /// Waits until every watched process has exited; returns the `CLOCK_MONOTONIC` time the last exit was
    /// seen. Fails after `deadline`, naming the processes still alive.
    pub fn wait_all(&mut self, deadline: Duration) -> Result<u64> {
        let until = mono_ns() + deadline.as_nanos() as u64;
        let mut last_exit = 0;
        while !self.pending.is_empty() {
            check_interrupted()?;
            let now = mono_ns();
            if now >= until {
                let alive: Vec<i32> = self.pending.iter().map(|(pid, _)| *pid).collect();
                bail!("timed out after {deadline:?} waiting for processes {alive:?} to exit");
            }
            let ready: Vec<bool> = {
                let mut fds: Vec<PollFd<'_>> =
                    self.pending.iter().map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)).collect();
                match poll(&mut fds, timeout(Duration::from_nanos(until - now))) {
                    Ok(_) => fds.iter().map(|fd| fd.revents().is_some_and(|r| !r.is_empty())).collect(),
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e).context("poll pidfds"),
                }
            };
            if ready.contains(&true) {
                last_exit = mono_ns();
            }
            let mut exited = ready.into_iter();
            self.pending.retain(|_| !exited.next().unwrap_or(false));
        }
        Ok(last_exit)
    }
}

fn timeout(length: Duration) -> PollTimeout {
    // Round up: a zero timeout would spin until the deadline instead of sleeping.
    let ms = length.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}
