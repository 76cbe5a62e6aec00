//! What one benchmark run measures and for how long: the full, quick and smoke presets.

use std::time::Duration;

use serde::Serialize;

/// The settings of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// `full`, `quick` or `smoke` (shown in the report).
    pub mode: String,
    /// Repetitions of each figure that needs a fresh host per sample.
    pub runs: usize,
    /// The groups of figures to measure (all by default).
    pub groups: Vec<Group>,
    /// Worker counts of the start, stop and status rows.
    pub worker_counts: Vec<u32>,
    /// Workers of every other figure (8 in the targets).
    pub workers: u32,
    /// Workers of the large-host figures of the spawn group (1024 in the targets).
    pub many_workers: u32,
    /// Tasks, and workers per task, of the many-tasks figures of the spawn group (64 × 16 in the targets).
    pub many_tasks: u32,
    pub many_task_workers: u32,
    /// `pmhost status` calls per host in the status rows.
    pub status_calls: usize,
    /// Workers killed (one at a time) in the respawn figure.
    pub kills: usize,
    /// How long the master is watched when idle.
    #[serde(with = "millis", rename = "idle_window_ms")]
    pub idle_window: Duration,
    /// How long calls are counted in the overhead figures, and how long the plain loop runs.
    #[serde(with = "millis", rename = "rate_window_ms")]
    pub rate_window: Duration,
    /// How long the work rhythm is recorded before a restart (the steady-state gap).
    #[serde(with = "millis", rename = "steady_window_ms")]
    pub steady_window: Duration,
    /// How long each call lasts in the "stop with work in flight" figure.
    #[serde(with = "millis", rename = "slow_call_ms")]
    pub slow_call: Duration,
    /// Jobs drained per run in the queue figures.
    pub queue_jobs: u32,
}

/// A group of figures that share a host setup (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Start, `pmhost status` and stop, per worker count.
    Lifecycle,
    /// `kill -9` of a worker → its replacement's first call.
    Respawn,
    /// Stop with calls in flight.
    Inflight,
    /// Restart to a new build.
    Restart,
    /// Master idle and memory.
    Quiet,
    /// Host overhead per call, empty and with a write.
    Overhead,
    /// A PostgreSQL queue (examples/pg-queue): jobs/s with and without pmhost, stop of LISTEN-idle workers.
    Queue,
    /// The spawn path: slot turnover, churn, respawn with default settings, 1024 workers, 64 tasks × 16 workers.
    Spawn,
}

impl Group {
    /// Every group, in the order they run.
    pub const ALL: [Group; 8] = [
        Group::Lifecycle,
        Group::Respawn,
        Group::Inflight,
        Group::Restart,
        Group::Quiet,
        Group::Overhead,
        Group::Queue,
        Group::Spawn,
    ];
}

/// The pause between calls where a steady rhythm matters (`--execute-usleep`).
pub const RHYTHM: &str = "100ms";

impl Config {
    /// Every figure at the stated repetitions: well under ten minutes on a 2-core machine.
    pub fn full() -> Config {
        Config {
            mode: "full".to_owned(),
            runs: 5,
            groups: Group::ALL.to_vec(),
            worker_counts: vec![1, 8, 64, 256],
            workers: 8,
            many_workers: 1024,
            many_tasks: 64,
            many_task_workers: 16,
            status_calls: 4,
            kills: 20,
            idle_window: Duration::from_secs(30),
            rate_window: Duration::from_secs(2),
            steady_window: Duration::from_secs(2),
            slow_call: Duration::from_millis(300),
            queue_jobs: 50_000,
        }
    }

    /// Fewer repetitions and shorter windows: under a minute.
    pub fn quick() -> Config {
        Config {
            mode: "quick".to_owned(),
            runs: 3,
            status_calls: 3,
            kills: 10,
            idle_window: Duration::from_secs(5),
            rate_window: Duration::from_secs(1),
            steady_window: Duration::from_secs(1),
            slow_call: Duration::from_millis(200),
            queue_jobs: 20_000,
            ..Config::full()
        }
    }

    /// The smallest run that still produces every figure: for the test suite.
    pub fn smoke() -> Config {
        Config {
            mode: "smoke".to_owned(),
            runs: 1,
            groups: Group::ALL.to_vec(),
            worker_counts: vec![2],
            workers: 2,
            many_workers: 4,
            many_tasks: 2,
            many_task_workers: 2,
            status_calls: 1,
            kills: 1,
            idle_window: Duration::from_secs(1),
            rate_window: Duration::from_secs(1),
            steady_window: Duration::from_secs(1),
            slow_call: Duration::from_millis(200),
            queue_jobs: 500,
        }
    }
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }
}
