//! A worker's life as the master sees it: one state with its own deadline, instead of a set of flags.
//!
//! ```text
//!   Starting { init_deadline } ──ready──▶ Ready
//!        │                                  │
//!        └──────────ask to stop─────────────┴──▶ Stopping { kill_at, init_deadline if still starting }
//!   any ──kill (a fault, or not wanted)──▶ Killed { reason, stop_asked }
//! ```
//!
//! The process's end is judged from the state it ended in (see [`super::policy::classify_exit`]): a worker the
//! master asked to stop, or killed because it no longer wanted it, ended as asked; one that ended on its own
//! with a failure, or was killed for a fault, crashed.

use crate::sysinfo::Mono;

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Life {
    /// Loading the plugin and running `init`; killed if not ready by `init_deadline`.
    Starting { init_deadline: Mono },
    /// `init` succeeded: the worker works.
    Ready,
    /// Asked to stop (SIGTERM): killed if still there at `kill_at`. A worker asked to stop while still starting
    /// keeps its init deadline.
    Stopping { kill_at: Mono, init_deadline: Option<Mono> },
    /// SIGKILL sent. `stop_asked`: the master no longer wanted the worker (a stop came first, or it was
    /// discarded), so its end does not leave its slot empty.
    Killed { reason: KillReason, stop_asked: bool },
}

/// Why the master killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KillReason {
    /// A fault (`init` too slow, hung `work`, ...): the worker's end counts as a crash.
    Fault,
    /// Not wanted any more (a straggler after the stop timeout, a new worker of a rolled-back restart, an
    /// immediate stop): not a crash.
    Discarded,
}

impl Life {
    /// A new worker, which must be ready by `init_deadline`.
    pub fn starting(init_deadline: Mono) -> Life {
        Life::Starting { init_deadline }
    }

    /// `init` succeeded (a worker already asked to stop stays stopping).
    pub fn ready(&mut self) {
        match self {
            Life::Starting { .. } => *self = Life::Ready,
            Life::Stopping { init_deadline, .. } => *init_deadline = None,
            Life::Ready | Life::Killed { .. } => {}
        }
    }

    /// The master asks the worker to stop; returns whether that is new (then TERM is due).
    pub fn ask_to_stop(&mut self, kill_at: Mono) -> bool {
        match self {
            Life::Starting { init_deadline } => {
                *self = Life::Stopping { kill_at, init_deadline: Some(*init_deadline) };
                true
            }
            Life::Ready => {
                *self = Life::Stopping { kill_at, init_deadline: None };
                true
            }
            Life::Stopping { .. } => false,
            Life::Killed { stop_asked, .. } => {
                *stop_asked = true;
                false
            }
        }
    }

    /// The master kills the worker for `reason`.
    pub fn kill(&mut self, reason: KillReason) {
        let stop_asked = reason == KillReason::Discarded || self.stop_sent();
        *self = Life::Killed { reason, stop_asked };
    }

    /// The master no longer wants the worker (asked to stop, or discarded): its slot may be filled again.
    pub fn stop_sent(&self) -> bool {
        matches!(self, Life::Stopping { .. } | Life::Killed { stop_asked: true, .. })
    }

    /// SIGKILL was sent.
    pub fn kill_sent(&self) -> bool {
        matches!(self, Life::Killed { .. })
    }

    /// When a worker asked to stop gets SIGKILL.
    pub fn kill_at(&self) -> Option<Mono> {
        match self {
            Life::Stopping { kill_at, .. } => Some(*kill_at),
            _ => None,
        }
    }

    /// When a worker still in `init` gets killed for being too slow.
    pub fn init_deadline(&self) -> Option<Mono> {
        match self {
            Life::Starting { init_deadline } => Some(*init_deadline),
            Life::Stopping { init_deadline, .. } => *init_deadline,
            Life::Ready | Life::Killed { .. } => None,
        }
    }

    /// Working: ready and not asked to stop.
    pub fn serving(&self) -> bool {
        matches!(self, Life::Ready)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(ms: u64) -> Mono {
        Mono(Duration::from_millis(ms))
    }

    #[test]
    fn transitions() {
        type Step = fn(&mut Life);
        let ready: Step = |l| l.ready();
        let stop: Step = |l| {
            l.ask_to_stop(at(500));
        };
        let fault: Step = |l| l.kill(KillReason::Fault);
        let discard: Step = |l| l.kill(KillReason::Discarded);
        let cases: &[(&str, &[Step], Life)] = &[
            ("ready", &[ready], Life::Ready),
            (
                "stop while starting keeps the init deadline",
                &[stop],
                Life::Stopping { kill_at: at(500), init_deadline: Some(at(100)) },
            ),
            ("stop when ready", &[ready, stop], Life::Stopping { kill_at: at(500), init_deadline: None }),
            (
                "ready after the stop clears the init deadline",
                &[stop, ready],
                Life::Stopping { kill_at: at(500), init_deadline: None },
            ),
            (
                "a second stop changes nothing",
                &[ready, stop, stop],
                Life::Stopping { kill_at: at(500), init_deadline: None },
            ),
            (
                "fault kill of a working worker",
                &[ready, fault],
                Life::Killed { reason: KillReason::Fault, stop_asked: false },
            ),
            (
                "fault kill of a stopping worker",
                &[ready, stop, fault],
                Life::Killed { reason: KillReason::Fault, stop_asked: true },
            ),
            ("discarded", &[discard], Life::Killed { reason: KillReason::Discarded, stop_asked: true }),
            (
                "a stop after a fault kill frees the slot",
                &[fault, stop],
                Life::Killed { reason: KillReason::Fault, stop_asked: true },
            ),
            (
                "ready after a kill stays killed",
                &[fault, ready],
                Life::Killed { reason: KillReason::Fault, stop_asked: false },
            ),
        ];
        for (name, steps, expected) in cases {
            let mut life = Life::starting(at(100));
            for step in *steps {
                step(&mut life);
            }
            assert_eq!(&life, expected, "{name}");
        }
    }

    #[test]
    fn what_each_state_says() {
        // (state, stop_sent, kill_sent, kill_at, init_deadline, serving)
        let cases = [
            (Life::starting(at(1)), false, false, None, Some(at(1)), false),
            (Life::Ready, false, false, None, None, true),
            (
                Life::Stopping { kill_at: at(2), init_deadline: Some(at(1)) },
                true,
                false,
                Some(at(2)),
                Some(at(1)),
                false,
            ),
            (Life::Killed { reason: KillReason::Fault, stop_asked: false }, false, true, None, None, false),
            (Life::Killed { reason: KillReason::Discarded, stop_asked: true }, true, true, None, None, false),
        ];
        for (life, stop_sent, kill_sent, kill_at, init_deadline, serving) in cases {
            assert_eq!(life.stop_sent(), stop_sent, "{life:?}");
            assert_eq!(life.kill_sent(), kill_sent, "{life:?}");
            assert_eq!(life.kill_at(), kill_at, "{life:?}");
            assert_eq!(life.init_deadline(), init_deadline, "{life:?}");
            assert_eq!(life.serving(), serving, "{life:?}");
        }
        let mut life = Life::Ready;
        assert!(life.ask_to_stop(at(3)), "the first stop request sends TERM");
        assert!(!life.ask_to_stop(at(4)), "a second one does not");
    }
}
