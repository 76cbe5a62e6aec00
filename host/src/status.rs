//! The status snapshot: what the master writes to `{status_root}/{name}/status.json` and what `pmhost status`
//! prints, as a table or as JSON. The JSON schema is documented in the README.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::sysinfo;

/// The whole snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Host name.
    pub name: String,
    /// What the host as a whole is doing.
    pub state: HostState,
    /// The master process.
    pub master: MasterStatus,
    /// The newest rollout generation (1 after start).
    pub generation: u32,
    /// When the master wrote this, in `CLOCK_MONOTONIC` nanoseconds (lets a reader tell a fresh snapshot).
    pub written_at_mono_ns: u64,
    /// When the master wrote this, Unix seconds.
    pub written_at: u64,
    /// The most recent restart (rollout), if any.
    pub last_restart: Option<RestartStatus>,
    /// The most recent scale request handled, if any.
    pub last_scale: Option<ScaleStatus>,
    /// The most recent upgrade of pmhost itself (`pmhost upgrade`), if any.
    #[serde(default)]
    pub last_upgrade: Option<UpgradeStatus>,
    /// The tasks and their workers.
    pub tasks: Vec<TaskStatus>,
}

/// What a host as a whole is doing (`starting`, `running`, `stopping` in JSON).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// The first workers are not all ready yet.
    Starting,
    Running,
    /// A stop is under way.
    Stopping,
}

/// Where a worker is (lowercase in JSON).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Loading the plugin.
    Loading,
    /// In the plugin's `init`.
    Initializing,
    /// Between `work` calls.
    Idle,
    /// In a `work` call.
    Busy,
    /// Limits reached: about to be replaced.
    Retiring,
    /// Asked to stop.
    Stopping,
    /// The process is stopped (SIGSTOP, a debugger): it serves nothing.
    Stopped,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Starting => "starting",
            HostState::Running => "running",
            HostState::Stopping => "stopping",
        }
    }
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Loading => "loading",
            WorkerState::Initializing => "initializing",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Retiring => "retiring",
            WorkerState::Stopping => "stopping",
            WorkerState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An upgrade of the master's own binary, in place.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpgradeStatus {
    /// The CLI request that asked for it (`None` for the signal).
    pub request_id: Option<String>,
    /// The binary asked for.
    pub binary: String,
    /// The pmhost version before.
    pub from_version: String,
    /// The pmhost version after (the old one when it was refused or rolled back).
    pub to_version: String,
    /// The new binary runs, with the same workers.
    pub ok: bool,
    /// Why it was refused or rolled back.
    pub error: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

/// A rollout of a new generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestartStatus {
    /// The generation rolled out.
    pub generation: u32,
    /// Still rolling.
    pub in_progress: bool,
    /// Finished with every slot on the new generation.
    pub ok: bool,
    /// Why it was rolled back.
    pub error: Option<String>,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds; `None` while in progress.
    pub finished_at: Option<u64>,
    /// The CLI request that asked for it (`None` for SIGHUP).
    pub request_id: Option<String>,
    /// Slots on the new generation so far.
    pub slots_done: u32,
    /// Slots to roll.
    pub slots_total: u32,
    /// The watched plugin file whose new build began this rollout (`--watch`); `None` for a requested restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_file: Option<String>,
}

/// A scale request the master applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScaleStatus {
    /// The CLI request.
    pub request_id: String,
    /// Why it was refused, if it was.
    pub error: Option<String>,
}

/// The master's line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MasterStatus {
    pub pid: i32,
    pub title: String,
    pub rss_bytes: Option<u64>,
    /// Unix seconds.
    pub started_at: u64,
    pub uptime_s: u64,
    /// The host's grace period for a graceful stop, in milliseconds.
    #[serde(default)]
    pub stop_timeout_ms: u64,
    /// The pmhost version the master runs.
    #[serde(default)]
    pub version: String,
}

/// One task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskStatus {
    pub name: String,
    /// The plugin file as configured.
    pub plugin: String,
    /// Hash of the build the task is configured to run.
    pub plugin_sha256: String,
    /// Worker slots wanted.
    pub workers_wanted: u32,
    /// `work` calls finished by all workers of this task since the master started.
    pub executions_total: u64,
    pub workers: Vec<WorkerStatus>,
    /// Slots waiting out a crash backoff (no worker right now).
    #[serde(default)]
    pub backoff: Vec<BackoffStatus>,
    /// The task's plugin file is watched for new builds (`watch = true`); absent when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchStatus>,
    /// From the master's request for a worker to the start of its first `work` call, over the task's last
    /// spawns; absent before any worker made a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_latency: Option<SpawnLatency>,
}

/// Spawn latency of a task's recent workers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SpawnLatency {
    /// Workers counted (the last 1 024 ended, and the live ones).
    pub samples: u32,
    pub median_ms: f64,
    pub p99_ms: f64,
}

/// The watch on a task's plugin file (`--watch`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchStatus {
    /// The file watched: the plugin file as the user named it.
    pub file: String,
    /// What the watch is doing.
    pub state: WatchState,
    /// The directory being waited for, or why the file cannot be watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What the watch on a plugin file is doing (snake_case in JSON).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    /// Nothing changed since the last look.
    Watching,
    /// The file changed: it is looked at once it has been still for the debounce (and no writer has it open).
    Settling,
    /// A new build is complete and waits for the running rollout to end.
    Waiting,
    /// The file's directory is gone (`cargo clean`): its nearest existing parent is watched until it is back.
    DirectoryMissing,
    /// No watch could be placed (the note says why); retried at every check tick.
    Failed,
}

impl WatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchState::Watching => "watching for new builds",
            WatchState::Settling => "changed, waiting until it is complete",
            WatchState::Waiting => "a new build waits for the running rollout",
            WatchState::DirectoryMissing => "its directory is missing",
            WatchState::Failed => "cannot be watched",
        }
    }
}

/// A slot in crash backoff.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackoffStatus {
    pub slot: u32,
    /// Consecutive crashes.
    pub crashes: u32,
    /// Time until the next attempt.
    pub next_attempt_in_ms: u64,
    /// How the last worker of the slot ended.
    pub last_exit: Option<ExitStatus>,
}

/// One worker process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub slot: u32,
    pub pid: i32,
    pub title: String,
    /// Where the worker is.
    pub state: WorkerState,
    /// `work` calls finished by this worker.
    pub executions: u64,
    pub generation: u32,
    pub plugin_sha256: String,
    pub rss_bytes: Option<u64>,
    /// Unix seconds.
    pub started_at: u64,
    /// Workers that ran in this slot before this one.
    pub restarts: u32,
    /// How the previous worker of this slot ended, if one did.
    pub last_exit: Option<ExitStatus>,
    /// The user the worker runs as, when it is not the master's (the task's `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// How a worker ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    pub pid: i32,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal name, when a signal ended it.
    pub signal: Option<String>,
    /// `normal exit`, `plugin panicked`, `killed by SIGKILL`...
    pub reason: String,
    /// Whether it counts as a crash (feeds the backoff).
    pub crash: bool,
    /// Unix seconds.
    pub at: u64,
}

impl WorkerStatus {
    /// Whether this worker serves its slot: in its work loop, retiring normally after its limits, or the fresh
    /// replacement of a worker that retired normally. A first worker still in `init`, or the replacement of a
    /// crashed one, does not count until it is ready.
    pub fn serves(&self) -> bool {
        match self.state {
            WorkerState::Idle | WorkerState::Busy | WorkerState::Retiring => true,
            WorkerState::Loading | WorkerState::Initializing => self.last_exit.as_ref().is_some_and(|e| !e.crash),
            WorkerState::Stopping | WorkerState::Stopped => false,
        }
    }
}

impl TaskStatus {
    /// Wanted slots that have a serving worker.
    pub fn served_slots(&self) -> usize {
        (0..self.workers_wanted).filter(|slot| self.workers.iter().any(|w| w.slot == *slot && w.serves())).count()
    }
}

impl Snapshot {
    /// Running, with every wanted slot served (what `pmhost status --check` reports).
    pub fn healthy(&self) -> bool {
        self.state == HostState::Running && self.tasks.iter().all(|t| t.served_slots() == t.workers_wanted as usize)
    }

    /// What `pmhost scale` waits for in the task named `task` (`None`: every task): `workers` slots (`None`: the
    /// task's wanted count) each served, no worker above them.
    pub fn scale_settled(&self, task: Option<&str>, workers: Option<u32>) -> bool {
        self.tasks.iter().filter(|t| task.is_none_or(|name| t.name == name)).all(|t| {
            let wanted = workers.unwrap_or(t.workers_wanted);
            t.served_slots() == wanted as usize && t.workers.iter().all(|w| w.slot < wanted)
        })
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.2}", b as f64 / (1024.0 * 1024.0)))
}

fn start_text(unix: u64) -> String {
    sysinfo::local_time_text(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
}

const MASTER_HEADER: &str =
    "type          pid title                             memory(m) start                 run(s)      count";
const WORKER_HEADER: &str = "type          pid title                             memory(m) start                 run(s)       \
     work slot state         gen build        restarts last exit";

/// Renders the table `pmhost status` prints: the original's Master and Worker sections plus pmhost's columns.
pub fn render_table(snapshot: &Snapshot) -> String {
    let now = sysinfo::unix_seconds(SystemTime::now());
    let mut out = String::new();
    render_host(&mut out, snapshot);
    for task in &snapshot.tasks {
        render_task(&mut out, task, now);
    }
    out
}

/// The host's lines: state, last restart and upgrade, and the original's Master row.
fn render_host(out: &mut String, snapshot: &Snapshot) {
    let m = &snapshot.master;
    let total: u64 = snapshot.tasks.iter().map(|t| t.executions_total).sum();
    let _ = writeln!(out, "Master  state: {}  generation: {}", snapshot.state, snapshot.generation);
    if let Some(restart) = &snapshot.last_restart {
        let outcome = match (restart.in_progress, restart.ok, &restart.error) {
            (true, _, _) => format!("in progress ({}/{} slots)", restart.slots_done, restart.slots_total),
            (false, true, _) => "ok".to_owned(),
            (false, false, Some(error)) => format!("rolled back: {error}"),
            (false, false, None) => "rolled back".to_owned(),
        };
        let _ = writeln!(out, "Last restart  generation {}: {outcome}", restart.generation);
    }
    if !m.version.is_empty() {
        let upgrade = match &snapshot.last_upgrade {
            Some(u) if u.ok => format!("  last upgrade: {} to {} ({})", u.from_version, u.to_version, u.binary),
            Some(u) => format!("  last upgrade: refused: {}", u.error.as_deref().unwrap_or("unknown reason")),
            None => String::new(),
        };
        let _ = writeln!(out, "pmhost {}{upgrade}", m.version);
    }
    let _ = writeln!(out, "{MASTER_HEADER}");
    let _ = writeln!(
        out,
        "{:<8} {:>8} {:<32} {:>10} {:<19} {:>8} {:>10}",
        "Master",
        m.pid,
        m.title,
        mib(m.rss_bytes),
        start_text(m.started_at),
        m.uptime_s,
        total
    );
}

/// A task's section: its header and watch lines, a Worker row per worker, a line per slot in backoff.
fn render_task(out: &mut String, task: &TaskStatus, now: u64) {
    let _ = writeln!(
        out,
        "\nWorker  task: {}  workers: {}/{}  plugin: {} ({})",
        task.name,
        task.workers.len(),
        task.workers_wanted,
        task.plugin,
        &task.plugin_sha256[..task.plugin_sha256.len().min(12)]
    );
    if let Some(watch) = &task.watch {
        let note = watch.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default();
        let _ = writeln!(out, "Watch   {}: {}{note}", watch.file, watch.state.as_str());
    }
    if let Some(spawn) = &task.spawn_latency {
        let _ = writeln!(
            out,
            "Spawn   request to first work call: median {:.3} ms, p99 {:.3} ms ({} workers)",
            spawn.median_ms, spawn.p99_ms, spawn.samples
        );
    }
    let _ = writeln!(out, "{WORKER_HEADER}");
    for w in &task.workers {
        let mut last_exit = w.last_exit.as_ref().map_or_else(|| "-".to_owned(), |e| e.reason.clone());
        if let Some(uid) = w.uid {
            last_exit = format!("{last_exit}  (uid {uid})");
        }
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:<32} {:>10} {:<19} {:>8} {:>10} {:>4} {:<12} {:>4} {:<12} {:>8} {}",
            "Worker",
            w.pid,
            w.title,
            mib(w.rss_bytes),
            start_text(w.started_at),
            now.saturating_sub(w.started_at),
            w.executions,
            w.slot,
            w.state,
            w.generation,
            &w.plugin_sha256[..w.plugin_sha256.len().min(12)],
            w.restarts,
            last_exit
        );
    }
    for b in &task.backoff {
        let last = b.last_exit.as_ref().map_or("-", |e| e.reason.as_str());
        let _ = writeln!(
            out,
            "Slot {:>4}: backoff after {} crashes, next attempt in {} ms (last exit: {last})",
            b.slot, b.crashes, b.next_attempt_in_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(slot: u32, state: WorkerState, last_crash: Option<bool>) -> WorkerStatus {
        WorkerStatus {
            slot,
            pid: 100 + slot as i32,
            title: String::new(),
            state,
            executions: 0,
            generation: 1,
            plugin_sha256: String::new(),
            rss_bytes: None,
            started_at: 0,
            restarts: 0,
            uid: None,
            last_exit: last_crash.map(|crash| ExitStatus {
                pid: 1,
                code: Some(i32::from(crash)),
                signal: None,
                reason: String::new(),
                crash,
                at: 0,
            }),
        }
    }

    fn snapshot(state: HostState, wanted: u32, workers: Vec<WorkerStatus>) -> Snapshot {
        Snapshot {
            name: "h".into(),
            state,
            master: MasterStatus {
                pid: 1,
                title: String::new(),
                rss_bytes: None,
                started_at: 0,
                uptime_s: 0,
                stop_timeout_ms: 0,
                version: String::new(),
            },
            generation: 1,
            written_at_mono_ns: 0,
            written_at: 0,
            last_restart: None,
            last_scale: None,
            last_upgrade: None,
            tasks: vec![TaskStatus {
                name: "t".into(),
                plugin: String::new(),
                plugin_sha256: String::new(),
                workers_wanted: wanted,
                executions_total: 0,
                workers,
                backoff: Vec::new(),
                watch: None,
                spawn_latency: None,
            }],
        }
    }

    #[test]
    fn a_host_is_healthy_when_running_with_every_wanted_slot_served() {
        use HostState::{Running, Starting};
        use WorkerState::{Busy, Idle, Initializing, Loading, Retiring, Stopped};
        let cases: Vec<(&str, Snapshot, bool)> = vec![
            ("all idle", snapshot(Running, 2, vec![worker(0, Idle, None), worker(1, Busy, None)]), true),
            ("retiring serves", snapshot(Running, 1, vec![worker(0, Retiring, None)]), true),
            ("a slot is empty", snapshot(Running, 2, vec![worker(0, Idle, None)]), false),
            ("a first worker in init", snapshot(Running, 1, vec![worker(0, Initializing, None)]), false),
            ("the replacement of a retired worker", snapshot(Running, 1, vec![worker(0, Loading, Some(false))]), true),
            (
                "the replacement of a crashed worker",
                snapshot(Running, 1, vec![worker(0, Initializing, Some(true))]),
                false,
            ),
            ("a stopped process", snapshot(Running, 1, vec![worker(0, Stopped, None)]), false),
            ("a stopping worker", snapshot(Running, 1, vec![worker(0, WorkerState::Stopping, None)]), false),
            ("starting", snapshot(Starting, 1, vec![worker(0, Idle, None)]), false),
            ("stopping", snapshot(HostState::Stopping, 1, vec![worker(0, Idle, None)]), false),
            (
                "a worker above the wanted count does not fill a slot",
                snapshot(Running, 1, vec![worker(1, Idle, None)]),
                false,
            ),
        ];
        for (name, snapshot, healthy) in cases {
            assert_eq!(snapshot.healthy(), healthy, "{name}");
        }
    }

    #[test]
    fn states_keep_their_json_names() {
        assert_eq!(serde_json::to_string(&WorkerState::Initializing).unwrap(), "\"initializing\"");
        assert_eq!(serde_json::to_string(&HostState::Stopping).unwrap(), "\"stopping\"");
        for state in [WorkerState::Loading, WorkerState::Busy, WorkerState::Stopped] {
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{state}\""));
        }
    }
}
