//! Watching a master's status file: read the snapshot, and wait (inotify, with a deadline) for one that
//! satisfies a condition. Used by status, restart and scale.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::CommandError;
use super::process::MasterHandle;
use crate::rundir;
use crate::status::Snapshot;

/// A watch on `{status_dir}/status.json`.
pub struct StatusWatch {
    inotify: Inotify,
    path: PathBuf,
}

impl StatusWatch {
    /// Starts watching (before asking the master for anything, so no update is missed).
    pub fn new(status_dir: &Path) -> Result<StatusWatch, CommandError> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| CommandError::system("watch the status directory", e))?;
        inotify
            .add_watch(status_dir, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE)
            .map_err(|e| CommandError::system(format!("watch {}", status_dir.display()), e))?;
        Ok(StatusWatch { inotify, path: status_dir.join("status.json") })
    }

    /// The current snapshot, if the file is there.
    pub fn read(&self) -> Result<Option<Snapshot>, CommandError> {
        read_snapshot(&self.path)
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

/// Reads a status file (never through a symlink); `None` when there is none.
pub fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, CommandError> {
    let Ok(file) = rundir::open_read_nofollow(path) else { return Ok(None) };
    serde_json::from_reader(std::io::BufReader::new(file))
        .map(Some)
        .map_err(|source| CommandError::BadStatus { path: path.to_owned(), source })
}
