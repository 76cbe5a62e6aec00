//! Watching running workers between events: hung `work` calls (`work_timeout`) and memory (`max_rss`).
//!
//! Both read what is already there: the scoreboard's sequence number (odd while a call runs), whether a worker
//! between calls is stopped (the kernel tells the master, its parent: see `reap_workers`), and `/proc` (memory).
//! The master only wakes for this when a task sets one of these limits, at an interval derived from them, so a
//! host without them stays asleep between events.

use std::time::Duration;

use nix::unistd::Pid;
use tracing::{info, warn};

use super::core::Master;
use crate::sysinfo::{self, Mono};

/// How often memory is checked when a task sets `max_rss` (or the check tick, if that is shorter).
const MEMORY_CHECK: Duration = Duration::from_secs(1);
/// The finest hang-check interval.
const FINEST: Duration = Duration::from_millis(10);

impl Master {
    /// The interval of supervision wake-ups, if any task needs them.
    pub(super) fn supervision_interval(&self) -> Option<Duration> {
        self.tasks
            .iter()
            .filter(|t| !t.retired)
            .flat_map(|t| {
                let hang = t.settings.work_timeout.map(|timeout| (timeout / 4).max(FINEST));
                let memory =
                    t.settings.max_rss.map(|_| self.host.check_interval.map_or(MEMORY_CHECK, |c| c.min(MEMORY_CHECK)));
                [hang, memory]
            })
            .flatten()
            .min()
    }

    /// Re-arms the supervision wake-up after a settings change.
    pub(super) fn schedule_supervision(&mut self, now: Mono) {
        self.next_supervision = self.supervision_interval().map(|interval| now + interval);
    }

    /// One supervision pass: kill hung workers, retire workers over their memory limit.
    pub(super) fn supervise(&mut self, now: Mono) {
        let mut hung: Vec<(Pid, Duration, u64, Hang)> = Vec::new();
        let mut heavy: Vec<(Pid, u64, u64)> = Vec::new();
        for worker in self.workers.values_mut().filter(|w| w.life.serving()) {
            let settings = &self.tasks[worker.task].settings;
            if let Some(timeout) = settings.work_timeout {
                let seq = self.board.cell(worker.cell).seq();
                if seq != worker.seq_seen.0 {
                    worker.seq_seen = (seq, now);
                } else if seq % 2 == 1 && now.since(worker.seq_seen.1) >= timeout {
                    hung.push((worker.pid, now.since(worker.seq_seen.1), seq / 2, Hang::Call));
                } else if seq.is_multiple_of(2)
                    && let Some(since) = worker.stopped_since.filter(|since| now.since(*since) >= timeout)
                {
                    // Between calls a worker is never hung, unless it is stopped (SIGSTOP, as the kernel told the
                    // master: see `reap_workers`): then it would never make its next call.
                    hung.push((worker.pid, now.since(since), seq / 2, Hang::Stopped));
                }
            }
            if let Some(limit) = settings.max_rss
                && let Some(rss) = sysinfo::rss_bytes(worker.pid.as_raw())
            {
                worker.rss = Some(rss);
                if rss > limit {
                    heavy.push((worker.pid, rss, limit));
                }
            }
        }
        for (pid, running, calls, what) in hung {
            let worker = &self.workers[&pid];
            let timeout = self.tasks[worker.task].settings.work_timeout.unwrap_or_default();
            warn!(
                task = %self.tasks[worker.task].settings.name,
                slot = worker.slot,
                pid = pid.as_raw(),
                running_ms = running.as_millis() as u64,
                calls_done = calls,
                "{} work_timeout ({} ms): killing the worker and starting a replacement",
                what.headline(),
                timeout.as_millis()
            );
            self.end_hung_worker(
                pid,
                format!("{} longer than work_timeout ({} ms)", what.reason(), timeout.as_millis()),
            );
        }
        for (pid, rss, limit) in heavy {
            let worker = &self.workers[&pid];
            info!(
                task = %self.tasks[worker.task].settings.name,
                slot = worker.slot,
                pid = pid.as_raw(),
                rss_bytes = rss,
                max_rss = limit,
                "worker is over max_rss: retiring it after its current call"
            );
            self.stop_worker(pid);
        }
        self.schedule_supervision(now);
    }

    /// A hung worker: TERM now (its call cannot notice, but its group's helpers can), KILL after the stop
    /// timeout; its slot is refilled at once.
    fn end_hung_worker(&mut self, pid: Pid, reason: String) {
        self.stop_worker(pid);
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.fault = Some(reason);
            worker.fault_reported = false;
        }
    }
}

/// Why a worker counts as hung.
#[derive(Debug, Clone, Copy)]
enum Hang {
    /// A `work` call does not return.
    Call,
    /// Stopped between calls (SIGSTOP), it will not make its next call.
    Stopped,
}

impl Hang {
    fn headline(self) -> &'static str {
        match self {
            Hang::Call => "work call exceeded",
            Hang::Stopped => "worker stopped (SIGSTOP) for longer than",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Hang::Call => "work call ran",
            Hang::Stopped => "worker was stopped (SIGSTOP)",
        }
    }
}
