//! Stopping the host: a graceful stop (TERM/INT, or `pmhost stop`'s queued request, answered with the grace
//! period and, at exit, the outcome), an immediate one (QUIT, a second TERM), and the phase change they share.

use std::os::fd::AsFd;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{info, warn};

use super::core::{HostPhase, Master};
use super::startup::StartFailure;

impl Master {
    /// TERM/INT: graceful stop; the second request stops at once.
    pub(super) fn handle_stop(&mut self, signal: Signal) {
        if matches!(self.phase, HostPhase::Stopping { .. }) {
            info!(signal = signal.as_str(), "second stop request: stopping at once");
            self.kill_all();
            return;
        }
        info!(
            signal = signal.as_str(),
            workers = self.workers.len(),
            timeout_ms = self.host.stop_timeout.as_millis() as u64,
            "graceful stop"
        );
        self.begin_stop(Ok(()));
    }

    /// `pmhost stop`: a graceful stop, answered with the grace period at once and with the outcome at exit. A
    /// second request joins the stop under way (it never escalates it, unlike a second SIGTERM).
    pub(super) fn handle_stop_request(&mut self, sender: Pid) {
        // The sender is held by a pidfd from now on: the answers can never reach a process that reuses its pid.
        match crate::control::pidfd_open(sender) {
            Ok(pidfd) => {
                let accepted = crate::control::Reply::Accepted { grace: self.host.stop_timeout };
                let _ = crate::control::send(pidfd.as_fd(), crate::control::reply_signal(), accepted.encode());
                self.stop_requesters.push(pidfd);
            }
            Err(e) => warn!(sender = sender.as_raw(), "cannot answer a stop request: {e}"),
        }
        if matches!(self.phase, HostPhase::Running) {
            info!(sender = sender.as_raw(), workers = self.workers.len(), "graceful stop requested by pmhost stop");
            self.begin_stop(Ok(()));
        }
    }

    /// QUIT: immediate stop.
    pub(super) fn handle_stop_now(&mut self, signal: Signal) {
        info!(signal = signal.as_str(), workers = self.workers.len(), "immediate stop");
        if let Some(notifier) = &self.notifier {
            notifier.stopping();
        }
        if !matches!(self.phase, HostPhase::Stopping { .. }) {
            self.phase = HostPhase::Stopping { outcome: Ok(()) };
        }
        self.end_zygotes();
        self.kill_all();
    }

    /// Starts a graceful stop: every worker gets SIGTERM; stragglers get SIGKILL after `stop_timeout`.
    pub(super) fn begin_stop(&mut self, outcome: Result<(), StartFailure>) {
        if let Some(notifier) = &self.notifier {
            notifier.stopping();
        }
        self.phase = HostPhase::Stopping { outcome };
        self.end_zygotes();
        let pids: Vec<Pid> = self.workers.keys().copied().collect();
        for pid in pids {
            self.stop_worker(pid);
        }
        self.host_changed();
    }
}
