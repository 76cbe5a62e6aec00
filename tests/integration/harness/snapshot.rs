//! Reading the master's status snapshot in tests: parsing it typed, and the lookups tests share.

use pmhost::status::{Snapshot, TaskStatus, WorkerState, WorkerStatus};

/// Parses a status snapshot (the status file, `pmhost status --json`): `None` when the text is not complete
/// JSON, a panic when it is JSON of another shape.
pub fn parse_snapshot(bytes: &[u8]) -> Option<Snapshot> {
    match serde_json::from_slice(bytes) {
        Ok(snapshot) => Some(snapshot),
        Err(e) if e.is_data() => panic!("the status is not a Snapshot: {e}\n{}", String::from_utf8_lossy(bytes)),
        Err(_) => None,
    }
}

/// A worker in its work loop: idle or busy.
pub fn is_ready(w: &WorkerStatus) -> bool {
    matches!(w.state, WorkerState::Idle | WorkerState::Busy)
}

/// Lookups in a status snapshot the tests share.
pub trait SnapshotExt {
    /// The first task's workers (none when there is no task).
    fn workers(&self) -> &[WorkerStatus];
    /// The first task's worker in `slot` (the first listed, when a stopping one shares the slot).
    fn worker(&self, slot: u32) -> Option<&WorkerStatus>;
    /// The task named `name`.
    fn task(&self, name: &str) -> Option<&TaskStatus>;
    /// The workers of the task named `name` (none when there is no such task).
    fn task_workers(&self, name: &str) -> &[WorkerStatus];
    /// How many workers of the task named `name` are ready.
    fn ready(&self, name: &str) -> usize;
}

impl SnapshotExt for Snapshot {
    fn workers(&self) -> &[WorkerStatus] {
        self.tasks.first().map_or(&[], |t| &t.workers)
    }

    fn worker(&self, slot: u32) -> Option<&WorkerStatus> {
        self.workers().iter().find(|w| w.slot == slot)
    }

    fn task(&self, name: &str) -> Option<&TaskStatus> {
        self.tasks.iter().find(|t| t.name == name)
    }

    fn task_workers(&self, name: &str) -> &[WorkerStatus] {
        self.task(name).map_or(&[], |t| &t.workers)
    }

    fn ready(&self, name: &str) -> usize {
        self.task_workers(name).iter().filter(|w| is_ready(w)).count()
    }
}
