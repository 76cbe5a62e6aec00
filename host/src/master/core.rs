//! The master's state and its loop. `run()` is the algorithm; the `handle_*` methods are the reactions.
//!
//! After every wake-up the master works in one fixed order:
//!
//! 1. read worker reports (a zygote's worker says its pid, ready, failed to start),
//! 2. note stopped and continued workers, then reap exited ones (every one, until `waitpid` has nothing left),
//! 3. handle signals in arrival order (stop, stop now, restart, snapshot, scale),
//! 4. handle deadlines (stop grace over, `init` too slow, a zygote that does not answer, backoff over, check
//!    tick): per-worker and per-slot ones come off a heap (`deadlines`), so neither this step nor the choice of
//!    the next wake-up looks at every worker,
//! 5. handle watched plugin files (read their directories' events, look at a file whose debounce is over and
//!    queue the rollout of a new build, see `watch`), before the rollout step so it begins in this wake-up,
//! 6. manage workers (fill the empty slots an event touched whose backoff is over; after a change of the wanted
//!    counts, every slot, and retire workers above them), and move the rollout on,
//! 7. read worker output (a bounded amount per stream, see `capture`), so a flood never delays the steps above,
//! 8. publish status (only if something changed or a snapshot was asked for; changes alone are paced, see
//!    `snapshot`).
//!
//! Reports come before reaping so that a worker that reported why it failed and then exited is recorded with
//! its own message, not just its exit code.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::SystemTime;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use super::deadlines::Due;
use super::events::Events;
use super::signals::{self, Action};
use super::startup::{StartFailure, Startup, batch_outcome};
use super::state::{Build, Task, Worker};
use crate::pidfile::PidFile;
use crate::plugin::StagedPlugin;
use crate::ready::ReadyNotifier;
use crate::report::{Report, ReportReader};
use crate::rundir::{Dir, HostDirs};
use crate::scoreboard::Scoreboard;
use crate::settings::{HostSettings, TaskSettings};
use crate::status::ExitStatus;
use crate::sysinfo::Mono;

/// The master could not run or its start failed.
#[derive(Debug, Error)]
pub enum MasterError {
    /// A worker of a fresh start failed (the first failure is the reason).
    #[error(transparent)]
    StartFailed(StartFailure),
    /// The event loop itself failed.
    #[error("master event loop failed")]
    EventLoop(#[source] std::io::Error),
    /// Batch mode ran every worker to its end, but some of them crashed.
    #[error("{0}")]
    BatchFailed(String),
}

/// Raises the master's open-file limit to its hard limit: every worker costs it two pipe ends (its captured
/// output), so 1024 workers need more than the usual soft limit of 1024. Returns the limit to give workers back.
fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    (soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok()).then_some(soft)
}

/// What the master is doing as a whole.
#[derive(Debug)]
pub(super) enum HostPhase {
    Running,
    /// Each worker asked to stop carries its own kill deadline (`Worker::kill_at`).
    Stopping {
        /// What `run()` returns once every worker is gone.
        outcome: Result<(), StartFailure>,
    },
}

/// Everything the master is built from (prepared by the CLI).
pub struct MasterParts {
    /// Host settings.
    pub host: HostSettings,
    /// Tasks with their staged plugins.
    pub tasks: Vec<(TaskSettings, StagedPlugin)>,
    /// The locked pid file.
    pub pid_file: PidFile,
    /// The host's run directories, held open.
    pub dirs: HostDirs,
    /// `{status_dir}/plugins`, where builds are staged.
    pub plugins: Dir,
    /// Readiness pipe of a daemonized start.
    pub ready: Option<ReadyNotifier>,
    /// Level the plugins forward their logs at (0 off .. 5 trace).
    pub plugin_log_level: u8,
    /// The config file, re-read on every restart.
    pub config_path: Option<std::path::PathBuf>,
    /// Task flags of the start, re-applied over the re-read file.
    pub overrides: crate::settings::TaskOverrides,
    /// systemd's notify socket, when pmhost runs as a `Type=notify` service.
    pub notifier: Option<crate::notify::Notifier>,
    /// The log settings the master runs with (handed over by `pmhost upgrade`).
    pub log: crate::logging::LogSettings,
}

/// How the master ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Some workers had to be killed (stop timeout, immediate stop) rather than ending on their own.
    pub forced: bool,
}

/// The master.
pub struct Master {
    pub(super) host: HostSettings,
    pub(super) tasks: Vec<Task>,
    pub(super) workers: BTreeMap<Pid, Worker>,
    pub(super) board: Scoreboard,
    pub(super) events: Events,
    pub(super) reports: ReportReader,
    pub(super) report_tx: OwnedFd,
    pub(super) pid_file: Option<PidFile>,
    pub(super) dirs: HostDirs,
    pub(super) plugins: Dir,
    pub(super) ready: Option<ReadyNotifier>,
    pub(super) phase: HostPhase,
    pub(super) startup: Option<Startup>,
    /// While set and not passed, the master's wait leaves the report pipe out (see `warm`, "Reports ride on
    /// other wake-ups").
    pub(super) reports_held_until: Option<Mono>,
    /// The newest generation every slot was moved to (1 after start).
    pub(super) generation: u32,
    /// The number the next rollout gets.
    pub(super) next_generation: u32,
    pub(super) rollout: Option<super::progress::Rollout>,
    pub(super) restart_queue: std::collections::VecDeque<super::rollout::RestartOrder>,
    pub(super) last_restart: Option<crate::status::RestartStatus>,
    pub(super) last_scale: Option<crate::status::ScaleStatus>,
    /// A `pmhost scale` waits for its task (`None`: every task) to settle, until its request expires: workers'
    /// changes are written at the pace of the changes a command waits for meanwhile (see `publish_status`).
    pub(super) scale_waited: Option<(Option<String>, Mono)>,
    pub(super) started_wall: SystemTime,
    pub(super) next_tick: Option<Mono>,
    /// Something the status file shows changed since it was last written.
    pub(super) dirty: bool,
    /// Among those changes, one a command may be waiting for (see [`Master::host_changed`]).
    pub(super) dirty_host: bool,
    /// When the last status write began and how long it took: the pace of the next (see `publish_status`).
    pub(super) last_publish: Option<(Mono, std::time::Duration)>,
    /// A look for orphans is due (see `orphans`), and when the last one was.
    pub(super) orphan_scan_at: Option<Mono>,
    pub(super) last_orphan_scan: Option<Mono>,
    pub(super) snapshot_wanted: bool,
    /// Processes that asked for a snapshot (SIGUSR1) and get SIGURG once it is written.
    pub(super) snapshot_acks: Vec<Pid>,
    pub(super) plugin_log_level: u8,
    pub(super) status_write_failed: bool,
    pub(super) config_path: Option<std::path::PathBuf>,
    pub(super) overrides: crate::settings::TaskOverrides,
    /// Next look at the scoreboard for hung work and memory (only when a task sets such a limit).
    pub(super) next_supervision: Option<Mono>,
    /// Net TTIN/TTOU of the current wake-up.
    pub(super) scale_signals: i32,
    pub(super) notifier: Option<crate::notify::Notifier>,
    pub(super) next_watchdog: Option<Mono>,
    /// Workers were killed during the stop.
    pub(super) forced_stop: bool,
    /// Whoever asked for the stop (`pmhost stop`), told the outcome at exit.
    pub(super) stop_requesters: Vec<OwnedFd>,
    /// Workers' stdout and stderr, logged line by line.
    pub(super) captures: super::capture::Captures,
    /// The zygotes of the builds being run (see `warm`).
    pub(super) zygotes: Vec<super::warm::Zygote>,
    /// Workers asked of a zygote that have not reported their pid yet, by scoreboard cell (see `warm`).
    pub(super) spawning: std::collections::HashMap<crate::scoreboard::CellIndex, super::warm::PendingSpawn>,
    /// Per-worker and per-slot deadlines (see `deadlines`).
    pub(super) deadlines: super::deadlines::Deadlines,
    /// Slots an event touched, looked at by the next `manage_workers`.
    pub(super) recheck: Vec<(usize, u32)>,
    /// The wanted counts changed: the next `manage_workers` looks at every slot and worker.
    pub(super) recheck_all: bool,
    /// The open-file limit pmhost was started with, when the master raised its own (see [`raise_nofile`]).
    pub(super) inherited_nofile: Option<u64>,
    /// The log settings (handed over by an upgrade).
    pub(super) log: crate::logging::LogSettings,
    /// The binary this master runs, as a path: what a bare upgrade signal re-executes.
    pub(super) binary: std::path::PathBuf,
    /// An upgrade asked for in this wake-up, done once the wake-up's work is done.
    pub(super) upgrade_wanted: Option<super::handover::UpgradeOrder>,
    pub(super) last_upgrade: Option<crate::status::UpgradeStatus>,
    /// The watches on watched tasks' plugin files (`None` while no task is watched).
    pub(super) plugin_watch: Option<super::plugin_dirs::PluginWatch>,
}

/// The event loop's descriptors and shared memory: signals and wake-ups, the report pipe, the scoreboard, the
/// output capture set.
type LoopResources = (Events, crate::report::ReportReader, std::os::fd::OwnedFd, Scoreboard, super::capture::Captures);

fn loop_resources() -> std::io::Result<LoopResources> {
    let events = Events::new(&signals::handled())?;
    let (reports, report_tx) = crate::report::channel()?;
    let board = Scoreboard::new().map_err(std::io::Error::other)?;
    let captures = super::capture::Captures::new()?;
    Ok((events, reports, report_tx, board, captures))
}

impl Master {
    /// Builds the master. The caller has blocked the handled signals (see [`signals::handled`]).
    /// A failure is also sent through the readiness pipe: a daemon's stderr is /dev/null, so the waiting
    /// `pmhost start -d` is the only one who can show it.
    pub fn new(parts: MasterParts) -> std::io::Result<Master> {
        let (events, reports, report_tx, board, captures) = match loop_resources() {
            Ok(resources) => resources,
            Err(e) => {
                if let Some(ready) = parts.ready {
                    ready.send(Err(&format!("cannot set up the master's event loop: {e}")));
                }
                return Err(e);
            }
        };
        let started = Mono::now();
        let tasks = parts
            .tasks
            .into_iter()
            .map(|(settings, plugin)| Task {
                build: Build::new(1, plugin, &settings),
                settings,
                slots: Vec::new(),
                executions_done: 0,
                exits: BTreeMap::new(),
                spawn_latency: Default::default(),
                retired: false,
            })
            .collect();
        Ok(Master {
            next_tick: parts.host.check_interval.map(|interval| started + interval),
            host: parts.host,
            tasks,
            workers: BTreeMap::new(),
            board,
            events,
            reports,
            report_tx,
            pid_file: Some(parts.pid_file),
            dirs: parts.dirs,
            plugins: parts.plugins,
            ready: parts.ready,
            phase: HostPhase::Running,
            startup: Some(Startup::default()),
            reports_held_until: None,
            generation: 1,
            next_generation: 2,
            rollout: None,
            restart_queue: std::collections::VecDeque::new(),
            last_restart: None,
            last_scale: None,
            scale_waited: None,
            started_wall: SystemTime::now(),
            dirty: true,
            dirty_host: true,
            last_publish: None,
            orphan_scan_at: None,
            last_orphan_scan: None,
            snapshot_wanted: true,
            snapshot_acks: Vec::new(),
            plugin_log_level: parts.plugin_log_level,
            status_write_failed: false,
            config_path: parts.config_path,
            overrides: parts.overrides,
            next_supervision: None,
            scale_signals: 0,
            next_watchdog: parts.notifier.as_ref().and_then(|n| n.watchdog_interval()).map(|i| Mono::now() + i),
            notifier: parts.notifier,
            forced_stop: false,
            stop_requesters: Vec::new(),
            captures,
            inherited_nofile: raise_nofile(),
            zygotes: Vec::new(),
            spawning: Default::default(),
            deadlines: Default::default(),
            recheck: Vec::new(),
            recheck_all: true,
            log: parts.log,
            binary: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
            upgrade_wanted: None,
            last_upgrade: None,
            plugin_watch: None,
        })
    }

    /// Runs until the host is stopped (Ok) or its start failed (Err).
    pub fn run(mut self) -> Result<Stopped, MasterError> {
        info!(pid = std::process::id(), workers = self.wanted_workers(), "master started");
        self.adopt_orphans();
        let unwatched = self.sync_watches(false);
        if let (Some(startup), Some(reason)) = (&mut self.startup, unwatched) {
            // Asked for and impossible: the start fails before any worker runs, rather than run unwatched.
            startup.fail(StartFailure::Unwatched(reason));
            self.resolve_startup();
        }
        self.schedule_supervision(Mono::now());
        self.manage_workers();
        self.resolve_startup();
        loop {
            self.publish_status();
            if let Some(outcome) = self.finished() {
                return self.exit(outcome);
            }
            // Before the deadline: a hold that has passed ends here rather than arm the timer for the past.
            let watch_reports = self.reports_watched();
            let deadline = self.next_deadline();
            let plugin_files = self.plugin_watch.as_ref().map(|watch| watch.as_fd());
            let woken = match self.events.arm(deadline).and_then(|()| {
                let reports = watch_reports.then_some(&self.reports);
                self.events.wait(reports, self.captures.as_fd(), plugin_files)
            }) {
                Ok(woken) => woken,
                Err(e) => {
                    error!(target: crate::logging::FATAL_TARGET, "event loop failed: {e}; killing workers");
                    if let Some(ready) = self.ready.take() {
                        ready.send(Err(&format!("the master's event loop failed: {e}")));
                    }
                    self.kill_all();
                    return Err(MasterError::EventLoop(e));
                }
            };
            self.read_reports();
            self.reap_workers();
            for (signal, sender) in woken.signals {
                self.handle_signal(signal, sender);
            }
            for sender in woken.stop_requests {
                self.handle_stop_request(sender);
            }
            self.apply_scale_signals();
            self.handle_deadlines();
            self.handle_plugin_changes(woken.plugin_files);
            self.manage_workers();
            self.advance_rollout();
            self.resolve_startup();
            // Last, and bounded: a worker printing as fast as it can delays no respawn or stop.
            if woken.output {
                self.captures.read_ready();
            }
            if let Some(order) = self.upgrade_wanted.take() {
                // Returns only when the upgrade was refused (then recorded in the status).
                self.upgrade(order);
            }
        }
    }

    fn handle_signal(&mut self, signal: Signal, sender: Pid) {
        let Some(action) = signals::action_of(signal) else { return };
        match action {
            Action::Reap => {} // done on every wake-up
            Action::Stop => self.handle_stop(signal),
            Action::StopNow => self.handle_stop_now(signal),
            Action::Restart => self.handle_restart(),
            Action::Snapshot => self.handle_snapshot_request(sender),
            Action::Requests => self.handle_requests(),
            Action::ScaleUp => self.scale_signals += 1,
            Action::ScaleDown => self.scale_signals -= 1,
            Action::Upgrade => self.upgrade_wanted = Some(super::handover::UpgradeOrder::default()),
        }
    }

    /// HUP: rolling restart of every task, re-reading its plugin file.
    fn handle_restart(&mut self) {
        info!("SIGHUP: rolling restart requested");
        self.restart_queue.push_back(super::rollout::RestartOrder::default());
    }

    fn handle_deadlines(&mut self) {
        let now = Mono::now();
        for (at, due) in self.take_due(now) {
            match due {
                Due::Init(pid) => {
                    let Some(worker) = self.workers.get(&pid) else { continue };
                    let timeout = at.since(worker.started);
                    let reason = format!("plugin init did not finish within init_timeout ({} ms)", timeout.as_millis());
                    warn!(pid = pid.as_raw(), "{reason}: killing the worker");
                    self.kill_worker(pid, reason);
                }
                Due::Kill(pid) => {
                    warn!(
                        pid = pid.as_raw(),
                        slot = self.workers.get(&pid).map(|w| w.slot),
                        timeout_ms = self.host.stop_timeout.as_millis() as u64,
                        "stop timeout reached: killing a worker that did not stop"
                    );
                    self.discard_worker(pid);
                }
                Due::Respawn(task, slot) => self.recheck_slot(task, slot),
                Due::Answer(cell) => self.on_answer_overdue(cell),
            }
        }
        if self.next_supervision.is_some_and(|at| now >= at) {
            self.supervise(now);
        }
        if self.orphan_scan_at.is_some_and(|at| now >= at) {
            self.end_orphans(false);
        }
        if self.next_watchdog.is_some_and(|at| now >= at)
            && let Some(notifier) = &self.notifier
        {
            notifier.watchdog();
            self.next_watchdog = notifier.watchdog_interval().map(|interval| now + interval);
        }
        if let (Some(tick), Some(interval)) = (self.next_tick, self.host.check_interval)
            && now >= tick
        {
            self.next_tick = Some(now + interval);
            self.snapshot_wanted = true;
            // A full look at every slot once per tick (not per event): a safety net under the per-slot checks.
            self.recheck_all = true;
            self.retry_watches();
        }
    }

    /// The earliest moment the master must wake up without an event: the first per-worker deadline (from the
    /// heap, see `deadlines`) or one of the host's own.
    fn next_deadline(&mut self) -> Option<Mono> {
        let tick = if matches!(self.phase, HostPhase::Running) { self.next_tick } else { None };
        let host = [
            tick,
            self.next_supervision,
            self.next_watchdog,
            self.status_due(),
            self.orphan_scan_at,
            self.watch_deadline(),
            self.reports_held_until,
        ];
        host.into_iter().flatten().chain(self.next_worker_deadline()).min()
    }

    /// Some(outcome) once the master has nothing left to supervise.
    fn finished(&mut self) -> Option<Result<(), MasterError>> {
        if !self.workers.is_empty() || self.spawns_pending() {
            return None;
        }
        match &mut self.phase {
            HostPhase::Stopping { outcome, .. } => {
                Some(std::mem::replace(outcome, Ok(())).map_err(MasterError::StartFailed))
            }
            HostPhase::Running if self.host.check_interval.is_none() && self.startup.is_none() => {
                let ends: Vec<(&str, u32, Option<&ExitStatus>)> = self
                    .tasks
                    .iter()
                    .flat_map(|task| {
                        let slots = task.slots.iter().enumerate().filter(|(_, slot)| slot.spawned > 0);
                        slots.map(|(index, slot)| (task.settings.name.as_str(), index as u32, slot.last_exit.as_ref()))
                    })
                    .collect();
                match batch_outcome(&ends) {
                    Ok(()) => {
                        info!("batch mode: every worker is done");
                        Some(Ok(()))
                    }
                    Err(reason) => {
                        error!(target: crate::logging::FATAL_TARGET, "{reason}");
                        Some(Err(MasterError::BatchFailed(reason)))
                    }
                }
            }
            HostPhase::Running => None,
        }
    }

    /// Records worker reports: readiness and start failures.
    pub(super) fn read_reports(&mut self) {
        for report in self.reports.drain() {
            match report {
                Report::Spawned { pid, cell } => {
                    self.on_warm_spawned(Pid::from_raw(pid), crate::scoreboard::CellIndex(cell as usize))
                }
                Report::SpawnFailed { cell } => self.on_warm_spawn_failed(crate::scoreboard::CellIndex(cell as usize)),
                Report::Ready { pid } => {
                    let pid = Pid::from_raw(pid);
                    if let Some(worker) = self.workers.get_mut(&pid) {
                        worker.ready_at = Some(Mono::now());
                        worker.life.ready();
                        self.dirty = true;
                    }
                    self.on_rollout_worker_ready(pid);
                    if let Some(startup) = &mut self.startup
                        && startup.pending.remove(&pid)
                    {
                        startup.ready += 1;
                    }
                }
                Report::Failed { pid, message } => {
                    let pid = Pid::from_raw(pid);
                    if let Some(worker) = self.workers.get_mut(&pid) {
                        worker.record_fault(message.clone());
                    }
                    if let Some(startup) = &mut self.startup
                        && startup.pending.remove(&pid)
                    {
                        startup.fail(StartFailure::Reported(message));
                    }
                }
            }
        }
    }

    /// Decides the fresh start: it succeeds once every first-wave worker is ready, and fails as soon as one of
    /// them fails to load or `init` (with that worker's own message), so a start reports what a user must fix
    /// instead of leaving a partly working host behind.
    fn resolve_startup(&mut self) {
        let Some(startup) = &self.startup else { return };
        if matches!(self.phase, HostPhase::Stopping { .. }) {
            // Asked to stop before the start was decided: the stop, not the workers' end, is the outcome.
            self.startup = None;
            if let Some(ready) = self.ready.take() {
                ready.send(Err(&StartFailure::Stopped.to_string()));
            }
            return;
        }
        let Some(verdict) = startup.verdict() else { return };
        if let Ok(ready) = verdict {
            self.startup = None;
            info!(ready, "start complete: workers ready");
            // Publish first: whoever was waiting for the start may read the status right away.
            self.dirty = true;
            self.publish_status_now();
            let summary = self.summary();
            if let Some(notifier) = &mut self.notifier {
                notifier.ready(&summary);
            }
            if let Some(ready) = self.ready.take() {
                ready.send(Ok(()));
            }
            let released = super::footprint::release_startup_memory();
            debug!(released_kib = released / 1024, "start-up code and free heap pages given back");
            return;
        }
        let startup = self.startup.take().expect("checked above");
        let failure = startup.first_failure.expect("a verdict other than Ok has a failure");
        error!(target: crate::logging::FATAL_TARGET, "start failed: {failure}");
        if let Some(ready) = self.ready.take() {
            ready.send(Err(&failure.to_string()));
        }
        self.phase = HostPhase::Stopping { outcome: Err(failure) };
        self.kill_all();
    }

    pub(super) fn wanted_workers(&self) -> u32 {
        self.tasks.iter().filter(|t| !t.retired).map(|t| t.settings.workers).sum()
    }

    /// Leaves: removes the status directory (status and metrics files, staged builds, requests) and the pid file
    /// (the pid file last: it is the "running" marker).
    fn exit(mut self, outcome: Result<(), MasterError>) -> Result<Stopped, MasterError> {
        self.kill_zygotes();
        let killed = self.end_orphans(true);
        super::orphans::reap_killed(&killed, std::time::Duration::from_secs(1));
        self.dirs.remove_status();
        let stopped = crate::control::Reply::Stopped { forced: self.forced_stop || outcome.is_err() };
        for requester in self.stop_requesters.drain(..) {
            let _ = crate::control::send(requester.as_fd(), crate::control::reply_signal(), stopped.encode());
        }
        if let Some(pid_file) = self.pid_file.take() {
            pid_file.remove();
        }
        match outcome {
            Ok(()) => {
                info!(forced = self.forced_stop, "master stopped");
                Ok(Stopped { forced: self.forced_stop })
            }
            Err(error) => Err(error),
        }
    }
}
