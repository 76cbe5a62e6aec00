//! Run directories (pid, status, logs, staged plugins, requests): a trust boundary.
//!
//! A run root is trusted only when every directory on its path is (see [`trust`]): owned by root or by the
//! caller, and closed to writes by group and others unless it is sticky (as `/tmp` is). Once trusted, a root is
//! held as a directory descriptor ([`Dir`]) and everything below it is opened relative to that descriptor,
//! component by component with `O_NOFOLLOW`, and checked to be a regular file of bounded size: a path string that
//! someone else can swap (a renamed directory, a planted symlink or FIFO) is never followed.

mod dir;
mod host;
mod trust;

pub use dir::{Dir, FileKind, RunDirError};
pub use host::{
    HostDirs, METRICS_FILE, PID_FILE_LIMIT, PLUGINS_DIR, REQUEST_LIMIT, REQUESTS_DIR, STATUS_FILE, STATUS_LIMIT,
    pid_file_name,
};
pub use trust::{DefaultRoots, default_roots, open_root};
