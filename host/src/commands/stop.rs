//! `pmhost stop`: ask the master to stop, wait until it (and so every worker) is gone, escalate if it takes too
//! long, and say what happened.
//!
//! The request and the answers travel as queued signals ([`crate::control`]), so a stop needs no file (it works
//! on a full disk and without a status directory) and learns the host's own grace period from the master. A
//! stop that had to kill anything says so and exits 7, like a forced stop of a foreground master.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::CommandError;
use super::plan::resolve_target;
use super::process::{MasterHandle, find_master};
use crate::cli::StopArgs;
use crate::control::{self, Reply};
use crate::exit::cli as code;
use crate::master::signals::{Action, signal_for};

/// Added to the host's stop timeout, so the master's own grace ends first.
const MARGIN: Duration = Duration::from_secs(5);
/// How long a master that runs has to answer a stop request; one that does not is stopped or hung.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The wait when the master never answered (the default stop timeout plus the margin).
const FALLBACK: Duration = Duration::from_secs(15);
/// How long an immediate stop may take before the master itself is killed.
const IMMEDIATE_GRACE: Duration = Duration::from_secs(5);

/// What the wait for the master ended with.
enum Ended {
    /// The master exited; `forced` when it said it killed workers (or did not say: it was killed itself).
    Exited { forced: bool },
    /// The deadline passed first.
    TimedOut,
}

/// The master's answers, read from a signalfd (the reply signal is blocked in this process).
struct Answers {
    fd: SignalFd,
    grace: Option<Duration>,
    stopped: Option<bool>,
}

impl Answers {
    fn new() -> Result<Answers, CommandError> {
        let set = control::sigset_of(&SigSet::empty(), &[control::reply_signal()]);
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .map_err(|e| CommandError::system("block the stop answer signal", e))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| CommandError::system("create a signalfd", e))?;
        Ok(Answers { fd, grace: None, stopped: None })
    }

    fn drain(&mut self) {
        while let Ok(Some(info)) = self.fd.read_signal() {
            match Reply::decode(info.ssi_int) {
                Some(Reply::Accepted { grace }) => self.grace = Some(grace),
                Some(Reply::Stopped { forced }) => self.stopped = Some(forced),
                None => {}
            }
        }
    }

    /// Waits until the master exits or `until` says stop waiting (checked after every answer), at most to
    /// `deadline`.
    fn wait(&mut self, master: &MasterHandle, deadline: Instant, until: impl Fn(&Answers) -> bool) -> Option<Ended> {
        loop {
            self.drain();
            if until(self) {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(Ended::TimedOut);
            }
            let mut fds =
                [PollFd::new(master.exit_fd(), PollFlags::POLLIN), PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(_) if fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLIN)) => {
                    // The master answers before it exits: what it said is queued already.
                    self.drain();
                    return Some(Ended::Exited { forced: self.stopped.unwrap_or(true) });
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return Some(Ended::TimedOut),
            }
        }
    }
}

/// Runs `pmhost stop`.
pub fn stop(args: StopArgs) -> Result<i32, CommandError> {
    let target = resolve_target(&args.target)?;
    let name = &target.name;
    let master = find_master(&target)?;
    let started = Instant::now();
    let mut answers = Answers::new()?;
    let stopped = |forced: bool| -> Result<i32, CommandError> {
        let ms = started.elapsed().as_millis();
        if forced {
            println!("stopped {name} in {ms} ms, forcibly: workers were killed before they finished");
            Ok(code::STOPPED_FORCIBLY)
        } else {
            println!("stopped {name} in {ms} ms");
            Ok(code::OK)
        }
    };
    if !args.now {
        control::send(master.exit_fd(), control::stop_signal(), 0)
            .map_err(|e| CommandError::system(format!("send a stop request to master pid {}", master.pid), e))?;
        // The master answers at once with its grace period; --timeout, when given, is the whole wait.
        let answered = answers.wait(&master, started + ANSWER_WAIT, |a| a.grace.is_some());
        if let Some(Ended::Exited { forced }) = answered {
            return stopped(forced);
        }
        let timeout = args.timeout.unwrap_or_else(|| answers.grace.map_or(FALLBACK, |grace| grace + MARGIN));
        match answers.grace {
            Some(grace) => println!(
                "stopping {name} (master pid {}): graceful, workers have {grace:?} to finish, waiting up to {timeout:?}",
                master.pid
            ),
            None => println!(
                "stopping {name} (master pid {}): the master has not answered within {ANSWER_WAIT:?}; waiting up to \
                 {timeout:?}",
                master.pid
            ),
        }
        if let Some(Ended::Exited { forced }) = answers.wait(&master, started + timeout, |_| false) {
            return stopped(forced);
        }
        println!("{name} did not stop within {timeout:?}: stopping at once (workers are killed)");
    }
    master.signal(signal_for(Action::StopNow))?;
    if let Some(Ended::Exited { .. }) = answers.wait(&master, Instant::now() + IMMEDIATE_GRACE, |_| false) {
        if args.now {
            // Asked for: killing the workers is what succeeded.
            println!("stopped {name} at once in {} ms (workers killed, as asked)", started.elapsed().as_millis());
            return Ok(code::OK);
        }
        return stopped(true);
    }
    println!("{name} master did not exit within {IMMEDIATE_GRACE:?} of an immediate stop: killing it");
    master.signal(Signal::SIGKILL)?;
    if master.wait_exit(IMMEDIATE_GRACE) {
        println!("killed {name} master (pid {}); its workers end on their own within a second", master.pid);
        Ok(code::STOPPED_FORCIBLY)
    } else {
        Err(CommandError::Unkillable { name: name.clone(), pid: master.pid.as_raw() })
    }
}
