//! Control requests from the CLI to a running master that a bare signal cannot carry (a restart to another
//! plugin file, an absolute worker count).
//!
//! The CLI writes `{status_root}/{name}/requests/{id}.json` atomically, then sends SIGUSR2; the master reads and
//! removes every request file on SIGUSR2 and records the request id in its status, which is how the CLI finds
//! the outcome of its own request. A restart or scale request carries the moment its command stops waiting: a
//! command that timed out (against a stopped master, say) withdraws its file, and the master drops a request it
//! reads, or would begin, after that moment, so nothing is applied once the user was told it failed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::rundir::{Dir, REQUEST_LIMIT, REQUESTS_DIR, RunDirError};
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
    /// Re-execute the master's binary in place (`pmhost upgrade`).
    Upgrade {
        /// Request id.
        id: String,
        /// The new binary (else the one the master was started from, as it is on disk now).
        binary: Option<PathBuf>,
        /// When the command stops waiting (`CLOCK_MONOTONIC` ns).
        #[serde(default)]
        expires_at_mono_ns: Option<u64>,
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
            Request::Restart { expires_at_mono_ns, .. }
            | Request::Scale { expires_at_mono_ns, .. }
            | Request::Upgrade { expires_at_mono_ns, .. } => *expires_at_mono_ns,
        };
        expires.is_some_and(|at| now_ns >= at)
    }
}

/// A fresh request id (unique per CLI process and moment).
pub fn new_id() -> String {
    format!("{}-{}", std::process::id(), sysinfo::monotonic_ns())
}

/// Writes a request for the master of the status directory `status` (the caller then sends SIGUSR2).
pub fn submit(status: &Dir, id: &str, request: &Request) -> Result<(), RunDirError> {
    let dir = status.subdir(REQUESTS_DIR, true)?.expect("created when missing");
    let json = serde_json::to_vec(request).expect("requests serialize");
    dir.write_atomic(&format!("{id}.json"), &json)
}

/// Takes back a request the master has not read yet; returns whether it was still there (then it will never be
/// applied).
pub fn withdraw(status: &Dir, id: &str) -> bool {
    let Ok(Some(dir)) = status.subdir(REQUESTS_DIR, false) else { return false };
    dir.remove(&format!("{id}.json"))
}

/// Reads and removes every pending request, oldest first. Unreadable files (not regular, too large, not a
/// request) are removed and skipped.
pub fn take_all(status: &Dir) -> Vec<Request> {
    let Ok(Some(dir)) = status.subdir(REQUESTS_DIR, false) else { return Vec::new() };
    let mut names: Vec<String> = dir
        .entries()
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.ends_with(".json") && !name.starts_with('.'))
        .collect();
    // Ids are `{pid}-{monotonic ns}`: the clock part orders them.
    names.sort_by_key(|name| name.trim_end_matches(".json").rsplit('-').next().and_then(|t| t.parse::<u64>().ok()));
    let mut requests = Vec::new();
    for name in names {
        let parsed =
            dir.read_file(&name, REQUEST_LIMIT).map(|bytes| bytes.and_then(|b| serde_json::from_slice(&b).ok()));
        dir.remove(&name);
        match parsed {
            Ok(Some(request)) => requests.push(request),
            Ok(None) => {
                tracing::warn!(file = %dir.display_path(&name).display(), "ignoring an unreadable control request")
            }
            Err(e) => tracing::warn!("ignoring a control request: {e}"),
        }
    }
    requests
}
