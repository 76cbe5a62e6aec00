//! The one table mapping signals to master actions, used by the master (to dispatch) and by the CLI (to send).

use nix::sys::signal::{SigSet, Signal};

/// What a signal asks the master to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A child changed state: reap it (SIGCHLD).
    Reap,
    /// Graceful stop; a second request stops at once (SIGTERM, SIGINT).
    Stop,
    /// Immediate stop: workers are killed (SIGQUIT).
    StopNow,
    /// Rolling restart with the plugin re-read (SIGHUP).
    Restart,
    /// Write a fresh status snapshot (SIGUSR1).
    Snapshot,
    /// Read the CLI's control requests (SIGUSR2).
    Requests,
    /// One worker more (SIGTTIN).
    ScaleUp,
    /// One worker fewer (SIGTTOU).
    ScaleDown,
    /// Re-execute the master's binary in place, keeping every worker (SIGVTALRM; `pmhost upgrade`).
    Upgrade,
}

/// Signal ↔ action. The first signal listed for an action is the one the CLI sends.
pub const TABLE: &[(Signal, Action)] = &[
    (Signal::SIGCHLD, Action::Reap),
    (Signal::SIGTERM, Action::Stop),
    (Signal::SIGINT, Action::Stop),
    (Signal::SIGQUIT, Action::StopNow),
    (Signal::SIGHUP, Action::Restart),
    (Signal::SIGUSR1, Action::Snapshot),
    (Signal::SIGUSR2, Action::Requests),
    (Signal::SIGTTIN, Action::ScaleUp),
    (Signal::SIGTTOU, Action::ScaleDown),
    (Signal::SIGVTALRM, Action::Upgrade),
];

/// The action of a signal the master handles.
pub fn action_of(signal: Signal) -> Option<Action> {
    TABLE.iter().find(|(s, _)| *s == signal).map(|(_, a)| *a)
}

/// The signal that asks for `action`.
pub fn signal_for(action: Action) -> Signal {
    TABLE.iter().find(|(_, a)| *a == action).map(|(s, _)| *s).expect("every action has a signal")
}

/// The snapshot request `pmhost status` sends: a real-time signal (SIGRTMIN+3), which the kernel queues once per
/// sending, each with its sender. Two SIGUSR1 sent while the first is still pending merge into one, and the
/// second sender would never get its answer; SIGUSR1 still asks for a snapshot when sent by hand.
pub fn queued_snapshot_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

/// The action of a signal number read from the signalfd (the table's signals and the queued snapshot request).
pub fn action_of_number(signo: libc::c_int) -> Option<(Signal, Action)> {
    if signo == queued_snapshot_signal() {
        return Some((signal_for(Action::Snapshot), Action::Snapshot));
    }
    let signal = Signal::try_from(signo).ok()?;
    Some((signal, action_of(signal)?))
}

/// Every signal the master handles (blocked, and read from its signalfd): the table's, the queued snapshot
/// request, and the real-time stop request of [`crate::control`].
pub fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for (signal, _) in TABLE {
        set.add(*signal);
    }
    crate::control::sigset_of(&set, &[crate::control::stop_signal(), queued_snapshot_signal()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queued_snapshot_request_is_handled_as_a_snapshot() {
        let set = handled();
        // SAFETY: a valid, initialised set and a valid signal number.
        assert_eq!(unsafe { libc::sigismember(set.as_ref(), queued_snapshot_signal()) }, 1);
        assert!(set.contains(Signal::SIGUSR1));
        assert_eq!(action_of_number(queued_snapshot_signal()), Some((Signal::SIGUSR1, Action::Snapshot)));
        assert_eq!(action_of_number(libc::SIGHUP), Some((Signal::SIGHUP, Action::Restart)));
        assert_eq!(action_of_number(libc::SIGRTMIN() + 4), None);
    }

    #[test]
    fn every_action_round_trips_through_its_signal() {
        for (_, action) in TABLE {
            assert_eq!(action_of(signal_for(*action)), Some(*action));
        }
    }
}
