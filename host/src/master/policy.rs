//! The master's decisions as pure functions: they take plain values and return what to do, and the event loop
//! performs it. Table-driven unit tests below prove the policy in milliseconds; the end-to-end tests prove that
//! the process plumbing carries it out.
//!
//! - [`classify_exit`]: how a worker's end counts (normal, asked, crash) and the sentence that says why;
//! - [`after_exit`]: the slot's crash count and respawn delay (the backoff schedule and its reset);
//! - [`occupancy`] and [`slots_to_fill`]: which slots hold a worker, which get one now, which workers are above the
//!   wanted count;
//! - [`super::core::Startup::verdict`]: whether a fresh start is decided, and how;
//! - [`super::rollout::Rollout`]'s steps: which slot moves next, what a ready or failed new worker changes, and
//!   what a rollback undoes.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::life::Life;
use crate::exit::worker as worker_code;
use crate::settings::Backoff;
use crate::sysinfo::Mono;

/// How a child ended, from `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(Signal),
}

/// How a worker's end counts, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCategory {
    /// It ended on its own, by its limits.
    Normal,
    /// It ended because the master asked it to stop.
    Stopped,
    /// The master killed it because it no longer wanted it (not a fault).
    Killed,
    /// A failure: a signal nobody asked for, a non-zero code, a panic, a fault the master found.
    Crash,
}

impl ExitCategory {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitCategory::Normal => "normal",
            ExitCategory::Stopped => "stopped",
            ExitCategory::Killed => "killed",
            ExitCategory::Crash => "crash",
        }
    }
}

/// A worker's end, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitClass {
    pub category: ExitCategory,
    /// One sentence: the exit code's meaning or the signal, with the fault behind it.
    pub reason: String,
}

impl ExitClass {
    pub fn crash(&self) -> bool {
        self.category == ExitCategory::Crash
    }
}

/// Judges a worker's end from how it ended, the state it was in, and the fault recorded for it (its own report,
/// or the master's reason to kill it).
/// `reported`: the fault is the worker's own report of why it failed (not the master's reason to end it).
pub fn classify_exit(ended: Ended, life: &Life, fault: Option<&str>, reported: bool) -> ExitClass {
    let (mut reason, crash) = match ended {
        Ended::Code(code) => (worker_code::describe(code).to_owned(), code != worker_code::OK),
        Ended::Signal(signal) => {
            let asked = life.stop_sent() && fault.is_none();
            (format!("killed by {}", signal.as_str()), !asked)
        }
    };
    if let Some(why) = fault {
        // A worker that reported why it failed knows best, also when a kill overtook its own exit (a failed start
        // ends every worker at once); a kill for the master's reason says both.
        reason = match ended {
            Ended::Code(_) => why.to_owned(),
            Ended::Signal(_) if reported => why.to_owned(),
            Ended::Signal(_) => format!("{reason}: {why}"),
        };
    }
    let category = match (crash, life.kill_sent(), life.stop_sent()) {
        (true, _, _) => ExitCategory::Crash,
        (false, true, _) => ExitCategory::Killed,
        (false, false, true) => ExitCategory::Stopped,
        (false, false, false) => ExitCategory::Normal,
    };
    ExitClass { category, reason }
}

/// A slot after its worker ended: consecutive crashes so far, and how long to wait before the next worker
/// (`None`: at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAfterExit {
    pub crashes: u32,
    pub delay: Option<Duration>,
}

/// The backoff schedule. The first crash of a slot that was running fine (no crash since its last normal exit or
/// stable run) is replaced at once: a `kill -9` or an OOM kill of a healthy worker costs no pause. From the second
/// consecutive crash the wait doubles from `initial` up to `max`, so a crash loop sleeps between attempts. An end
/// that is not a crash (the worker's limits, a stop) breaks the run of crashes, and a worker that ran `reset` or
/// longer before crashing starts the count afresh (its crash counts as the first).
pub fn after_exit(crashes: u32, lived: Duration, crash: bool, backoff: &Backoff) -> SlotAfterExit {
    if !crash {
        return SlotAfterExit { crashes: 0, delay: None };
    }
    let crashes = if lived >= backoff.reset { 1 } else { crashes + 1 };
    SlotAfterExit { crashes, delay: (crashes > 1).then(|| backoff.delay(crashes - 1)) }
}

/// What the master knows of a slot when it decides whether to fill it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    /// A worker the master still wants runs in it.
    pub occupied: bool,
    /// No worker before this (crash backoff).
    pub respawn_at: Option<Mono>,
    /// Workers started in it so far.
    pub spawned: u32,
}

/// The slots (of `0..slots.len()`, the wanted count) that get a worker now. In batch mode a slot gets one worker
/// in all, never a replacement.
pub fn slots_to_fill(slots: &[SlotView], now: Mono, batch: bool) -> Vec<u32> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| !(s.occupied || s.respawn_at.is_some_and(|at| at > now) || (batch && s.spawned > 0)))
        .map(|(slot, _)| slot as u32)
        .collect()
}

/// Which slots of each task hold a worker the master still wants, and which such workers are above their
/// task's wanted count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupancy<T> {
    /// Per task, per wanted slot.
    pub occupied: Vec<Vec<bool>>,
    /// Workers of a slot past the wanted count (scaled down, or of a removed task, whose count is 0).
    pub surplus: Vec<T>,
}

/// The occupancy of `wanted[task]` slots per task by `workers` (task, slot, id), those not asked to stop. One
/// pass over the workers, whatever the number of tasks.
pub fn occupancy<T>(wanted: &[u32], workers: impl Iterator<Item = (usize, u32, T)>) -> Occupancy<T> {
    let mut occupied: Vec<Vec<bool>> = wanted.iter().map(|w| vec![false; *w as usize]).collect();
    let mut surplus = Vec::new();
    for (task, slot, id) in workers {
        match occupied.get_mut(task).and_then(|slots| slots.get_mut(slot as usize)) {
            Some(occupied) => *occupied = true,
            None => surplus.push(id),
        }
    }
    Occupancy { occupied, surplus }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::life::KillReason;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(n: u64) -> Mono {
        Mono(ms(n))
    }

    #[test]
    fn exits_are_classified_by_how_and_in_what_state_they_ended() {
        let starting = Life::starting(at(1));
        let stopping = Life::Stopping { kill_at: at(9), init_deadline: None };
        let faulted = Life::Killed { reason: KillReason::Fault, stop_asked: false };
        let discarded = Life::Killed { reason: KillReason::Discarded, stop_asked: true };
        use ExitCategory::{Crash, Killed, Normal, Stopped};
        let (code, by) = (Ended::Code, Ended::Signal);
        let (ready, kill) = (&Life::Ready, Signal::SIGKILL);
        type Case<'a> = (&'a str, Ended, &'a Life, Option<&'a str>, ExitCategory, &'a str);
        let reported = ["a failed init reports why", "a failed init reported, its kill overtook its exit"];
        let cases: &[Case<'_>] = &[
            ("a retiring worker", code(0), ready, None, Normal, "normal exit"),
            ("a worker asked to stop", code(0), &stopping, None, Stopped, "normal exit"),
            ("a panic", code(6), ready, None, Crash, "plugin panicked"),
            ("an exit code of the plugin's", code(9), ready, None, Crash, "exit code from plugin code"),
            ("a failed init reports why", code(5), &starting, Some("db down"), Crash, "db down"),
            ("a segfault", by(Signal::SIGSEGV), ready, None, Crash, "killed by SIGSEGV"),
            ("a kill -9 from outside", by(kill), ready, None, Crash, "killed by SIGKILL"),
            ("TERM while stopping", by(Signal::SIGTERM), &stopping, None, Stopped, "killed by SIGTERM"),
            ("a straggler killed", by(kill), &discarded, None, Killed, "killed by SIGKILL"),
            ("a slow init killed", by(kill), &faulted, Some("slow"), Crash, "killed by SIGKILL: slow"),
            ("a hung call stopped, then killed", by(kill), &discarded, Some("hung"), Crash, "killed by SIGKILL: hung"),
            ("a failure reported, then exit 0", code(0), ready, Some("oops"), Normal, "oops"),
            ("a failed init reported, its kill overtook its exit", by(kill), &discarded, Some("db"), Crash, "db"),
        ];
        for (name, ended, life, fault, category, reason) in cases {
            let class = classify_exit(*ended, life, *fault, reported.contains(name));
            assert_eq!((class.category, class.reason.as_str()), (*category, *reason), "{name}");
            assert_eq!(class.crash(), *category == ExitCategory::Crash, "{name}");
        }
    }

    #[test]
    fn a_first_crash_respawns_at_once_then_the_backoff_doubles_and_a_stable_run_resets_it() {
        let backoff = Backoff { initial: ms(100), max: ms(1000), reset: ms(10_000) };
        // (crashes before, lived, crash) → (crashes after, delay)
        let cases: &[(u32, u64, bool, u32, Option<u64>)] = &[
            (0, 5, true, 1, None),
            (1, 5, true, 2, Some(100)),
            (2, 5, true, 3, Some(200)),
            (3, 5, true, 4, Some(400)),
            (5, 5, true, 6, Some(1000)),
            (30, 5, true, 31, Some(1000)),
            (7, 10_000, true, 1, None),
            (7, 10_000, false, 0, None),
            (1, 5, false, 0, None),
            (3, 5, false, 0, None),
            (3, 10_000, false, 0, None),
            (0, 0, false, 0, None),
        ];
        for (before, lived, crash, crashes, delay) in cases {
            let after = after_exit(*before, ms(*lived), *crash, &backoff);
            assert_eq!(after, SlotAfterExit { crashes: *crashes, delay: delay.map(ms) }, "{before} {lived} {crash}");
        }
    }

    #[test]
    fn empty_slots_are_filled_unless_backing_off_or_done_in_batch_mode() {
        let free = SlotView { occupied: false, respawn_at: None, spawned: 1 };
        let busy = SlotView { occupied: true, ..free };
        let waiting = SlotView { respawn_at: Some(at(200)), ..free };
        let waited = SlotView { respawn_at: Some(at(50)), ..free };
        let fresh = SlotView { spawned: 0, ..free };
        let cases: &[(&str, &[SlotView], bool, &[u32])] = &[
            ("every free slot", &[free, busy, free], false, &[0, 2]),
            ("backoff not over", &[waiting, waited], false, &[1]),
            ("batch: only never-started slots", &[free, fresh, busy], true, &[1]),
            ("nothing wanted", &[], false, &[]),
        ];
        for (name, slots, batch, expected) in cases {
            assert_eq!(slots_to_fill(slots, at(100), *batch), *expected, "{name}");
        }
    }

    #[test]
    fn occupancy_marks_slots_and_finds_workers_past_the_wanted_count() {
        // (wanted per task, workers (task, slot, id)) → (occupied, surplus)
        type Case<'a> = (&'a str, &'a [u32], &'a [(usize, u32, i32)], &'a [&'a [bool]], &'a [i32]);
        let cases: &[Case<'_>] = &[
            ("full", &[2], &[(0, 0, 10), (0, 1, 11)], &[&[true, true]], &[]),
            ("one slot empty", &[3], &[(0, 0, 10), (0, 2, 12)], &[&[true, false, true]], &[]),
            ("scaled down", &[1], &[(0, 0, 10), (0, 1, 11), (0, 3, 13)], &[&[true]], &[11, 13]),
            (
                "a removed task wants none",
                &[2, 0],
                &[(0, 0, 10), (1, 0, 20), (1, 1, 21)],
                &[&[true, false], &[]],
                &[20, 21],
            ),
            ("several tasks", &[1, 2], &[(1, 1, 21), (0, 0, 10)], &[&[true], &[false, true]], &[]),
        ];
        for (name, wanted, workers, occupied, surplus) in cases {
            let found = occupancy(wanted, workers.iter().copied());
            let expected: Vec<Vec<bool>> = occupied.iter().map(|slots| slots.to_vec()).collect();
            assert_eq!(found, Occupancy { occupied: expected, surplus: surplus.to_vec() }, "{name}");
        }
    }
}
