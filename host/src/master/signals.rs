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
];

/// The action of a signal the master handles.
pub fn action_of(signal: Signal) -> Option<Action> {
    TABLE.iter().find(|(s, _)| *s == signal).map(|(_, a)| *a)
}

/// The signal that asks for `action`.
pub fn signal_for(action: Action) -> Signal {
    TABLE.iter().find(|(_, a)| *a == action).map(|(s, _)| *s).expect("every action has a signal")
}

/// Every signal the master handles (blocked, and read from its signalfd): the table's, and the real-time stop
/// request of [`crate::control`].
pub fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for (signal, _) in TABLE {
        set.add(*signal);
    }
    crate::control::sigset_of(&set, &[crate::control::stop_signal()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_through_its_signal() {
        for (_, action) in TABLE {
            assert_eq!(action_of(signal_for(*action)), Some(*action));
        }
    }
}
