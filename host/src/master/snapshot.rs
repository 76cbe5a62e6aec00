//! The master's reports: `status.json` and `metrics.prom` written atomically, the one-line summary for systemd,
//! and the snapshot they are built from.

use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::warn;

use super::core::{HostPhase, Master};
use super::state::{Task, Worker};
use crate::rundir;
use crate::status::{BackoffStatus, HostState, MasterStatus, Snapshot, TaskStatus, WorkerState, WorkerStatus};
use crate::sysinfo::{self, Mono};

/// The signal that tells a `pmhost status` its snapshot is written. Its default action is to be ignored, so it
/// harms no process that merely sent SIGUSR1 by hand.
pub const SNAPSHOT_WRITTEN: Signal = Signal::SIGURG;

/// A status write driven by changes alone waits this many times as long as the previous write took, counted from
/// that write's start: writes then take at most 1/20 of the master's time (see [`Master::publish_status`]).
const PUBLISH_COST_SHARE: u32 = 20;

/// A status write for workers' changes alone (spawns, exits, readiness) waits at least this long after the
/// previous write's start (see [`Master::publish_status`]).
const WORKER_CHANGES_PACE: Duration = Duration::from_millis(100);

impl Master {
    /// USR1: write a fresh snapshot, then tell the sender.
    pub(super) fn handle_snapshot_request(&mut self, sender: Pid) {
        self.snapshot_wanted = true;
        if sender.as_raw() > 0 && !self.snapshot_acks.contains(&sender) {
            self.snapshot_acks.push(sender);
        }
    }

    /// Writes `status.json` if anything changed or a snapshot was asked for (then with fresh memory figures).
    ///
    /// A snapshot is a copy of every worker, so writing one per worker event would make each spawn and exit cost
    /// O(workers) (about 300 KB of JSON at 1024 workers). Changes alone are therefore written at most once per
    /// [`PUBLISH_COST_SHARE`] times the cost of the previous write: an isolated change is written at once, and
    /// status writes never take more than about 5 % of the master's time. A snapshot someone asked for
    /// (`pmhost status`) is never held back.
    ///
    /// Workers' changes alone wait at least [`WORKER_CHANGES_PACE`] as well: a churn of thousands of workers a
    /// second is written ten times a second. The cost share alone let a churn of one-call workers (2 slots,
    /// `--execute-times 1 --execute-usleep 0`) write ~150 times a second, each write a new file renamed over the
    /// old: on a disk file system (ext4 here) that was ~6 µs of the master's CPU per worker, besides the
    /// journal's work. A change a command waits for ([`Master::host_changed`]: a restart's, a scale's or an
    /// upgrade's record, a rollout's progress, a stop) keeps the cost share alone, and so do workers' changes
    /// while a `pmhost scale` waits for them (`scale_waited`, until the status shows its tasks settled or its
    /// request expires): held to the pace, every scale took 100 ms more.
    pub(super) fn publish_status(&mut self) {
        self.publish(false);
    }

    /// Writes `status.json` now if anything changed, without waiting for the pace of change writes (the outcome of
    /// a start, which whoever waits for the start may read at once).
    pub(super) fn publish_status_now(&mut self) {
        self.publish(true);
    }

    /// When the changes held back since the last write are due (see [`Master::publish_status`]); `None` with no
    /// change, or none written yet (then at once).
    pub(super) fn status_due(&self) -> Option<Mono> {
        if !self.dirty {
            return None;
        }
        let (began, took) = self.last_publish?;
        let pace = took.saturating_mul(PUBLISH_COST_SHARE);
        let waited_for = self.dirty_host || self.scale_waited.is_some();
        Some(began + if waited_for { pace } else { pace.max(WORKER_CHANGES_PACE) })
    }

    /// Marks a change a command may be waiting for (see [`Master::publish_status`]); workers' own changes set
    /// `dirty` alone.
    pub(super) fn host_changed(&mut self) {
        self.dirty = true;
        self.dirty_host = true;
    }

    fn publish(&mut self, force: bool) {
        if !self.dirty && !self.snapshot_wanted {
            return;
        }
        let began = Mono::now();
        if !force && !self.snapshot_wanted && self.status_due().is_some_and(|at| at > began) {
            return;
        }
        if self.snapshot_wanted {
            // Memory needs a look at each worker; whether it is stopped comes from the kernel's notifications
            // (see `reap_workers`), not from `/proc`.
            for worker in self.workers.values_mut() {
                if worker.statm.is_none() {
                    // Held from now on (one descriptor per worker); without one (out of descriptors) it is read
                    // by path each time.
                    worker.statm = std::fs::File::open(format!("/proc/{}/statm", worker.pid)).ok();
                }
                worker.rss = match &worker.statm {
                    Some(statm) => sysinfo::rss_bytes_of(statm),
                    None => sysinfo::rss_bytes(worker.pid.as_raw()),
                };
            }
        }
        let snapshot = self.snapshot();
        if let Some((task, until)) = &self.scale_waited
            && (began >= *until || snapshot.scale_settled(task.as_deref(), None))
        {
            self.scale_waited = None;
        }
        let exits: Vec<(String, Vec<(&'static str, u64)>)> = self
            .tasks
            .iter()
            .map(|t| (t.settings.name.clone(), t.exits.iter().map(|(k, v)| (*k, *v)).collect()))
            .collect();
        let metrics = crate::metrics::render(&snapshot, &exits);
        let summary = self.summary();
        if let Some(notifier) = &mut self.notifier {
            notifier.status(&summary);
        }
        let status = self.status_dir();
        // Streamed into the file: at 1024 workers the text is ~0.5 MiB, which the master's heap would otherwise
        // keep at its high-water mark (its PSS).
        let written = status
            .write_atomic_with(rundir::STATUS_FILE, |file| {
                serde_json::to_writer_pretty(file, &snapshot).map_err(std::io::Error::other)
            })
            .and_then(|()| status.write_atomic(rundir::METRICS_FILE, metrics.as_bytes()));
        match written {
            Ok(()) => {
                self.status_write_failed = false;
                // The senders wait on this signal instead of watching the directory (an inotify watch costs its
                // owner milliseconds of kernel cleanup when it is closed).
                for sender in self.snapshot_acks.drain(..) {
                    let _ = kill(sender, SNAPSHOT_WRITTEN);
                }
            }
            Err(e) if !self.status_write_failed => {
                warn!("{e}: status stays stale until the directory is writable again");
                self.status_write_failed = true;
            }
            Err(_) => {}
        }
        drop(snapshot);
        drop(metrics);
        super::footprint::trim_heap_after_snapshot(self.workers.len());
        self.dirty = false;
        self.dirty_host = false;
        self.snapshot_wanted = false;
        self.last_publish = Some((began, Mono::now().since(began)));
    }

    /// The status directory, re-created first if someone removed it (a tmp cleaner, a person): the master then
    /// writes its status and re-stages the builds it runs from the descriptors it holds, so `status`, `restart`
    /// and `scale` keep working. Workers never need it: they load their build through a held descriptor.
    pub(super) fn status_dir(&mut self) -> &crate::rundir::Dir {
        if self.dirs.status().is_removed() {
            match self.recreate_status_dir() {
                Ok(restaged) => warn!(
                    dir = %self.dirs.status().path().display(),
                    builds = restaged,
                    "the status directory was removed: re-created it and re-staged the builds in use"
                ),
                Err(e) => warn!("the status directory was removed and cannot be re-created: {e}"),
            }
        }
        self.dirs.status()
    }

    fn recreate_status_dir(&mut self) -> Result<usize, crate::rundir::RunDirError> {
        self.dirs.recreate_status()?;
        self.plugins = self.dirs.plugins(true)?.expect("created when missing");
        let builds = self.builds_in_use();
        for build in &builds {
            if let Err(e) = build.restage(&self.plugins) {
                warn!(build = build.short_sha(), "cannot re-stage: {e}");
            }
        }
        Ok(builds.len())
    }

    /// One line for systemd's STATUS=: ready workers, wanted workers, generation.
    pub(super) fn summary(&self) -> String {
        let ready = self.workers.values().filter(|w| w.life.serving()).count();
        let rolling = if self.rollout.is_some() { ", restarting" } else { "" };
        format!("{ready}/{} workers ready, generation {}{rolling}", self.wanted_workers(), self.generation)
    }

    /// The current state as a status snapshot.
    pub(super) fn snapshot(&self) -> Snapshot {
        let now = SystemTime::now();
        let state = match (&self.phase, &self.startup) {
            (HostPhase::Stopping { .. }, _) => HostState::Stopping,
            (HostPhase::Running, Some(_)) => HostState::Starting,
            (HostPhase::Running, None) => HostState::Running,
        };
        let tasks = self
            .tasks
            .iter()
            .enumerate()
            .filter(|(index, task)| !task.retired || self.workers.values().any(|w| w.task == *index))
            .map(|(index, task)| self.task_status(index, task))
            .collect();
        Snapshot {
            name: self.host.name.clone(),
            state,
            master: MasterStatus {
                pid: std::process::id() as i32,
                title: self.host.master_title(),
                rss_bytes: sysinfo::rss_bytes(std::process::id() as i32),
                started_at: sysinfo::unix_seconds(self.started_wall),
                uptime_s: now.duration_since(self.started_wall).unwrap_or(Duration::ZERO).as_secs(),
                stop_timeout_ms: self.host.stop_timeout.as_millis() as u64,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            generation: self.generation,
            written_at_mono_ns: sysinfo::monotonic_ns(),
            written_at: sysinfo::unix_seconds(now),
            last_restart: self.last_restart.clone(),
            last_scale: self.last_scale.clone(),
            last_upgrade: self.last_upgrade.clone(),
            tasks,
        }
    }

    /// One task's part of the snapshot: its workers, and its slots waiting out a backoff.
    fn task_status(&self, index: usize, task: &Task) -> TaskStatus {
        let workers: Vec<WorkerStatus> =
            self.workers.values().filter(|w| w.task == index).map(|w| self.worker_status(w, task)).collect();
        let live: u64 = workers.iter().map(|w| w.executions).sum();
        let now = Mono::now();
        let backoff = task
            .slots
            .iter()
            .enumerate()
            .filter(|(slot, _)| (*slot as u32) < task.settings.workers && !task.retired)
            .filter(|(_, state)| state.pids.is_empty())
            .filter_map(|(slot, state)| {
                let at = state.respawn_at.filter(|at| *at > now)?;
                Some(BackoffStatus {
                    slot: slot as u32,
                    crashes: state.crashes,
                    next_attempt_in_ms: at.since(now).as_millis() as u64,
                    last_exit: state.last_exit.clone(),
                })
            })
            .collect();
        TaskStatus {
            name: task.settings.name.clone(),
            plugin: task.build.plugin.original.display().to_string(),
            plugin_sha256: task.build.plugin.sha256.clone(),
            workers_wanted: if task.retired { 0 } else { task.settings.workers },
            executions_total: task.executions_done + live,
            workers,
            backoff,
            watch: self.watch_status(&task.settings.name),
            spawn_latency: task.spawn_latency.summary(
                self.workers
                    .values()
                    .filter(|w| w.task == index)
                    .filter_map(|w| self.board.cell(w.cell).spawn_latency()),
            ),
        }
    }

    fn worker_status(&self, w: &Worker, task: &Task) -> WorkerStatus {
        let cell = self.board.cell(w.cell);
        let slot = task.slots.get(w.slot as usize);
        WorkerStatus {
            slot: w.slot,
            pid: w.pid.as_raw(),
            title: self.host.worker_title(&task.settings.name),
            state: worker_state(w, cell),
            executions: cell.executions(),
            generation: w.generation,
            plugin_sha256: w.plugin_sha256.clone(),
            rss_bytes: w.rss,
            started_at: sysinfo::unix_seconds(w.started_wall),
            restarts: slot.map_or(0, |s| s.spawned.saturating_sub(1)),
            last_exit: slot.and_then(|s| s.last_exit.clone()),
            // Only a task with its own `user` or `group` runs workers as someone else: no look at /proc otherwise.
            uid: (task.build.process.user.is_some() || task.build.process.group.is_some())
                .then(|| sysinfo::process_uid(w.pid.as_raw()))
                .flatten()
                .filter(|uid| *uid != nix::unistd::Uid::effective().as_raw()),
        }
    }
}

fn worker_state(worker: &Worker, cell: &crate::scoreboard::Cell) -> WorkerState {
    use crate::scoreboard::Phase;
    if worker.stopped_since.is_some() {
        // Whatever the scoreboard says, a stopped process serves nothing until it is continued.
        return WorkerState::Stopped;
    }
    if worker.life.stop_sent() {
        return WorkerState::Stopping;
    }
    match cell.phase() {
        Phase::Loading => WorkerState::Loading,
        Phase::Initializing => WorkerState::Initializing,
        Phase::Stopping => WorkerState::Stopping,
        Phase::Retiring => WorkerState::Retiring,
        Phase::Running if cell.busy() => WorkerState::Busy,
        Phase::Running => WorkerState::Idle,
    }
}
