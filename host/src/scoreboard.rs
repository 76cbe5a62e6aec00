//! The scoreboard: a shared anonymous mapping, created before the first fork, with one cache line per worker.
//!
//! Workers publish their progress with relaxed atomic stores (no syscall per `work` call); the master reads
//! them for status and hang detection. A worker's `seq` counts half-steps: it is odd while a `work` call runs and
//! even between calls, so `seq / 2` is the number of finished calls and an odd `seq` that does not move is a call
//! that is taking long.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};

/// What a worker is doing, as it last published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Phase {
    /// Forked, setting up or loading the plugin.
    Loading = 0,
    /// Running the plugin's `init`.
    Initializing = 1,
    /// In the work loop.
    Running = 2,
    /// Stop requested: finishing, running `shutdown`.
    Stopping = 3,
    /// Limits reached (or `Outcome::Retire`): running `shutdown` and its last pause before a fresh worker takes
    /// the slot. A normal part of a worker's life, not a fault.
    Retiring = 4,
}

impl Phase {
    fn from_raw(raw: u32) -> Phase {
        match raw {
            1 => Phase::Initializing,
            2 => Phase::Running,
            3 => Phase::Stopping,
            4 => Phase::Retiring,
            _ => Phase::Loading,
        }
    }
}

/// One worker's line, 64 bytes, so two workers never write the same cache line.
#[repr(C, align(64))]
pub struct Cell {
    seq: AtomicU64,
    phase: AtomicU32,
}

impl Cell {
    /// Marks the start of a `work` call; `finished` calls came before it.
    #[inline]
    pub fn begin_work(&self, finished: u64) {
        self.seq.store(finished * 2 + 1, Ordering::Relaxed);
    }

    /// Marks the end of a `work` call; `finished` counts it.
    #[inline]
    pub fn end_work(&self, finished: u64) {
        self.seq.store(finished * 2, Ordering::Relaxed);
    }

    /// Publishes a phase change.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u32, Ordering::Relaxed);
    }

    /// Reads the published phase.
    pub fn phase(&self) -> Phase {
        Phase::from_raw(self.phase.load(Ordering::Relaxed))
    }

    /// The raw sequence number (odd while busy).
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Finished `work` calls.
    pub fn executions(&self) -> u64 {
        self.seq() / 2
    }

    /// Whether a `work` call is in flight.
    pub fn busy(&self) -> bool {
        self.seq() % 2 == 1
    }

    fn reset(&self) {
        self.seq.store(0, Ordering::Relaxed);
        self.phase.store(Phase::Loading as u32, Ordering::Relaxed);
    }
}

/// Index of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellIndex(pub usize);

/// The shared mapping and the master's record of which cells are in use.
pub struct Scoreboard {
    base: NonNull<Cell>,
    capacity: usize,
    free: Vec<CellIndex>,
}

/// The most workers (of all tasks, counting those briefly doubled during a rollout) one master can run.
pub const CAPACITY: usize = 4096;

/// The scoreboard could not be created or is full.
#[derive(Debug, thiserror::Error)]
pub enum ScoreboardError {
    #[error("cannot map the shared scoreboard")]
    Map(#[source] nix::Error),
    #[error("too many workers: one master runs at most {CAPACITY}")]
    Full,
}

impl Scoreboard {
    /// Maps a zeroed scoreboard of [`CAPACITY`] cells. Pages are only backed once touched.
    pub fn new() -> Result<Scoreboard, ScoreboardError> {
        let len = NonZeroUsize::new(CAPACITY * size_of::<Cell>()).expect("non-zero size");
        // SAFETY: a fresh anonymous mapping aliases nothing; zeroed memory is a valid `Cell` (all atomics 0).
        let ptr =
            unsafe { mmap_anonymous(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED) }
                .map_err(ScoreboardError::Map)?;
        let free = (0..CAPACITY).rev().map(CellIndex).collect();
        Ok(Scoreboard { base: ptr.cast(), capacity: CAPACITY, free })
    }

    /// Takes a free cell, reset to its initial state.
    pub fn claim(&mut self) -> Result<CellIndex, ScoreboardError> {
        let index = self.free.pop().ok_or(ScoreboardError::Full)?;
        self.cell(index).reset();
        Ok(index)
    }

    /// Gives a cell back once its worker has been reaped.
    pub fn release(&mut self, index: CellIndex) {
        debug_assert!(!self.free.contains(&index));
        self.free.push(index);
    }

    /// The cell at `index`.
    pub fn cell(&self, index: CellIndex) -> &Cell {
        assert!(index.0 < self.capacity, "cell index out of range");
        // SAFETY: in bounds (checked above); the mapping lives as long as `self`; cells are only accessed through
        // atomics, so sharing them with other processes is sound.
        unsafe { &*self.base.as_ptr().add(index.0) }
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `new` with this length and no reference into it outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), self.capacity * size_of::<Cell>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_is_one_cache_line() {
        assert_eq!(size_of::<Cell>(), 64);
    }

    #[test]
    fn seq_tracks_busy_and_executions() {
        let mut board = Scoreboard::new().unwrap();
        let index = board.claim().unwrap();
        let cell = board.cell(index);
        cell.begin_work(0);
        assert!(cell.busy());
        cell.end_work(1);
        assert!(!cell.busy());
        assert_eq!(cell.executions(), 1);
    }

    #[test]
    fn writes_in_a_child_are_seen_by_the_parent() {
        let mut board = Scoreboard::new().unwrap();
        let index = board.claim().unwrap();
        // SAFETY: the test thread forks a child that only stores to the mapping and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                board.cell(index).end_work(42);
                // SAFETY: exit at once without running the test harness's destructors.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(board.cell(index).executions(), 42);
            }
        }
    }
}
