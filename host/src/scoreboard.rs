//! The scoreboard: a shared mapping of a memfd, created before the first fork, with one cache line per worker.
//!
//! The memfd is what lets a master re-executed in place (`pmhost upgrade`) see its workers again: `execve` drops
//! the master's mappings but the workers keep theirs (each inherited the mapping at its fork and closed the
//! descriptor), and the memory lives as long as anyone maps it or holds the descriptor. The master hands the
//! descriptor (without `O_CLOEXEC`) and the cells in use to its new image, which maps the same pages again with
//! [`Scoreboard::from_fd`]: workers keep writing where they always did.
//!
//! Workers publish their progress with relaxed atomic stores (no syscall per `work` call); the master reads
//! them for status and hang detection. A worker's `seq` counts half-steps: it is odd while a `work` call runs and
//! even between calls, so `seq / 2` is the number of finished calls and an odd `seq` that does not move is a call
//! that is taking long.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

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
    /// When the master asked for this cell's worker (`CLOCK_MONOTONIC` ns, written by the master; 0 before).
    requested_ns: AtomicU64,
    /// When that worker began its first `work` call (written by the worker; 0 before).
    first_call_ns: AtomicU64,
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

    /// The master's mark: this cell's worker is asked for now (`CLOCK_MONOTONIC` ns).
    pub fn mark_requested(&self, now_ns: u64) {
        self.requested_ns.store(now_ns, Ordering::Relaxed);
    }

    /// The worker's mark: its first `work` call begins now (`CLOCK_MONOTONIC` ns).
    #[inline]
    pub fn mark_first_call(&self, now_ns: u64) {
        self.first_call_ns.store(now_ns, Ordering::Relaxed);
    }

    /// From the master's request to the worker's first `work` call, once both happened.
    pub fn spawn_latency(&self) -> Option<std::time::Duration> {
        let requested = self.requested_ns.load(Ordering::Relaxed);
        let first_call = self.first_call_ns.load(Ordering::Relaxed);
        (requested != 0 && first_call >= requested).then(|| std::time::Duration::from_nanos(first_call - requested))
    }

    fn reset(&self) {
        self.seq.store(0, Ordering::Relaxed);
        self.phase.store(Phase::Loading as u32, Ordering::Relaxed);
        self.requested_ns.store(0, Ordering::Relaxed);
        self.first_call_ns.store(0, Ordering::Relaxed);
    }
}

/// Index of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct CellIndex(pub usize);

/// The shared mapping and the master's record of which cells are in use.
pub struct Scoreboard {
    base: NonNull<Cell>,
    capacity: usize,
    free: Vec<CellIndex>,
    /// The memfd behind the mapping (close-on-exec; a handover clears the flag on its own duplicate).
    memfd: OwnedFd,
}

/// The most workers (of all tasks, counting those briefly doubled during a rollout) one master can run.
pub const CAPACITY: usize = 4096;

/// The scoreboard could not be created or is full.
#[derive(Debug, thiserror::Error)]
pub enum ScoreboardError {
    #[error("cannot map the shared scoreboard")]
    Map(#[source] nix::Error),
    /// Its memfd: the message carries the errno (it reaches a daemon's caller as one line).
    #[error("cannot create the shared scoreboard: {0}")]
    Create(nix::Error),
    #[error("the handed-over scoreboard is {found} bytes, not {expected}")]
    Size { found: u64, expected: u64 },
    #[error("too many workers: one master runs at most {CAPACITY}")]
    Full,
}

impl Scoreboard {
    /// Maps a zeroed scoreboard of [`CAPACITY`] cells. Pages are only backed once touched.
    pub fn new() -> Result<Scoreboard, ScoreboardError> {
        let memfd = memfd_create(c"pmhost-scoreboard", MFdFlags::MFD_CLOEXEC).map_err(ScoreboardError::Create)?;
        nix::unistd::ftruncate(&memfd, Self::len() as libc::off_t).map_err(ScoreboardError::Create)?;
        Self::map(memfd, &[])
    }

    /// Maps the scoreboard of a previous image of this master (its memfd, handed over through `execve`) with
    /// the cells `in_use` taken: their workers keep writing into them.
    pub fn from_fd(memfd: OwnedFd, in_use: &[CellIndex]) -> Result<Scoreboard, ScoreboardError> {
        let size = nix::sys::stat::fstat(&memfd).map_err(ScoreboardError::Map)?.st_size as u64;
        if size != Self::len() as u64 {
            return Err(ScoreboardError::Size { found: size, expected: Self::len() as u64 });
        }
        nix::fcntl::fcntl(&memfd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(ScoreboardError::Map)?;
        Self::map(memfd, in_use)
    }

    fn len() -> usize {
        CAPACITY * size_of::<Cell>()
    }

    fn map(memfd: OwnedFd, in_use: &[CellIndex]) -> Result<Scoreboard, ScoreboardError> {
        let len = NonZeroUsize::new(Self::len()).expect("non-zero size");
        // SAFETY: a shared mapping of our own memfd; its pages are zeroed or cells written through atomics only,
        // and any bit pattern is a valid `Cell` (all atomics).
        let ptr =
            unsafe { mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &memfd, 0) }
                .map_err(ScoreboardError::Map)?;
        let free = (0..CAPACITY).rev().map(CellIndex).filter(|index| !in_use.contains(index)).collect();
        Ok(Scoreboard { base: ptr.cast(), capacity: CAPACITY, free, memfd })
    }

    /// The memfd behind the mapping, to hand over to a new image of the master.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
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
    fn spawn_latency_needs_both_marks_and_a_reset_clears_them() {
        let mut board = Scoreboard::new().unwrap();
        let index = board.claim().unwrap();
        let cell = board.cell(index);
        assert_eq!(cell.spawn_latency(), None);
        cell.mark_requested(1_000);
        assert_eq!(cell.spawn_latency(), None, "no call yet");
        cell.mark_first_call(251_000);
        assert_eq!(cell.spawn_latency(), Some(std::time::Duration::from_micros(250)));
        board.release(index);
        let again = board.claim().unwrap();
        assert_eq!(again, index);
        assert_eq!(board.cell(again).spawn_latency(), None);
    }

    #[test]
    fn a_mapping_from_the_memfd_sees_the_same_cells_and_keeps_used_ones_taken() {
        let mut board = Scoreboard::new().unwrap();
        let used = board.claim().unwrap();
        board.cell(used).end_work(7);
        let fd = board.memfd().try_clone_to_owned().unwrap();
        let mut again = Scoreboard::from_fd(fd, &[used]).unwrap();
        assert_eq!(again.cell(used).executions(), 7);
        board.cell(used).end_work(8);
        assert_eq!(again.cell(used).executions(), 8, "one memory, two mappings");
        drop(board);
        assert_eq!(again.cell(used).executions(), 8, "the pages outlive the first mapping");
        assert_ne!(again.claim().unwrap(), used);
        let wrong = memfd_create(c"small", MFdFlags::MFD_CLOEXEC).unwrap();
        assert!(matches!(Scoreboard::from_fd(wrong, &[]), Err(ScoreboardError::Size { found: 0, .. })));
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
