//! The per-worker and per-slot deadlines of the master in one min-heap, so that finding the next wake-up and
//! handling the ones that are due cost O(log n) per event instead of a pass over every worker per wake-up.
//!
//! Deletion is lazy: a deadline is pushed when it is set (a worker's `init` deadline at its spawn, its kill
//! deadline when it is asked to stop, a slot's respawn after a crash, a zygote's answer), and never removed when
//! it stops applying (the worker became ready, exited, the slot was filled). Whoever pops an entry checks it
//! against the current state ([`Master::deadline_current`]) and drops it if it is stale. So that stale entries
//! cannot pile up (a churn of thousands of workers a second leaves one stale `init` deadline per worker), the
//! heap is compacted, keeping only current entries, whenever it holds more than [`SLACK`] times as many entries as
//! there are live workers, pending spawns and slots: amortised O(1) per push, and memory bounded by the
//! host's size, not by its history.
//!
//! Deadlines of the host as a whole (check tick, supervision, watchdog, status pace, orphan scan) are single
//! fields of the master and are looked at directly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use nix::unistd::Pid;

use super::core::{HostPhase, Master};
use crate::scoreboard::CellIndex;
use crate::sysinfo::Mono;

/// Compact when the heap is this many times larger than what can be current.
const SLACK: usize = 4;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// A worker still in `init` is killed.
    Init(Pid),
    /// A worker asked to stop is killed.
    Kill(Pid),
    /// A slot's crash backoff is over: it may get a worker again.
    Respawn(usize, u32),
    /// A zygote did not answer a spawn request in time.
    Answer(CellIndex),
}

/// The heap of deadlines.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(Mono, Due)>>,
}

impl Deadlines {
    pub(super) fn push(&mut self, at: Mono, due: Due) {
        self.heap.push(Reverse((at, due)));
    }

    fn peek(&self) -> Option<(Mono, Due)> {
        self.heap.peek().map(|Reverse(entry)| *entry)
    }

    fn pop(&mut self) -> Option<(Mono, Due)> {
        self.heap.pop().map(|Reverse(entry)| entry)
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

impl Master {
    /// Sets a deadline (and compacts the heap when stale entries dominate it).
    pub(super) fn set_deadline(&mut self, at: Mono, due: Due) {
        self.deadlines.push(at, due);
        let live =
            self.workers.len() * 2 + self.spawning.len() + self.tasks.iter().map(|t| t.slots.len()).sum::<usize>();
        if self.deadlines.len() > SLACK * (live + 16) {
            let entries = std::mem::take(&mut self.deadlines.heap);
            self.deadlines.heap =
                entries.into_iter().filter(|Reverse((at, due))| self.deadline_current(*at, *due)).collect();
        }
    }

    /// Whether a deadline still applies (lazy deletion: see the module docs).
    pub(super) fn deadline_current(&self, at: Mono, due: Due) -> bool {
        match due {
            Due::Init(pid) => {
                self.workers.get(&pid).is_some_and(|w| w.fault.is_none() && w.life.init_deadline() == Some(at))
            }
            Due::Kill(pid) => self.workers.get(&pid).is_some_and(|w| w.life.kill_at() == Some(at)),
            Due::Respawn(task, slot) => {
                matches!(self.phase, HostPhase::Running)
                    && self
                        .tasks
                        .get(task)
                        .and_then(|t| t.slots.get(slot as usize))
                        .is_some_and(|s| s.respawn_at == Some(at))
            }
            Due::Answer(cell) => self.spawning.get(&cell).is_some_and(|p| !p.abandoned && p.answer_by == at),
        }
    }

    /// The earliest current per-worker or per-slot deadline (stale ones on top are dropped).
    pub(super) fn next_worker_deadline(&mut self) -> Option<Mono> {
        while let Some((at, due)) = self.deadlines.peek() {
            if self.deadline_current(at, due) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Takes the current deadlines that are due at `now`.
    pub(super) fn take_due(&mut self, now: Mono) -> Vec<(Mono, Due)> {
        let mut due = Vec::new();
        while let Some((at, what)) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self.deadline_current(at, what) {
                due.push((at, what));
            }
        }
        due
    }
}
