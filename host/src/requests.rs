//! Control requests from the CLI to a running master that a bare signal cannot carry (a restart to another
//! plugin file, an absolute worker count).
//!
//! The CLI writes `{status_root}/{name}/requests/{id}.json` atomically, then sends SIGUSR2; the master reads and
//! removes every request file on SIGUSR2 and records the request id in its status, which is how the CLI finds
//! the outcome of its own request. A restart or scale request carries the moment its command stops waiting: a
//! command that timed out (against a stopped master, say) withdraws its file, and the master drops a request it
//! reads, or would begin, after that moment, so nothing is applied once the user was told it failed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rundir::{self, RunDirError};
use crate::sysinfo;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Roll out a new generation.
    Restart {
        /// Request id.
        id: String,
        /// Use this plugin file from now on (the one-task form).
        plugin: Option<PathBuf>,
        /// Roll only this task.
        task: Option<String>,
        /// Extra workers at a time.
        surge: Option<u32>,
        /// Longest `init` of a new worker, in milliseconds.
        init_timeout_ms: Option<u64>,
        /// When the command stops waiting (`CLOCK_MONOTONIC` ns): a restart not begun by then is dropped.
        #[serde(default)]
        expires_at_mono_ns: Option<u64>,
    },
    /// Stop gracefully. Unlike a second SIGTERM, a second stop request never turns a graceful stop into an
    /// immediate one, so two `pmhost stop` commands cannot kill workers in the middle of a call.
    Stop {
        /// Request id.
        id: String,
    },
    /// Set the worker count.
    Scale {
        /// Request id.
        id: String,
        /// Only this task (default: every task).
        task: Option<String>,
        /// Wanted workers.
        workers: u32,
        /// When the command stops waiting (`CLOCK_MONOTONIC` ns): a request read later is dropped.
        #[serde(default)]
        expires_at_mono_ns: Option<u64>,
    },
}

impl Request {
    /// Whether the command that sent this request has given up on it by `now_ns` (`CLOCK_MONOTONIC`): a request
    /// the master reads (or would act on) later is dropped, never applied behind the user's back.
    pub fn expired(&self, now_ns: u64) -> bool {
        let expires = match self {
            Request::Restart { expires_at_mono_ns, .. } | Request::Scale { expires_at_mono_ns, .. } => {
                *expires_at_mono_ns
            }
            Request::Stop { .. } => None,
        };
        expires.is_some_and(|at| now_ns >= at)
    }
}

/// A fresh request id (unique per CLI process and moment).
pub fn new_id() -> String {
    format!("{}-{}", std::process::id(), sysinfo::monotonic_ns())
}

fn dir(status_dir: &Path) -> PathBuf {
    status_dir.join("requests")
}

/// Writes a request for the master of `status_dir` (the caller then sends SIGUSR2).
pub fn submit(status_dir: &Path, id: &str, request: &Request) -> Result<(), RunDirError> {
    let dir = dir(status_dir);
    rundir::ensure_private_dir(&dir)?;
    let json = serde_json::to_vec(request).expect("requests serialize");
    rundir::write_atomic(&dir.join(format!("{id}.json")), &json)
}

/// Takes back a request the master has not read yet; returns whether it was still there (then it will never be
/// applied).
pub fn withdraw(status_dir: &Path, id: &str) -> bool {
    std::fs::remove_file(dir(status_dir).join(format!("{id}.json"))).is_ok()
}

/// Reads and removes every pending request, oldest first. Unreadable files are removed and skipped.
pub fn take_all(status_dir: &Path) -> Vec<Request> {
    let Ok(entries) = std::fs::read_dir(dir(status_dir)) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let mut requests = Vec::new();
    for path in paths {
        let parsed = rundir::open_read_nofollow(&path).ok().and_then(|f| serde_json::from_reader(f).ok());
        let _ = std::fs::remove_file(&path);
        match parsed {
            Some(request) => requests.push(request),
            None => tracing::warn!(file = %path.display(), "ignoring an unreadable control request"),
        }
    }
    requests
}
