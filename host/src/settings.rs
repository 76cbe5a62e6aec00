//! Resolved settings of a host and its tasks, with the original `process_manage` defaults.
//!
//! The CLI (and later `pmhost.toml`) produce these; everything downstream reads only these types.

use std::path::PathBuf;
use std::time::Duration;

/// The default host name (the original's `baseTitle`).
pub const DEFAULT_NAME: &str = "process";
/// The default title prefix.
pub const DEFAULT_TITLE_PREFIX: &str = "process_m";
/// The default pid root.
pub const DEFAULT_PID_ROOT: &str = "/tmp/pm/pid";
/// The default status root.
pub const DEFAULT_STATUS_ROOT: &str = "/tmp/pm/status";

/// Settings of the master.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// Name of the master: file names and titles derive from it.
    pub name: String,
    /// Prefix of process titles.
    pub title_prefix: String,
    /// Directory of pid files.
    pub pid_root: PathBuf,
    /// Directory of status directories.
    pub status_root: PathBuf,
    /// The check tick; `None` is batch mode (no respawn, the master exits when its workers are done).
    pub check_interval: Option<Duration>,
    /// Grace period of a graceful stop before stragglers are killed.
    pub stop_timeout: Duration,
}

impl HostSettings {
    /// `{pid_root}/{name}.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.pid_root.join(format!("{}.pid", self.name))
    }

    /// `{status_root}/{name}`.
    pub fn status_dir(&self) -> PathBuf {
        self.status_root.join(&self.name)
    }

    /// `{status_root}/{name}/status.json`.
    pub fn status_file(&self) -> PathBuf {
        self.status_dir().join("status.json")
    }

    /// `{status_root}/{name}/plugins`: staged plugin copies.
    pub fn plugins_dir(&self) -> PathBuf {
        self.status_dir().join("plugins")
    }

    /// The master's process title.
    pub fn master_title(&self) -> String {
        format!("{}:Master:{}", self.title_prefix, self.name)
    }

    /// A worker's process title.
    pub fn worker_title(&self, task: &str) -> String {
        format!("{}:Worker:{}", self.title_prefix, task)
    }
}

/// How a worker is paced and when it retires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `work` calls before the worker retires; 0 = unlimited.
    pub execute_times: u64,
    /// Pause after every `work` call; zero = no pause and no sleep syscall.
    pub execute_usleep: Duration,
    /// Life of a worker before it retires; `None` = unlimited.
    pub limit_seconds: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { execute_times: 1, execute_usleep: Duration::from_micros(200_000), limit_seconds: None }
    }
}

/// Crash-loop backoff of a worker slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first respawn after a crash.
    pub initial: Duration,
    /// Ceiling of the doubling delay.
    pub max: Duration,
    /// A worker that ran this long before crashing starts the backoff afresh.
    pub reset: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(30), reset: Duration::from_secs(10) }
    }
}

impl Backoff {
    /// The delay before the respawn that follows `crashes` consecutive crashes (1 = the first).
    pub fn delay(&self, crashes: u32) -> Duration {
        let factor = 1u32.checked_shl(crashes.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Settings of one task (one plugin run by a set of workers).
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// Task name (titles, status, logs).
    pub name: String,
    /// The plugin file as the user named it.
    pub plugin: PathBuf,
    /// Number of worker slots.
    pub workers: u32,
    /// Pacing and retirement.
    pub limits: Limits,
    /// Longest `init` before the worker is considered failed.
    pub init_timeout: Duration,
    /// Crash-loop backoff.
    pub backoff: Backoff,
    /// The task's `[task.config]` as JSON text.
    pub config_json: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(1), Duration::from_millis(100));
        assert_eq!(backoff.delay(2), Duration::from_millis(200));
        assert_eq!(backoff.delay(4), Duration::from_millis(800));
        assert_eq!(backoff.delay(40), Duration::from_secs(30));
    }
}
