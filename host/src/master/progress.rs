//! A rollout's progress as a pure state machine: which slot moves next within the surge, what a new worker's
//! readiness or failure changes, which slots scaling added mid-rollout, and what a rollback undoes. The master
//! (`rollout.rs`) asks it and performs the answer: it forks, stops and kills.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use nix::unistd::Pid;

use super::state::Build;
use crate::scoreboard::CellIndex;

/// A rollout in progress.
#[derive(Debug)]
pub struct Rollout {
    pub generation: u32,
    surge: usize,
    pub init_timeout: Option<Duration>,
    /// Per task: the build being rolled out (`None`: the task is not part of this rollout).
    new_builds: Vec<Option<Build>>,
    /// Slots still to move.
    queue: VecDeque<(usize, u32)>,
    /// New workers not ready yet, and their slot.
    in_flight: BTreeMap<Pid, (usize, u32)>,
    /// New workers asked of a zygote whose pid is not known yet (by scoreboard cell), and their slot.
    requested: BTreeMap<CellIndex, (usize, u32)>,
    /// Slots already moved.
    switched: Vec<(usize, u32)>,
}

/// What the master should do next for a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start a new worker for this (task, slot).
    Spawn(usize, u32),
    /// Wait: the surge is used up, or new workers are still starting.
    Wait,
    /// Every queued slot has moved (the master then looks for slots scaling added, or finishes).
    Drained,
}

/// What a rollback must undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    pub generation: u32,
    /// New workers still starting: killed.
    pub starting: Vec<Pid>,
    /// New workers asked of a zygote and not reported yet: killed when they report.
    pub requested: Vec<CellIndex>,
    /// Slots that had moved: back to the old build (their new workers stop, fresh old-build workers follow).
    pub moved: Vec<(usize, u32)>,
}

impl Rollout {
    /// A rollout of `generation`: `new_builds[task]` for the tasks it rolls, their slots `0..workers[task]`.
    pub fn new(
        generation: u32,
        surge: u32,
        init_timeout: Option<Duration>,
        new_builds: Vec<Option<Build>>,
        workers: &[u32],
    ) -> Rollout {
        let queue = new_builds
            .iter()
            .enumerate()
            .filter(|(_, build)| build.is_some())
            .flat_map(|(task, _)| (0..workers.get(task).copied().unwrap_or(0)).map(move |slot| (task, slot)))
            .collect();
        Rollout {
            generation,
            surge: surge.max(1) as usize,
            init_timeout,
            new_builds,
            queue,
            in_flight: BTreeMap::new(),
            requested: BTreeMap::new(),
            switched: Vec::new(),
        }
    }

    /// Slots to move in all (so far).
    pub fn total(&self) -> usize {
        self.queue.len() + self.in_flight.len() + self.requested.len() + self.switched.len()
    }

    /// Slots moved.
    pub fn done(&self) -> usize {
        self.switched.len()
    }

    /// The build `task` rolls to, if it is part of the rollout.
    pub fn build(&self, task: usize) -> Option<&Build> {
        self.new_builds.get(task).and_then(Option::as_ref)
    }

    /// The new builds, per task (taken when the rollout finishes).
    pub fn into_builds(self) -> Vec<Option<Build>> {
        self.new_builds
    }

    /// The next step; `workers(task)` is the task's wanted count now (a slot scaled away is skipped).
    pub fn next(&mut self, workers: impl Fn(usize) -> u32) -> Step {
        if self.in_flight.len() + self.requested.len() >= self.surge {
            return Step::Wait;
        }
        while let Some((task, slot)) = self.queue.pop_front() {
            if slot < workers(task) {
                return Step::Spawn(task, slot);
            }
        }
        if self.in_flight.is_empty() && self.requested.is_empty() { Step::Drained } else { Step::Wait }
    }

    /// A new worker was asked of a zygote for a slot [`Rollout::next`] gave; its pid comes with its report.
    pub fn requested(&mut self, cell: CellIndex, task: usize, slot: u32) {
        self.requested.insert(cell, (task, slot));
    }

    /// The worker asked for with `cell` reported as `pid`; whether it is one of this rollout's.
    pub fn answered(&mut self, cell: CellIndex, pid: Pid) -> bool {
        let Some(slot) = self.requested.remove(&cell) else { return false };
        self.in_flight.insert(pid, slot);
        true
    }

    /// The zygote asked for `cell` never answered: the slot is queued again (first), to be spawned another way.
    pub fn unanswered(&mut self, cell: CellIndex) {
        if let Some(slot) = self.requested.remove(&cell) {
            self.queue.push_front(slot);
        }
    }

    /// A new worker was started for a slot [`Rollout::next`] gave.
    pub fn started(&mut self, pid: Pid, task: usize, slot: u32) {
        self.in_flight.insert(pid, (task, slot));
    }

    /// A new worker is ready: its slot has moved. `None` if it is not one of this rollout's starting workers.
    pub fn ready(&mut self, pid: Pid) -> Option<(usize, u32)> {
        let moved = self.in_flight.remove(&pid)?;
        self.switched.push(moved);
        Some(moved)
    }

    /// A new worker ended before it was ready: the slot it was for (the rollout then fails).
    pub fn failed(&mut self, pid: Pid) -> Option<u32> {
        self.in_flight.remove(&pid).map(|(_, slot)| slot)
    }

    /// Queues slots of rolled tasks that still run an older build (added by scaling during the rollout) and have
    /// not moved; returns how many were queued.
    pub fn add_stragglers(&mut self, slots: impl IntoIterator<Item = (usize, u32)>) -> usize {
        let before = self.queue.len();
        for slot in slots {
            let rolled = self.build(slot.0).is_some();
            if rolled
                && !self.switched.contains(&slot)
                && !self.queue.contains(&slot)
                && !self.in_flight.values().any(|s| *s == slot)
                && !self.requested.values().any(|s| *s == slot)
            {
                self.queue.push_back(slot);
            }
        }
        self.queue.len() - before
    }

    /// Ends the rollout as failed: what must be undone.
    pub fn roll_back(self) -> Rollback {
        Rollback {
            generation: self.generation,
            starting: self.in_flight.into_keys().collect(),
            requested: self.requested.into_keys().collect(),
            moved: self.switched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    /// A rollout of `workers[task]` slots for the tasks with `Some` in `rolled`; builds are not looked at here.
    fn rollout(rolled: &[bool], workers: &[u32], surge: u32) -> Rollout {
        let builds = rolled.iter().map(|r| r.then(test_build)).collect();
        Rollout::new(2, surge, None, builds, workers)
    }

    fn test_build() -> Build {
        Build::for_tests(2)
    }

    #[test]
    fn slots_move_one_surge_at_a_time_in_order() {
        let mut r = rollout(&[true], &[3], 1);
        assert_eq!(r.total(), 3);
        assert_eq!(r.next(|_| 3), Step::Spawn(0, 0));
        r.started(pid(10), 0, 0);
        assert_eq!(r.next(|_| 3), Step::Wait, "surge 1: one new worker at a time");
        assert_eq!(r.ready(pid(10)), Some((0, 0)));
        assert_eq!(r.next(|_| 3), Step::Spawn(0, 1));
        r.started(pid(11), 0, 1);
        assert_eq!(r.ready(pid(11)), Some((0, 1)));
        assert_eq!(r.next(|_| 3), Step::Spawn(0, 2));
        r.started(pid(12), 0, 2);
        assert_eq!(r.next(|_| 3), Step::Wait, "the last new worker is still starting");
        r.ready(pid(12));
        assert_eq!(r.next(|_| 3), Step::Drained);
        assert_eq!(r.done(), 3);
    }

    #[test]
    fn a_larger_surge_starts_several_at_once() {
        let mut r = rollout(&[true], &[4], 3);
        let mut started = Vec::new();
        while let Step::Spawn(task, slot) = r.next(|_| 4) {
            r.started(pid(20 + slot as i32), task, slot);
            started.push(slot);
        }
        assert_eq!(started, [0, 1, 2]);
        assert_eq!(r.next(|_| 4), Step::Wait);
    }

    #[test]
    fn only_rolled_tasks_move_and_scaled_away_slots_are_skipped() {
        let mut r = rollout(&[false, true], &[2, 3], 5);
        assert_eq!(r.total(), 3, "only task 1's slots");
        assert_eq!(r.next(|_| 1), Step::Spawn(1, 0), "scaled down to 1: slots 1 and 2 are skipped");
        r.started(pid(30), 1, 0);
        assert_eq!(r.next(|_| 1), Step::Wait);
    }

    #[test]
    fn a_failure_rolls_back_what_moved_and_what_is_starting() {
        // Slot 0 moved; slot 1's new worker fails while slot 2's is starting (surge 2).
        let mut r = rollout(&[true], &[3], 2);
        assert_eq!(r.next(|_| 3), Step::Spawn(0, 0));
        r.started(pid(40), 0, 0);
        assert_eq!(r.next(|_| 3), Step::Spawn(0, 1));
        r.started(pid(41), 0, 1);
        r.ready(pid(40));
        assert_eq!(r.next(|_| 3), Step::Spawn(0, 2));
        r.started(pid(42), 0, 2);
        assert_eq!(r.failed(pid(41)), Some(1));
        assert_eq!(r.failed(pid(99)), None, "not a new worker of this rollout");
        let back = r.roll_back();
        assert_eq!(back, Rollback { generation: 2, starting: vec![pid(42)], requested: vec![], moved: vec![(0, 0)] });
    }

    #[test]
    fn workers_asked_of_a_zygote_count_against_the_surge_until_they_report() {
        let mut r = rollout(&[true], &[3], 1);
        assert_eq!(r.next(|_| 3), Step::Spawn(0, 0));
        r.requested(CellIndex(7), 0, 0);
        assert_eq!(r.next(|_| 3), Step::Wait, "a request in flight uses the surge");
        assert!(!r.answered(CellIndex(8), pid(70)), "not one of this rollout's requests");
        assert!(r.answered(CellIndex(7), pid(70)));
        assert_eq!(r.next(|_| 3), Step::Wait, "now starting under its pid");
        assert_eq!(r.ready(pid(70)), Some((0, 0)));
        assert_eq!(r.next(|_| 3), Step::Spawn(0, 1));
        r.requested(CellIndex(9), 0, 1);
        r.unanswered(CellIndex(9));
        assert_eq!(r.next(|_| 3), Step::Spawn(0, 1), "an unanswered slot is queued again, first");
        r.requested(CellIndex(10), 0, 1);
        let back = r.roll_back();
        assert_eq!(back.requested, vec![CellIndex(10)]);
        assert_eq!(back.moved, vec![(0, 0)]);
    }

    #[test]
    fn a_failure_on_the_first_slot_leaves_nothing_moved() {
        let mut r = rollout(&[true], &[2], 1);
        assert_eq!(r.next(|_| 2), Step::Spawn(0, 0));
        r.started(pid(50), 0, 0);
        assert_eq!(r.failed(pid(50)), Some(0));
        assert_eq!(r.roll_back(), Rollback { generation: 2, starting: vec![], requested: vec![], moved: vec![] });
    }

    #[test]
    fn slots_added_mid_rollout_are_rolled_too_once() {
        let mut r = rollout(&[true, false], &[1, 1], 1);
        assert_eq!(r.next(|_| 2), Step::Spawn(0, 0));
        r.started(pid(60), 0, 0);
        r.ready(pid(60));
        assert_eq!(r.next(|_| 2), Step::Drained);
        // Scaling added slot 1 of task 0 (old build), and task 1's slot is not rolled.
        assert_eq!(r.add_stragglers([(0, 0), (0, 1), (1, 0)]), 1, "moved slots and other tasks are not queued");
        assert_eq!(r.add_stragglers([(0, 1)]), 0, "already queued");
        assert_eq!(r.total(), 2);
        assert_eq!(r.next(|_| 2), Step::Spawn(0, 1));
    }

    #[test]
    fn unknown_workers_change_nothing() {
        let mut r = rollout(&[true], &[1], 1);
        assert_eq!(r.ready(pid(1)), None);
        assert_eq!(r.failed(pid(1)), None);
        assert_eq!(r.next(|_| 1), Step::Spawn(0, 0));
    }
}
