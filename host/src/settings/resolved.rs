//! Resolved settings of a host and its tasks, with the original `process_manage` defaults: what the command line
//! and `pmhost.toml` produce (through [`super::task`] for task settings), and all that the master reads.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most workers a task may have.
pub const MAX_WORKERS: u32 = 1024;

/// The default host name (the original's `baseTitle`).
pub const DEFAULT_NAME: &str = "process";
/// The default title prefix.
pub const DEFAULT_TITLE_PREFIX: &str = "process_m";

/// Settings of the master.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Adopt orphaned descendants and reap them (always the case as PID 1).
    pub subreaper: bool,
}

impl HostSettings {
    /// The master's process title.
    pub fn master_title(&self) -> String {
        format!("{}:Master:{}", self.title_prefix, self.name)
    }

    /// A worker's process title.
    pub fn worker_title(&self, task: &str) -> String {
        format!("{}:Worker:{}", self.title_prefix, task)
    }
}

/// How a worker is paced, when it retires, and the resource limits it runs under.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// `work` calls before the worker retires; 0 = unlimited.
    pub execute_times: u64,
    /// Pause after every `work` call; zero = no pause and no sleep syscall.
    pub execute_usleep: Duration,
    /// Life of a worker before it retires; `None` = unlimited.
    pub limit_seconds: Option<Duration>,
    /// Spread of retirement: each worker's `execute_times` and `limit_seconds` are stretched by a random
    /// fraction in `[0, limit_jitter]`, so workers started together do not all retire together.
    pub limit_jitter: f64,
    /// Resource limits set in the worker before the plugin loads.
    pub rlimits: Rlimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            execute_times: 1,
            execute_usleep: Duration::from_micros(200_000),
            limit_seconds: None,
            limit_jitter: 0.0,
            rlimits: Rlimits::default(),
        }
    }
}

impl Limits {
    /// These limits with the jitter applied, drawn from `seed` (one draw per worker).
    pub fn jittered(&self, seed: u64) -> Limits {
        if self.limit_jitter <= 0.0 {
            return *self;
        }
        // SplitMix64: a well-mixed draw from any seed, no random-number crate needed for one number.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let stretch = 1.0 + self.limit_jitter * (z >> 11) as f64 / (1u64 << 53) as f64;
        Limits {
            execute_times: (self.execute_times as f64 * stretch).round() as u64,
            limit_seconds: self.limit_seconds.map(|limit| limit.mul_f64(stretch)),
            ..*self
        }
    }
}

/// Resource limits of a worker (`None`: inherited from the master).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE`: open files.
    pub nofile: Option<u64>,
    /// `RLIMIT_AS`: address space in bytes.
    pub address_space: Option<u64>,
    /// `RLIMIT_CORE`: core file size in bytes (0: no core dumps).
    pub core: Option<u64>,
}

/// Crash-loop backoff of a worker slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// A `work` call running longer gets its worker killed and replaced; `None` = no limit.
    pub work_timeout: Option<Duration>,
    /// A worker whose resident memory exceeds this is retired after its current call; `None` = no limit.
    pub max_rss: Option<u64>,
    /// Workers' stdout and stderr are logged line by line (else they are the master's).
    pub capture_output: bool,
    /// A new build of the plugin file is rolled out as soon as it is complete (`--watch`, see `master::watch`).
    #[serde(default)]
    pub watch: bool,
    /// Who the workers run as and in which environment.
    pub process: ProcessSettings,
}

/// Who a worker runs as and in which environment, applied after the fork and before the plugin loads (see
/// `crate::identity`). `None`: as the master.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSettings {
    /// User name or id: uid, its primary group and its supplementary groups.
    pub user: Option<String>,
    /// Group name or id: the primary group (instead of the user's).
    pub group: Option<String>,
    /// Variables added to the environment, in order.
    pub environment: Vec<(String, String)>,
    /// Start from an empty environment (plus `PATH` and `environment`).
    pub clear_env: bool,
    /// Working directory (absolute).
    pub working_directory: Option<PathBuf>,
    /// File creation mask.
    pub umask: Option<u32>,
    /// Scheduling niceness.
    pub nice: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stretches_limits_within_the_fraction() {
        let limits = Limits {
            execute_times: 1000,
            limit_seconds: Some(Duration::from_secs(100)),
            limit_jitter: 0.5,
            ..Limits::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let j = limits.jittered(seed);
            assert!((1000..=1500).contains(&j.execute_times), "{}", j.execute_times);
            let secs = j.limit_seconds.unwrap().as_secs_f64();
            assert!((100.0..=150.0).contains(&secs), "{secs}");
            seen.insert(j.execute_times);
        }
        assert!(seen.len() > 50, "draws are spread: {}", seen.len());
        assert_eq!(Limits::default().jittered(7), Limits::default());
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(1), Duration::from_millis(100));
        assert_eq!(backoff.delay(2), Duration::from_millis(200));
        assert_eq!(backoff.delay(4), Duration::from_millis(800));
        assert_eq!(backoff.delay(40), Duration::from_secs(30));
    }
}
