//! Reaching a running master from the CLI: find it by its locked pid file, hold it by a pidfd (so a reused pid is
//! never signalled), signal it and wait for it to exit.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::CommandError;
use super::plan::Resolved;
use crate::pidfile;

/// A running master, held by a pidfd.
pub struct MasterHandle {
    /// Its pid.
    pub pid: Pid,
    pidfd: OwnedFd,
}

/// Finds the master named by `target`: its pid file must be locked.
pub fn find_master(target: &Resolved) -> Result<MasterHandle, CommandError> {
    let path = target.pid_file();
    let not_running = || CommandError::NotRunning { name: target.name.clone(), path: path.clone() };
    let root = target.pid_root_dir()?.ok_or_else(not_running)?;
    let pid = pidfile::running_master(&root, &target.name)?.ok_or_else(not_running)?;
    let pidfd = crate::control::pidfd_open(pid).map_err(|_| not_running())?;
    // The pid was read from a locked file, but the master may have exited (and the pid been reused) between that
    // read and pidfd_open: if the file is still locked by the same pid now, the pidfd refers to the master.
    if pidfile::running_master(&root, &target.name)? != Some(pid) {
        return Err(not_running());
    }
    Ok(MasterHandle { pid, pidfd })
}

impl MasterHandle {
    /// Sends `signal` through the pidfd (never to a process that merely reuses the pid).
    pub fn signal(&self, signal: Signal) -> Result<(), CommandError> {
        self.send(signal as i32)
            .map_err(|e| CommandError::system(format!("send {} to master pid {}", signal.as_str(), self.pid), e))
    }

    /// Sends signal number `signo` (a real-time one, which nix's `Signal` cannot name) through the pidfd.
    pub fn send(&self, signo: libc::c_int) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                std::os::fd::AsRawFd::as_raw_fd(&self.pidfd),
                signo,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Whether the master blocks signal `signo` (reads it from its signalfd), from `/proc/PID/status`: a signal
    /// it does not block would take its default action, which for a real-time signal is to end the process.
    pub fn blocks(&self, signo: libc::c_int) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else { return false };
        let mask = text.lines().find_map(|line| line.strip_prefix("SigBlk:")).map(str::trim);
        let Some(mask) = mask.and_then(|hex| u64::from_str_radix(hex, 16).ok()) else { return false };
        (1..=64).contains(&signo) && mask & (1u64 << (signo - 1)) != 0
    }

    /// The pidfd: readable once the master has exited.
    pub fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Waits until the master has exited, at most `timeout`; returns whether it did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(0) => return false,
                Ok(_) => return true,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return false,
            }
        }
    }
}
