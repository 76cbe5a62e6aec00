//! Deciding a fresh start and a batch run: the first wave of workers either all become ready (the start
//! succeeded) or one of them fails, and the start fails with that worker's own reason, so a start reports what
//! a user must fix instead of leaving a partly working host behind. A batch run fails when any worker crashed.

use std::collections::BTreeSet;

use nix::errno::Errno;
use nix::unistd::Pid;
use thiserror::Error;

use crate::status::ExitStatus;

/// Why a fresh start failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StartFailure {
    /// No scoreboard cell was free for a worker.
    #[error("cannot start a worker for slot {slot}: {reason}")]
    NoCell { slot: u32, reason: String },
    /// `fork` failed.
    #[error("cannot fork a worker for slot {slot}: {errno}")]
    Fork { slot: u32, errno: Errno },
    /// The worker said why: its plugin failed to load, or `init` failed or panicked.
    #[error("{0}")]
    Reported(String),
    /// The worker ended before it was ready, without saying why.
    #[error("worker {pid} ended during start: {reason}")]
    Ended { pid: Pid, reason: String },
    /// A stop came before the start was decided.
    #[error("stopped before every worker was ready")]
    Stopped,
    /// `--watch` was asked for, but the plugin file cannot be watched.
    #[error("{0} (--watch)")]
    Unwatched(String),
}

/// Tracks the first wave of workers: the start succeeds once every one of them is ready, and fails as soon as
/// one of them cannot be started (fork failed), fails to load or `init`, or ends before it is ready.
#[derive(Debug, Default)]
pub struct Startup {
    pub pending: BTreeSet<Pid>,
    /// First-wave workers asked of a zygote whose pid is not known yet (by scoreboard cell).
    pub requested: BTreeSet<crate::scoreboard::CellIndex>,
    pub ready: usize,
    pub first_failure: Option<StartFailure>,
}

impl Startup {
    /// A first-wave worker failed (its reason is kept if it is the first).
    pub fn fail(&mut self, failure: StartFailure) {
        self.first_failure.get_or_insert(failure);
    }

    /// The start's outcome once it is decided: `Ok` with the number of ready workers when every worker is
    /// ready, `Err` with the first failure.
    pub fn verdict(&self) -> Option<Result<usize, &StartFailure>> {
        match (&self.first_failure, self.pending.is_empty() && self.requested.is_empty()) {
            (Some(failure), _) => Some(Err(failure)),
            (None, true) => Some(Ok(self.ready)),
            (None, false) => None,
        }
    }
}

/// The verdict of a batch run, from how the last worker of each slot that ran ended (task, slot, exit): a
/// success only if none crashed; otherwise one sentence with how many failed and why (the first few).
pub fn batch_outcome(ends: &[(&str, u32, Option<&ExitStatus>)]) -> Result<(), String> {
    const SHOWN: usize = 3;
    let failed: Vec<String> = ends
        .iter()
        .filter_map(|(task, slot, exit)| {
            let exit = exit.filter(|e| e.crash)?;
            let code = exit.code.map(|code| format!(" (exit code {code})")).unwrap_or_default();
            Some(format!("{task} slot {slot} (pid {}): {}{code}", exit.pid, exit.reason))
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let more = match failed.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!("; and {n} more (see the log)"),
    };
    Err(format!(
        "batch mode: {} of {} workers failed: {}{more}",
        failed.len(),
        ends.len(),
        failed[..failed.len().min(SHOWN)].join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: i32, reason: &str, crash: bool) -> ExitStatus {
        ExitStatus { pid, code: None, signal: None, reason: reason.to_owned(), crash, at: 0 }
    }

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    #[test]
    fn a_start_is_decided_when_every_worker_is_ready_or_at_the_first_failure() {
        let fork = StartFailure::Fork { slot: 2, errno: Errno::EAGAIN };
        let init = StartFailure::Reported("plugin init failed: db down".to_owned());
        // (pending, ready, failures in order) → verdict
        type Case = (&'static str, Vec<i32>, usize, Vec<StartFailure>, Option<Result<usize, StartFailure>>);
        let cases: Vec<Case> = vec![
            ("still starting", vec![10, 11], 0, vec![], None),
            ("one still starting", vec![11], 1, vec![], None),
            ("every worker ready", vec![], 2, vec![], Some(Ok(2))),
            ("a fork failed while others start", vec![11], 1, vec![fork.clone()], Some(Err(fork.clone()))),
            ("the first failure is the reason", vec![], 0, vec![init.clone(), fork.clone()], Some(Err(init.clone()))),
            (
                "a failure wins over ready workers",
                vec![],
                3,
                vec![StartFailure::Stopped],
                Some(Err(StartFailure::Stopped)),
            ),
        ];
        for (name, pending, ready, failures, expected) in cases {
            let mut startup = Startup {
                pending: pending.into_iter().map(pid).collect(),
                ready,
                first_failure: None,
                ..Default::default()
            };
            for failure in failures {
                startup.fail(failure);
            }
            assert_eq!(startup.verdict().map(|v| v.map_err(Clone::clone)), expected, "{name}");
        }
        assert!(fork.to_string().starts_with("cannot fork a worker for slot 2: EAGAIN"), "{fork}");
        let ended = StartFailure::Ended { pid: pid(7), reason: "killed by SIGKILL".to_owned() };
        assert_eq!(ended.to_string(), "worker 7 ended during start: killed by SIGKILL");
    }

    #[test]
    fn a_batch_fails_when_any_worker_crashed_and_says_which_and_why() {
        let ok = exit(10, "normal exit", false);
        let panicked = exit(11, "plugin panicked", true);
        let segv = exit(12, "killed by SIGSEGV", true);
        let code = ExitStatus { code: Some(9), ..exit(13, "exit code from plugin code", true) };
        assert_eq!(batch_outcome(&[]), Ok(()));
        assert_eq!(batch_outcome(&[("t", 0, Some(&ok)), ("t", 1, Some(&ok))]), Ok(()));
        assert_eq!(
            batch_outcome(&[("t", 0, Some(&ok)), ("t", 1, Some(&panicked))]),
            Err("batch mode: 1 of 2 workers failed: t slot 1 (pid 11): plugin panicked".to_owned())
        );
        let all = [("a", 0, Some(&panicked)), ("a", 1, Some(&segv)), ("b", 0, Some(&code)), ("b", 1, Some(&segv))];
        let reason = batch_outcome(&all).unwrap_err();
        assert!(
            reason.starts_with("batch mode: 4 of 4 workers failed: a slot 0 (pid 11): plugin panicked; "),
            "{reason}"
        );
        assert!(reason.contains("b slot 0 (pid 13): exit code from plugin code (exit code 9); and 1 more"), "{reason}");
    }
}
