//! Watching a master's status file: read the snapshot, and wait (inotify, with a deadline) for one that
//! satisfies a condition. Used by restart and scale (status asks with a signal and waits for the answer).

use std::os::fd::AsFd;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::CommandError;
use super::process::MasterHandle;
use crate::rundir::{Dir, STATUS_FILE, STATUS_LIMIT};
use crate::status::Snapshot;

/// A watch on `{status_dir}/status.json`.
pub struct StatusWatch {
    inotify: Inotify,
    dir: Dir,
}

impl StatusWatch {
    /// Starts watching (before asking the master for anything, so no update is missed). The watch is on the
    /// held directory itself, not on whatever its path names later.
    pub fn new(dir: Dir) -> Result<StatusWatch, CommandError> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| CommandError::system("watch the status directory", e))?;
        inotify
            .add_watch(&dir.proc_path(), AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE)
            .map_err(|e| CommandError::system(format!("watch {}", dir.path().display()), e))?;
        Ok(StatusWatch { inotify, dir })
    }

    /// The status directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The current snapshot, if the file is there.
    pub fn read(&self) -> Result<Option<Snapshot>, CommandError> {
        read_snapshot(&self.dir)
    }

    /// Waits until `check` returns `Some` for a snapshot, re-reading on every write; `None` at the deadline.
    /// Fails at once if `master` exits meanwhile.
    pub fn wait_for<T>(
        &self,
        master: &MasterHandle,
        deadline: Instant,
        mut check: impl FnMut(&Snapshot) -> Option<T>,
    ) -> Result<Option<T>, CommandError> {
        loop {
            if let Some(snapshot) = self.read()?
                && let Some(found) = check(&snapshot)
            {
                return Ok(Some(found));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut fds = [
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(master.exit_fd(), PollFlags::POLLIN),
            ];
            let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
            if matches!(poll(&mut fds, ms), Ok(n) if n > 0) {
                if fds[1].revents().is_some_and(|r| r.intersects(PollFlags::POLLIN)) {
                    return Err(CommandError::MasterGone { pid: master.pid.as_raw() });
                }
                let _ = self.inotify.read_events();
            }
        }
    }
}

/// Reads the status file of the status directory `dir` (a regular file of bounded size, never through a
/// symlink); `None` when there is none.
pub fn read_snapshot(dir: &Dir) -> Result<Option<Snapshot>, CommandError> {
    let Some(bytes) = dir.read_file(STATUS_FILE, STATUS_LIMIT)? else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| CommandError::BadStatus { path: dir.display_path(STATUS_FILE), source })
}
