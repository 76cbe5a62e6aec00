//! Restart as a hot swap: roll a new generation out slot by slot, and roll back if the new build fails.
//!
//! For each slot: fork a new-generation worker beside the old one, wait until its `init` succeeded, then stop the
//! old worker gracefully. At most `surge` new workers start at a time, so the host briefly runs up to
//! `workers + surge` processes and some worker is always working. If a new worker fails to load, fails or panics
//! in `init`, or is not ready within the init timeout, the rollout stops: new workers that are not ready yet are
//! killed, slots already moved go back to the old build (fresh workers of the old build replace their new ones),
//! and slots not reached yet keep their old workers, untouched. The common case, a broken build, fails on the
//! first slot, so every old worker keeps its pid.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::children::Spawn;
use super::core::{HostPhase, Master};
use super::progress::{Rollout, Step};
use super::state::{Build, Slot};
use crate::plugin;
use crate::settings::TaskSettings;
use crate::status::RestartStatus;
use crate::sysinfo::{self, Mono};

/// What a restart was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RestartOrder {
    /// The CLI request behind it (`None` for SIGHUP).
    pub request_id: Option<String>,
    /// A new plugin file for the task (one-task hosts, or with `task`).
    pub plugin: Option<PathBuf>,
    /// Only this task.
    pub task: Option<String>,
    /// New workers at a time (default 1).
    pub surge: Option<u32>,
    /// Longest `init` of a new worker (default: the task's init timeout).
    pub init_timeout: Option<Duration>,
    /// The command gave up waiting at this moment: a restart still queued then is dropped, not begun.
    pub expires_at: Option<Mono>,
    /// The watched plugin file whose new build this rolls out (`--watch`, see `watch`).
    pub watched_file: Option<PathBuf>,
}

/// A restart worked out and staged, not applied yet.
struct RolloutPlan {
    /// The tasks of a re-read config file (`None`: the task list stays).
    reload: Option<Vec<TaskSettings>>,
    /// Tasks to roll, by name, with their new builds.
    rolled: Vec<(String, Build)>,
    /// Builds of the tasks the file adds, in its order.
    added: Vec<Build>,
}

impl Master {
    /// Starts the next queued restart when none runs, and moves the running one forward.
    pub(super) fn advance_rollout(&mut self) {
        if matches!(self.phase, HostPhase::Stopping { .. }) {
            if self.rollout.is_some() {
                self.fail_rollout("the host is stopping".to_owned());
            }
            // Answer every waiting restart, so no `pmhost restart` waits for a rollout that will never come.
            while let Some(order) = self.restart_queue.pop_front() {
                self.begin_refused(order, "the host is stopping".to_owned());
            }
            return;
        }
        if self.startup.is_some() {
            return; // restarts wait until the start is decided
        }
        while self.rollout.is_none() {
            let Some(order) = self.restart_queue.pop_front() else { return };
            if order.expires_at.is_some_and(|at| Mono::now() >= at) {
                warn!(request = ?order.request_id, "dropping a queued restart its command gave up on (it timed out)");
                continue;
            }
            self.begin_rollout(order);
        }
        self.fill_rollout();
    }

    /// Takes the next generation number and records the restart as begun.
    fn record_restart_start(&mut self, request_id: Option<String>, watched_file: Option<&std::path::Path>) -> u32 {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.last_restart = Some(RestartStatus {
            generation,
            in_progress: true,
            ok: false,
            error: None,
            started_at: sysinfo::unix_seconds(SystemTime::now()),
            finished_at: None,
            request_id,
            slots_done: 0,
            slots_total: 0,
            watched_file: watched_file.map(|file| file.display().to_string()),
        });
        self.host_changed();
        generation
    }

    /// Records a restart that was refused before it began.
    fn begin_refused(&mut self, order: RestartOrder, reason: String) {
        self.record_restart_start(order.request_id, order.watched_file.as_deref());
        self.refuse_rollout(reason);
    }

    fn begin_rollout(&mut self, order: RestartOrder) {
        let generation = self.record_restart_start(order.request_id.clone(), order.watched_file.as_deref());
        // Everything that can fail happens before anything changes: a refused restart leaves the host as it was.
        let plan = match self.plan_rollout(&order, generation) {
            Ok(plan) => plan,
            Err(reason) => return self.refuse_rollout(reason),
        };
        if let Some(wanted) = plan.reload {
            self.apply_reload(wanted, plan.added);
        }
        let mut new_builds = vec![None; self.tasks.len()];
        for (name, build) in plan.rolled {
            let Some(index) = self.tasks.iter().position(|t| t.settings.name == name) else { continue };
            new_builds[index] = Some(build);
        }
        let workers: Vec<u32> = self.tasks.iter().map(|t| t.settings.workers).collect();
        let rollout = Rollout::new(generation, order.surge.unwrap_or(1), order.init_timeout, new_builds, &workers);
        info!(generation, slots = rollout.total(), "restart: rolling out generation {generation}");
        if let Some(notifier) = &self.notifier {
            notifier.reloading();
        }
        if let Some(record) = &mut self.last_restart {
            record.slots_total = rollout.total() as u32;
        }
        self.rollout = Some(rollout);
    }

    /// Works out a restart without changing anything: re-reads and checks the config file (when the host has one
    /// and no other plugin was named), picks the tasks to roll, and stages every plugin they and any added task
    /// will run.
    fn plan_rollout(&self, order: &RestartOrder, generation: u32) -> Result<RolloutPlan, String> {
        let reload = match (&self.config_path, &order.plugin) {
            (Some(path), None) => {
                let file = crate::config::load(path).map_err(|e| e.to_string())?;
                Some(file.resolve_tasks(&self.overrides))
            }
            _ => None,
        };
        let current: Vec<TaskSettings> = self.tasks.iter().filter(|t| !t.retired).map(|t| t.settings.clone()).collect();
        let wanted = reload.as_ref().unwrap_or(&current);
        let known = |name: &str| self.tasks.iter().any(|t| t.settings.name == name);
        let selected: Vec<&TaskSettings> = match &order.task {
            Some(name) => vec![
                wanted
                    .iter()
                    .find(|t| &t.name == name && known(name))
                    .ok_or_else(|| format!("no task named {name}"))?,
            ],
            // Tasks the file adds start on their own, like at start; the others roll.
            None => wanted.iter().filter(|t| known(&t.name)).collect(),
        };
        if order.plugin.is_some() && selected.len() != 1 {
            return Err("a new plugin file needs --task when the host runs several tasks".to_owned());
        }
        // Tasks that run the same file share one staged copy (the file is copied and hashed once per restart,
        // here in the master's loop: 64 tasks of one plugin would otherwise stall it 64 times as long).
        let staged_by_path = std::cell::RefCell::new(Vec::<(std::path::PathBuf, plugin::StagedPlugin)>::new());
        let stage = |settings: &TaskSettings, path: &std::path::Path| -> Result<Build, String> {
            let known = staged_by_path.borrow().iter().find(|(p, _)| p == path).map(|(_, s)| s.clone());
            let staged = match known {
                Some(staged) => staged,
                None => {
                    let staged = plugin::stage(path, &self.plugins).map_err(|e| e.to_string())?;
                    staged_by_path.borrow_mut().push((path.to_owned(), staged.clone()));
                    staged
                }
            };
            Ok(Build::new(generation, staged, settings))
        };
        let mut rolled = Vec::new();
        for settings in selected {
            let path = order.plugin.as_deref().unwrap_or(&settings.plugin);
            rolled.push((settings.name.clone(), stage(settings, path)?));
        }
        let mut added = Vec::new();
        for settings in wanted.iter().filter(|t| !known(&t.name)) {
            added.push(stage(settings, &settings.plugin)?);
        }
        Ok(RolloutPlan { reload, rolled, added })
    }

    /// Applies a re-read config file: worker counts, added and removed tasks take effect at once; each remaining
    /// task's plugin, limits and config go out with the new generation. `added` holds the staged builds of the
    /// added tasks, in the file's order.
    fn apply_reload(&mut self, wanted: Vec<TaskSettings>, added: Vec<Build>) {
        let mut added = added.into_iter();
        for task in &mut self.tasks {
            if !task.retired && !wanted.iter().any(|w| w.name == task.settings.name) {
                info!(task = %task.settings.name, "config: task removed, stopping its workers");
                task.retired = true;
            }
        }
        for settings in wanted {
            match self.tasks.iter_mut().find(|t| t.settings.name == settings.name) {
                Some(task) => {
                    if task.retired || task.settings.workers != settings.workers {
                        info!(task = %settings.name, workers = settings.workers, "config: worker count");
                    }
                    task.retired = false;
                    task.settings = settings;
                }
                None => {
                    info!(task = %settings.name, workers = settings.workers, "config: new task");
                    let build = added.next().expect("one staged build per added task, in the same order");
                    self.tasks.push(super::state::Task {
                        settings,
                        build,
                        slots: Vec::new(),
                        executions_done: 0,
                        exits: Default::default(),
                        spawn_latency: Default::default(),
                        retired: false,
                    });
                }
            }
        }
        self.schedule_supervision(crate::sysinfo::Mono::now());
        self.recheck_all = true;
    }

    /// Starts new workers up to the surge, and finishes the rollout when every slot has moved.
    fn fill_rollout(&mut self) {
        loop {
            let tasks = &self.tasks;
            let Some(rollout) = &mut self.rollout else { return };
            match rollout.next(|task| tasks[task].settings.workers) {
                Step::Wait => return,
                Step::Drained => {
                    if self.queue_stragglers() {
                        continue;
                    }
                    return self.finish_rollout();
                }
                Step::Spawn(task, slot) => {
                    let build = rollout.build(task).cloned().expect("queued slots belong to rolled tasks");
                    let init_timeout = rollout.init_timeout.unwrap_or(tasks[task].settings.init_timeout);
                    match self.spawn_worker(task, slot, &build, init_timeout) {
                        Some(Spawn::Started(pid)) => {
                            if let Some(rollout) = &mut self.rollout {
                                rollout.started(pid, task, slot);
                            }
                        }
                        Some(Spawn::Requested(cell)) => {
                            if let Some(rollout) = &mut self.rollout {
                                rollout.requested(cell, task, slot);
                            }
                        }
                        None => return self.fail_rollout(format!("cannot fork a new worker for slot {slot}")),
                    }
                }
            }
        }
    }

    /// Queues slots of rolled tasks that still run an older generation (slots added by scaling during the
    /// rollout); returns whether any were queued.
    fn queue_stragglers(&mut self) -> bool {
        let Some(rollout) = &mut self.rollout else { return false };
        let generation = rollout.generation;
        let old: Vec<(usize, u32)> = self
            .workers
            .values()
            .filter(|w| !w.life.stop_sent() && w.generation != generation)
            .filter(|w| !self.tasks[w.task].retired && w.slot < self.tasks[w.task].settings.workers)
            .map(|w| (w.task, w.slot))
            .collect();
        let queued = rollout.add_stragglers(old);
        if let Some(record) = &mut self.last_restart {
            record.slots_total += queued as u32;
        }
        queued > 0
    }

    /// A new worker is ready: its slot moves to the new build and the slot's old worker stops gracefully.
    pub(super) fn on_rollout_worker_ready(&mut self, pid: Pid) {
        let Some(rollout) = &mut self.rollout else { return };
        let Some((task, slot)) = rollout.ready(pid) else { return };
        let build = rollout.build(task).cloned().expect("in-flight workers belong to rolled tasks");
        let (generation, done) = (rollout.generation, rollout.done() as u32);
        let slots = &mut self.tasks[task].slots;
        if slots.len() <= slot as usize {
            slots.resize_with(slot as usize + 1, Slot::default);
        }
        slots[slot as usize].build = Some(Box::new(build));
        let old: Vec<Pid> = slots[slot as usize]
            .pids
            .iter()
            .filter_map(|p| self.workers.get(p))
            .filter(|w| w.pid != pid && w.generation != generation && !w.life.stop_sent())
            .map(|w| w.pid)
            .collect();
        info!(slot, pid = pid.as_raw(), generation, replaced = ?old, "restart: slot moved to the new generation");
        for old_pid in old {
            self.stop_worker(old_pid);
        }
        if let Some(record) = &mut self.last_restart {
            record.slots_done = done;
        }
        self.host_changed();
    }

    /// A worker ended; if it was a new worker not ready yet, the rollout fails. Returns whether it was one.
    pub(super) fn on_rollout_worker_exit(&mut self, pid: Pid, reason: &str) -> bool {
        let Some(slot) = self.rollout.as_mut().and_then(|r| r.failed(pid)) else { return false };
        self.fail_rollout(format!("new worker for slot {slot} (pid {pid}) failed: {reason}"));
        true
    }

    /// A restart that could not even begin (bad plugin file, unknown task).
    fn refuse_rollout(&mut self, reason: String) {
        error!("restart refused: {reason}");
        self.record_restart_end(Some(reason));
    }

    /// Stops the rollout and puts every slot back on the old build.
    fn fail_rollout(&mut self, reason: String) {
        let Some(rollout) = self.rollout.take() else { return };
        let back = rollout.roll_back();
        error!(generation = back.generation, "restart rolled back: {reason}");
        let stopping = matches!(self.phase, HostPhase::Stopping { .. });
        for pid in back.starting {
            if !stopping {
                self.discard_worker(pid);
            } else if self.workers.get(&pid).is_some_and(|w| !w.life.stop_sent()) {
                // A graceful stop treats a worker still in its init as any other: asked to stop, with the grace
                // period. Killing it would turn the user's graceful stop into a forced one (exit 7).
                self.stop_worker(pid);
            }
        }
        for cell in back.requested {
            // Asked of the new build's zygote: killed when it reports (see `warm`).
            if let Some(pending) = self.spawning.get_mut(&cell) {
                pending.abandoned = true;
                pending.pipes = None;
                let (task, slot) = (pending.task, pending.slot);
                if let Some(state) = self.tasks[task].slots.get_mut(slot as usize) {
                    state.requested = state.requested.saturating_sub(1);
                }
                self.recheck_slot(task, slot);
            }
        }
        for (task, slot) in back.moved {
            let Some(state) = self.tasks[task].slots.get_mut(slot as usize) else { continue };
            state.build = None;
            let pids = state.pids.clone();
            let new: Vec<Pid> = pids
                .iter()
                .filter_map(|p| self.workers.get(p))
                .filter(|w| w.generation == back.generation && !w.life.stop_sent())
                .map(|w| w.pid)
                .collect();
            for pid in new {
                self.stop_worker(pid);
            }
        }
        self.record_restart_end(Some(reason));
    }

    /// Every slot moved: the new builds become the tasks' builds.
    fn finish_rollout(&mut self) {
        let Some(rollout) = self.rollout.take() else { return };
        let generation = rollout.generation;
        for (task, build) in self.tasks.iter_mut().zip(rollout.into_builds()) {
            let Some(build) = build else { continue };
            task.settings.plugin.clone_from(&build.plugin.original);
            task.build = build;
            for slot in &mut task.slots {
                slot.build = None;
            }
        }
        self.generation = generation;
        info!(generation, "restart complete: every slot runs generation {generation}");
        self.record_restart_end(None);
    }

    /// Removes staged plugin copies no task or slot runs any more. A worker still finishing its call keeps its
    /// mapping of a removed file: unlinking a mapped file is harmless.
    fn prune_staged_builds(&self) {
        plugin::prune(&self.plugins, self.builds_in_use().iter());
    }

    /// The staged builds some task or slot runs.
    pub(super) fn builds_in_use(&self) -> Vec<plugin::StagedPlugin> {
        self.tasks
            .iter()
            .flat_map(|t| std::iter::once(&t.build).chain(t.slots.iter().filter_map(|s| s.build.as_deref())))
            .map(|b| b.plugin.clone())
            .collect()
    }

    fn record_restart_end(&mut self, error: Option<String>) {
        self.prune_staged_builds();
        self.prune_zygotes();
        // A rollout may have moved a task to another file or changed its `watch` setting.
        self.sync_watches(false);
        let summary = self.summary();
        if let Some(notifier) = &mut self.notifier {
            notifier.ready(&summary);
        }
        if let Some(record) = &mut self.last_restart {
            record.in_progress = false;
            record.ok = error.is_none();
            record.error = error;
            record.finished_at = Some(sysinfo::unix_seconds(SystemTime::now()));
        }
        self.host_changed();
    }
}
