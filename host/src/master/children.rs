//! The master's hands on its children: spawn into a slot, reap, stop, kill, and keep slots filled.

use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{ForkResult, Pid, fork, setpgid};
use tracing::{debug, info, warn};

use super::core::{HostPhase, Master};
use super::deadlines::Due;
use super::life::{KillReason, Life};
use super::policy::{self, Ended, SlotView};
use super::startup::StartFailure;
use super::state::{Build, Slot, Worker};
use crate::scoreboard::CellIndex;
use crate::status::ExitStatus;
use crate::sysinfo::{self, Mono};
use crate::worker::{self, WorkerSpec};

/// How a spawn went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spawn {
    /// Forked here: the worker runs as this pid.
    Started(Pid),
    /// Asked of the build's zygote: the worker reports its pid itself (see `warm`).
    Requested(CellIndex),
}

impl Master {
    /// Fills the empty slots whose backoff is over and asks workers above the wanted count to stop.
    ///
    /// Per event, only the slots an event touched are looked at (a worker of theirs ended, was asked to stop, a
    /// zygote gave up on them, their backoff ended): O(1) per worker event. A change of the wanted counts
    /// (start, scaling, a re-read config, an upgrade) asks for one pass over every slot and worker instead.
    pub(super) fn manage_workers(&mut self) {
        if matches!(self.phase, HostPhase::Stopping { .. }) {
            self.recheck.clear();
            return;
        }
        if std::mem::take(&mut self.recheck_all) {
            self.recheck.clear();
            return self.manage_all_workers();
        }
        if self.recheck.is_empty() {
            return;
        }
        let now = Mono::now();
        let batch = self.host.check_interval.is_none();
        let mut slots = std::mem::take(&mut self.recheck);
        slots.sort_unstable();
        slots.dedup();
        for (task, slot) in slots {
            let Some(t) = self.tasks.get(task) else { continue };
            let wanted = if t.retired { 0 } else { t.settings.workers };
            let Some(state) = t.slots.get(slot as usize).filter(|_| slot < wanted) else { continue };
            let view =
                SlotView { occupied: self.occupied(task, slot), respawn_at: state.respawn_at, spawned: state.spawned };
            if !policy::slots_to_fill(&[view], now, batch).is_empty() {
                self.fill_slot(task, slot);
            }
        }
    }

    /// Whether a slot holds a worker the master still wants (or one asked of a zygote).
    pub(super) fn occupied(&self, task: usize, slot: u32) -> bool {
        let Some(state) = self.tasks.get(task).and_then(|t| t.slots.get(slot as usize)) else { return false };
        state.requested > 0 || state.pids.iter().any(|pid| self.workers.get(pid).is_some_and(|w| !w.life.stop_sent()))
    }

    /// A slot to look at in the next `manage_workers`.
    pub(super) fn recheck_slot(&mut self, task: usize, slot: u32) {
        self.recheck.push((task, slot));
    }

    /// Every slot and worker at once: after a change of the wanted counts. One pass over the workers, whatever
    /// the number of tasks.
    fn manage_all_workers(&mut self) {
        let now = Mono::now();
        let batch = self.host.check_interval.is_none();
        let wanted: Vec<u32> = self.tasks.iter().map(|t| if t.retired { 0 } else { t.settings.workers }).collect();
        let wanted_workers = self.workers.values().filter(|w| !w.life.stop_sent()).map(|w| (w.task, w.slot, w.pid));
        let policy::Occupancy { occupied, surplus } = policy::occupancy(&wanted, wanted_workers);
        for (task, occupied) in occupied.into_iter().enumerate() {
            let slots = &mut self.tasks[task].slots;
            if slots.len() < occupied.len() {
                slots.resize_with(occupied.len(), Slot::default);
            }
            let views: Vec<SlotView> = slots
                .iter()
                .zip(occupied)
                .map(|(s, occupied)| SlotView {
                    occupied: occupied || s.requested > 0,
                    respawn_at: s.respawn_at,
                    spawned: s.spawned,
                })
                .collect();
            for slot in policy::slots_to_fill(&views, now, batch) {
                self.fill_slot(task, slot);
            }
        }
        for pid in surplus {
            info!(pid = pid.as_raw(), slot = self.workers[&pid].slot, "scaling down: stopping worker");
            self.stop_worker(pid);
        }
    }

    fn fill_slot(&mut self, task: usize, slot: u32) {
        let build = self.slot_build(task, slot);
        let init_timeout = self.tasks[task].settings.init_timeout;
        self.spawn_worker(task, slot, &build, init_timeout);
    }

    /// The build a slot runs: its own during a rollout, else the task's.
    pub(super) fn slot_build(&self, task: usize, slot: u32) -> Build {
        let task = &self.tasks[task];
        task.slots.get(slot as usize).and_then(|s| s.build.as_deref().cloned()).unwrap_or_else(|| task.build.clone())
    }

    /// Starts a worker running `build` for `slot` of `task`: asks the build's zygote, or forks it here; `None`
    /// if that failed (the slot then backs off).
    pub(super) fn spawn_worker(
        &mut self,
        task: usize,
        slot: u32,
        build: &Build,
        init_timeout: Duration,
    ) -> Option<Spawn> {
        let cell = match self.board.claim() {
            Ok(cell) => cell,
            Err(e) => {
                warn!(slot, "cannot start a worker: {e}");
                if let Some(startup) = &mut self.startup {
                    startup.fail(StartFailure::NoCell { slot, reason: e.to_string() });
                }
                // Tried again after a backoff (nothing else would look at this slot again).
                let at = Mono::now() + self.tasks[task].settings.backoff.delay(1);
                if let Some(state) = self.tasks[task].slots.get_mut(slot as usize) {
                    state.respawn_at = Some(at);
                    self.set_deadline(at, Due::Respawn(task, slot));
                }
                return None;
            }
        };
        self.board.cell(cell).mark_requested(crate::sysinfo::monotonic_ns());
        let settings = &self.tasks[task].settings;
        let title = self.host.worker_title(&settings.name);
        // Output capture: a failure to make the pipes costs the capture, not the worker.
        let pipes = if settings.capture_output {
            super::capture::Captures::pipes()
                .map_err(|e| warn!(slot, "cannot capture the output of a new worker: {e}"))
                .ok()
        } else {
            None
        };
        if self.request_warm_spawn(task, slot, build, cell, pipes.as_ref().map(|pipes| &pipes.writes)) {
            // The write ends went to the zygote with the request; the worker reports its pid itself.
            let watched = pipes.map(|pipes| self.captures.hold(pipes));
            self.await_warm_spawn(task, slot, build, cell, init_timeout, watched, title);
            return Some(Spawn::Requested(cell));
        }
        let spec = self.worker_spec(task, slot, build, title.clone(), pipes.as_ref().map(|pipes| &pipes.writes));
        super::footprint::join_own_code();
        // SAFETY: the master is single-threaded, so the child starts with consistent memory; it runs only
        // `worker::run`, which never returns into the master's code.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let cell_ptr: *const crate::scoreboard::Cell = self.board.cell(cell);
                // SAFETY: the scoreboard mapping stays mapped for the child's whole life: `worker::run` never
                // returns, so no destructor of the master's state (which would unmap it) runs in the child.
                worker::run(spec, unsafe { &*cell_ptr }, None)
            }
            Ok(ForkResult::Parent { child }) => {
                debug!(slot, pid = child.as_raw(), generation = build.generation, "worker spawned cold");
                // Also set in the child: whichever runs first, the group exists before anyone signals it. (A warm
                // worker sets its own before it reports itself.)
                let _ = setpgid(child, child);
                let watched = pipes.map(|pipes| self.captures.hold(pipes));
                self.on_spawned(child, task, slot, build, cell, init_timeout, watched, title);
                Some(Spawn::Started(child))
            }
            Err(e) => {
                self.board.release(cell);
                self.on_fork_failure(task, slot, e);
                None
            }
        }
    }

    /// Takes a new worker (forked here or by its build's zygote) under supervision: its output, its slot.
    #[expect(clippy::too_many_arguments, reason = "the parts of one spawn, passed on from spawn_worker")]
    pub(super) fn on_spawned(
        &mut self,
        child: Pid,
        task: usize,
        slot: u32,
        build: &Build,
        cell: CellIndex,
        init_timeout: Duration,
        pipes: Option<super::capture::Watched>,
        title: String,
    ) {
        if let Some(pipes) = pipes {
            let name = self.tasks[task].settings.name.clone();
            let origin = super::capture::Origin { task: name, slot, pid: child, generation: build.generation, title };
            if let Err(e) = self.captures.watch(pipes, origin) {
                warn!(slot, pid = child.as_raw(), "cannot read the output of a new worker: {e}");
            }
        }
        self.register_worker(child, task, slot, build, cell, init_timeout);
    }

    /// What a new worker of `task` in `slot` needs, prepared before the fork.
    pub(super) fn worker_spec(
        &self,
        task: usize,
        slot: u32,
        build: &Build,
        title: String,
        output: Option<&super::capture::WorkerEnds>,
    ) -> WorkerSpec {
        WorkerSpec {
            task: self.tasks[task].settings.name.clone(),
            slot,
            generation: build.generation,
            plugin: build.plugin.clone(),
            limits: build.limits,
            config_json: build.config_json.clone(),
            process: build.process.clone(),
            title,
            master: Pid::this(),
            report_fd: self.report_tx.as_raw_fd(),
            keep_fds: vec![self.report_tx.as_raw_fd(), build.plugin.raw_fd()],
            output: output.map(|ends| (ends.stdout.as_raw_fd(), ends.stderr.as_raw_fd())),
            inherited_nofile: self.inherited_nofile,
            plugin_log_level: self.plugin_log_level,
        }
    }

    /// Records a forked worker: its slot, its life (starting, with its init deadline), the start it belongs to.
    fn register_worker(
        &mut self,
        pid: Pid,
        task: usize,
        slot: u32,
        build: &Build,
        cell: CellIndex,
        init_timeout: Duration,
    ) {
        let now = Mono::now();
        let slots = &mut self.tasks[task].slots;
        if slots.len() <= slot as usize {
            slots.resize_with(slot as usize + 1, Slot::default);
        }
        let state = &mut slots[slot as usize];
        // A start waits for the first wave only: each slot's first worker. A slot whose first worker was ready
        // and already retired (`execute_times = 1`) refills during the start, and its new workers do not hold
        // the start (with enough slots turning over fast, some worker of them was always starting).
        let first_wave = state.spawned == 0;
        state.spawned += 1;
        state.respawn_at = None;
        state.pids.push(pid);
        self.set_deadline(now + init_timeout, Due::Init(pid));
        self.workers.insert(
            pid,
            Worker {
                pid,
                task,
                slot,
                generation: build.generation,
                cell,
                plugin_sha256: build.plugin.sha256.clone(),
                started: now,
                started_wall: SystemTime::now(),
                life: Life::starting(now + init_timeout),
                ready_at: None,
                seq_seen: (0, now),
                fault: None,
                fault_reported: false,
                rss: None,
                stopped_since: None,
                statm: None,
            },
        );
        if first_wave && let Some(startup) = &mut self.startup {
            startup.pending.insert(pid);
        }
        self.dirty = true;
    }

    /// A failed `fork` backs the slot off like a crash, and fails a start (a start is all or nothing).
    pub(super) fn on_fork_failure(&mut self, task: usize, slot: u32, errno: Errno) {
        let backoff = self.tasks[task].settings.backoff;
        let state = &mut self.tasks[task].slots[slot as usize];
        state.crashes += 1;
        let delay = backoff.delay(state.crashes);
        let at = Mono::now() + delay;
        state.respawn_at = Some(at);
        self.set_deadline(at, Due::Respawn(task, slot));
        warn!(slot, retry_in_ms = delay.as_millis() as u64, "fork failed: {errno}");
        if let Some(startup) = &mut self.startup {
            startup.fail(StartFailure::Fork { slot, errno });
        }
    }

    /// Reaps every exited child, and records which workers were stopped (SIGSTOP, SIGTSTP, ...) or continued.
    /// Before a worker is reaped (while its pid, and so its process group id, cannot be reused) the rest of its
    /// process group is killed: processes its plugin spawned end with it.
    ///
    /// The master is the workers' parent, so the kernel tells it about stops as about exits: status and hang
    /// detection know a stopped worker without reading `/proc` for every worker. Both come from one loop of
    /// `waitid(P_ALL, WNOWAIT)`: each such call walks the kernel's list of the master's children until it finds
    /// one to report, and the last one (nothing left) walks all of them. Asking for stops in a loop of its own
    /// before the exits made that full walk twice per wake-up: measured in a restart of 64 tasks × 16 workers,
    /// 17 % of the master's CPU was that walk (`wait_consider_task`). A stop or continue found this way is then
    /// consumed for that pid alone (`waitid(P_PID)`, no walk).
    pub(super) fn reap_workers(&mut self) {
        let now = Mono::now();
        let mut reaped = false;
        let mut stops = WaitPidFlag::WSTOPPED | WaitPidFlag::WCONTINUED;
        let mut last_stop = None;
        loop {
            let flags = WaitPidFlag::WEXITED | stops | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let exited = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(WaitStatus::Stopped(pid, _) | WaitStatus::Continued(pid)) if last_stop == Some(pid) => {
                    // Shown again after it was consumed: never loop on it; exits only for the rest of this look
                    // (stops are looked at again on the next wake-up).
                    stops = WaitPidFlag::empty();
                    continue;
                }
                Ok(WaitStatus::Stopped(pid, _)) => {
                    last_stop = Some(pid);
                    self.note_stop(pid, true, now);
                    continue;
                }
                Ok(WaitStatus::Continued(pid)) => {
                    last_stop = Some(pid);
                    self.note_stop(pid, false, now);
                    continue;
                }
                Ok(status) => status.pid(),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("waitid failed: {e}");
                    break;
                }
            };
            let Some(pid) = exited else { break };
            if !self.workers.contains_key(&pid) && !self.spawning.is_empty() {
                // A zygote's worker reports its pid before it can exit: the record is in the pipe.
                self.read_reports();
            }
            if self.workers.contains_key(&pid) {
                let _ = killpg(pid, Signal::SIGKILL);
            }
            reaped = true;
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_worker_exit(pid, Ended::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _core)) => self.on_worker_exit(pid, Ended::Signal(signal)),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!(pid = pid.as_raw(), "waitpid failed: {e}");
                    break;
                }
            }
        }
        if reaped {
            self.schedule_orphan_scan();
        }
    }

    /// Consumes the stop (or continue) report `waitid` showed for `pid` and records it.
    fn note_stop(&mut self, pid: Pid, stopped: bool, now: Mono) {
        let which = if stopped { WaitPidFlag::WSTOPPED } else { WaitPidFlag::WCONTINUED };
        // Consumed for this pid alone; if its state changed meanwhile (continued, or ended), the next look of the
        // loop reports that instead.
        while let Err(Errno::EINTR) = waitid(Id::Pid(pid), which | WaitPidFlag::WNOHANG) {}
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.stopped_since = if stopped { Some(worker.stopped_since.unwrap_or(now)) } else { None };
            self.dirty = true;
        }
    }

    /// Records a worker's end, logs it, and schedules the slot's refill (at once, or after a crash backoff).
    fn on_worker_exit(&mut self, pid: Pid, ended: Ended) {
        // A worker writes its report (ready, or why it failed) before it exits, but the report may have come in
        // after this wake-up read them: read again, so a worker that was ready is never taken for one that ended
        // during its start (which fails a start or a rollout). First: a warm worker's output streams are watched
        // from when its spawn report is read, and only watched streams are read below.
        if self.workers.get(&pid).is_none_or(|w| !w.ready()) {
            self.read_reports();
        }
        // What the worker wrote last is logged before its exit (its pipes stay open while a child holds them).
        self.captures.read_all_of(pid);
        let Some(worker) = self.workers.remove(&pid) else {
            if self.forget_zygote(pid) {
                return;
            }
            // An orphaned descendant adopted as subreaper (or as PID 1), or a zygote's spare that ended unasked:
            // its zygote learns of it here (see `zygote`, "Spares").
            debug!(pid = pid.as_raw(), ended = ?ended, "reaped an adopted orphan");
            self.tell_zygotes_of_an_end(pid);
            return;
        };
        if let Some(slot) = self.tasks[worker.task].slots.get_mut(worker.slot as usize) {
            slot.pids.retain(|p| *p != pid);
        }
        self.recheck_slot(worker.task, worker.slot);
        let executions = self.board.cell(worker.cell).executions();
        if let Some(latency) = self.board.cell(worker.cell).spawn_latency() {
            self.tasks[worker.task].spawn_latency.record(latency);
        }
        self.board.release(worker.cell);
        let lived = Mono::now().since(worker.started);
        let class = policy::classify_exit(ended, &worker.life, worker.fault.as_deref(), worker.fault_reported);
        let task = &mut self.tasks[worker.task];
        task.executions_done += executions;
        *task.exits.entry(class.category.as_str()).or_default() += 1;
        log_exit(&task.settings.name, &worker, ended, &class, executions, lived);
        if let Some(startup) = &mut self.startup
            && startup.pending.remove(&pid)
        {
            startup.fail(StartFailure::Ended { pid, reason: class.reason.clone() });
        }
        self.dirty = true;
        if self.on_rollout_worker_exit(pid, &class.reason) {
            // A new-generation worker that never became ready: the rollout's failure, not the slot's crash.
            return;
        }
        self.schedule_refill(&worker, ended, class, lived);
    }

    /// Records how a slot's worker ended and when the slot gets its next worker (at once, or after the backoff).
    fn schedule_refill(&mut self, worker: &Worker, ended: Ended, class: policy::ExitClass, lived: Duration) {
        let backoff = self.tasks[worker.task].settings.backoff;
        let quiet = !matches!(self.phase, HostPhase::Running) || self.host.check_interval.is_none();
        let Some(slot) = self.tasks[worker.task].slots.get_mut(worker.slot as usize) else { return };
        let after = policy::after_exit(slot.crashes, lived, class.crash(), &backoff);
        slot.crashes = after.crashes;
        slot.respawn_at = after.delay.map(|delay| Mono::now() + delay);
        let respawn_at = slot.respawn_at;
        match (after.delay, quiet) {
            (Some(delay), false) => info!(
                slot = worker.slot,
                crashes = after.crashes,
                delay_ms = delay.as_millis() as u64,
                "respawn after backoff"
            ),
            (None, false) if class.crash() => info!(slot = worker.slot, crashes = after.crashes, "respawn at once"),
            _ => {}
        }
        let (code, signal) = match ended {
            Ended::Code(code) => (Some(code), None),
            Ended::Signal(signal) => (None, Some(signal.as_str().to_owned())),
        };
        slot.last_exit = Some(ExitStatus {
            pid: worker.pid.as_raw(),
            code,
            signal,
            crash: class.crash(),
            reason: class.reason,
            at: sysinfo::unix_seconds(SystemTime::now()),
        });
        if let Some(at) = respawn_at {
            self.set_deadline(at, Due::Respawn(worker.task, worker.slot));
        }
    }

    /// Asks a worker (and the processes of its group) to stop gracefully; it is killed if it is still there
    /// after the stop timeout.
    pub(super) fn stop_worker(&mut self, pid: Pid) {
        let kill_at = Mono::now() + self.host.stop_timeout;
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.life.ask_to_stop(kill_at);
            signal_group(pid, Signal::SIGTERM);
            self.dirty = true;
            let (task, slot) = (worker.task, worker.slot);
            if worker.life.kill_at() == Some(kill_at) {
                self.set_deadline(kill_at, Due::Kill(pid));
            }
            self.recheck_slot(task, slot);
        }
    }

    /// Kills a worker for a fault (the reason is recorded with its exit).
    pub(super) fn kill_worker(&mut self, pid: Pid, reason: String) {
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.fault = Some(reason);
            worker.fault_reported = false;
            worker.life.kill(KillReason::Fault);
            signal_group(pid, Signal::SIGKILL);
            self.dirty = true;
        }
    }

    /// Kills a worker that is no longer wanted (a new worker of a rolled-back restart, a straggler); not a crash.
    pub(super) fn discard_worker(&mut self, pid: Pid) {
        if matches!(self.phase, HostPhase::Stopping { .. }) {
            self.forced_stop = true;
        }
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.life.kill(KillReason::Discarded);
            signal_group(pid, Signal::SIGKILL);
            self.dirty = true;
            let (task, slot) = (worker.task, worker.slot);
            self.recheck_slot(task, slot);
        }
    }

    /// Kills every worker and its processes now.
    pub(super) fn kill_all(&mut self) {
        let alive: Vec<Pid> = self.workers.values().filter(|w| !w.life.kill_sent()).map(|w| w.pid).collect();
        for pid in alive {
            self.discard_worker(pid);
        }
    }
}

/// The process log's line for a worker's end: a warning for a crash, with its code or signal.
fn log_exit(task: &str, worker: &Worker, ended: Ended, class: &policy::ExitClass, executions: u64, lived: Duration) {
    let (slot, pid, lived_ms, reason) = (worker.slot, worker.pid.as_raw(), lived.as_millis() as u64, &class.reason);
    match ended {
        Ended::Code(code) if class.crash() => {
            warn!(task = %task, slot, pid, executions, lived_ms, code, "worker crashed: {reason}")
        }
        Ended::Code(code) => info!(task = %task, slot, pid, executions, lived_ms, code, "worker exited: {reason}"),
        Ended::Signal(signal) if class.crash() => {
            warn!(task = %task, slot, pid, executions, lived_ms, signal = %signal.as_str(), "worker crashed: {reason}")
        }
        Ended::Signal(signal) => {
            info!(task = %task, slot, pid, executions, lived_ms, signal = %signal.as_str(), "worker ended: {reason}")
        }
    }
}

/// Signals a worker's process group, falling back to the worker alone.
fn signal_group(pid: Pid, signal: Signal) {
    if killpg(pid, signal).is_err() {
        let _ = kill(pid, signal);
    }
}
