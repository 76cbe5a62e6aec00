//! Running plugin code outside a worker: in a probe process (a fork of the calling command) with a deadline.
//!
//! Loading a library runs its constructors, which may call `exit`, abort, crash (a truncated file maps pages
//! past its end: SIGBUS) or never return. In a probe, each of these ends or hangs the probe only; the command
//! reports it as one sentence and goes on. The probe sends its result back as JSON over a pipe.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Why a probe gave no result.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// The probe was still running at the deadline (it was killed).
    #[error("the plugin did not finish within {0:?}")]
    TimedOut(Duration),
    /// A signal ended the probe.
    #[error("the plugin crashed the probe with {0}")]
    Crashed(&'static str),
    /// The probe exited before reporting (a constructor or plugin code called `exit`).
    #[error("the plugin ended the probe with exit code {0}")]
    Exited(i32),
    /// The probe could not be run or read.
    #[error("{0}")]
    Broken(String),
}

/// Runs `work` in a probe process and returns its result, or why there is none, at most `timeout` later.
pub fn run<T: Serialize + DeserializeOwned>(timeout: Duration, work: impl FnOnce() -> T) -> Result<T, ProbeError> {
    let (read_end, write_end) = pipe().map_err(|e| ProbeError::Broken(format!("cannot create a pipe: {e}")))?;
    let parent = Pid::this();
    // The master's split code, if the caller is a master (see `master::footprint`).
    crate::master::footprint::join_own_code();
    // SAFETY: the calling command is single-threaded; the child only runs `work`, reports and leaves.
    match unsafe { fork() }.map_err(|e| ProbeError::Broken(format!("cannot fork: {e}")))? {
        ForkResult::Child => {
            drop(read_end);
            // A probe outlives no command (one killed while its probe hangs, say).
            if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != parent {
                // SAFETY: leave at once, without running the parent's exit handlers twice.
                unsafe { libc::_exit(1) }
            }
            let result = work();
            let _ = nix::unistd::write(&write_end, serde_json::to_string(&result).unwrap_or_default().as_bytes());
            // SAFETY: as above.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            collect(child, read_end, timeout)
        }
    }
}

/// In the command: the probe's result, or why there is none (a crash, an early exit, a hang).
fn collect<T: DeserializeOwned>(child: Pid, read_end: OwnedFd, timeout: Duration) -> Result<T, ProbeError> {
    let deadline = Instant::now() + timeout;
    let mut text = Vec::new();
    let mut file = std::fs::File::from(read_end);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(ProbeError::TimedOut(timeout));
            }
            Ok(_) => {
                let mut buf = [0u8; 4096];
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => text.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ProbeError::Broken(format!("cannot read the probe's report: {e}"))),
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(ProbeError::Broken(format!("cannot wait for the probe: {e}"))),
        }
    }
    let ended = waitpid(child, None);
    if let Ok(result) = serde_json::from_slice::<T>(&text) {
        return Ok(result);
    }
    Err(match ended {
        Ok(WaitStatus::Signaled(_, signal, _)) => ProbeError::Crashed(signal.as_str()),
        Ok(WaitStatus::Exited(_, code)) => ProbeError::Exited(code),
        _ => ProbeError::Broken("the probe ended without a report".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_returns_its_result_or_says_how_it_ended() {
        let long = Duration::from_secs(20);
        assert_eq!(run(long, || "fine".to_owned()), Ok("fine".to_owned()));
        assert_eq!(run::<String>(long, || std::process::exit(0)), Err(ProbeError::Exited(0)));
        assert_eq!(run::<String>(long, || std::process::abort()), Err(ProbeError::Crashed("SIGABRT")));
        let short = Duration::from_millis(200);
        let hang = || -> String {
            loop {
                std::thread::park();
            }
        };
        assert_eq!(run(short, hang), Err(ProbeError::TimedOut(short)));
    }
}
