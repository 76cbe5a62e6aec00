//! The master's hands on its children: spawn into a slot, reap, stop, kill, and keep slots filled.

use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{ForkResult, Pid, fork, setpgid};
use tracing::{debug, info, warn};

use super::core::{Build, HostPhase, Master, Slot, Worker};
use crate::exit::worker as worker_code;
use crate::status::ExitStatus;
use crate::sysinfo::{self, Mono};
use crate::worker::{self, WorkerSpec};

/// How a child ended, from `waitpid`.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Code(i32),
    Signal(Signal),
}

impl Master {
    /// Fills every empty slot whose backoff is over and asks workers above the wanted count to stop.
    pub(super) fn manage_workers(&mut self) {
        if matches!(self.phase, HostPhase::Stopping { .. }) {
            return;
        }
        let now = Mono::now();
        let batch = self.host.check_interval.is_none();
        for task in 0..self.tasks.len() {
            let wanted = if self.tasks[task].retired { 0 } else { self.tasks[task].settings.workers };
            if self.tasks[task].slots.len() < wanted as usize {
                self.tasks[task].slots.resize_with(wanted as usize, Slot::default);
            }
            for slot in 0..wanted {
                let occupied = self.workers.values().any(|w| w.task == task && w.slot == slot && !w.stop_sent);
                let state = &self.tasks[task].slots[slot as usize];
                let waiting = state.respawn_at.is_some_and(|at| at > now);
                let done = batch && state.spawned > 0;
                if !occupied && !waiting && !done {
                    let build = self.slot_build(task, slot);
                    let init_timeout = self.tasks[task].settings.init_timeout;
                    self.spawn_worker(task, slot, &build, init_timeout);
                }
            }
            let surplus: Vec<Pid> = self
                .workers
                .values()
                .filter(|w| w.task == task && w.slot >= wanted && !w.stop_sent)
                .map(|w| w.pid)
                .collect();
            for pid in surplus {
                info!(pid = pid.as_raw(), slot = self.workers[&pid].slot, "scaling down: stopping worker");
                self.stop_worker(pid);
            }
        }
    }

    /// The build a slot runs: its own during a rollout, else the task's.
    pub(super) fn slot_build(&self, task: usize, slot: u32) -> Build {
        let task = &self.tasks[task];
        task.slots.get(slot as usize).and_then(|s| s.build.clone()).unwrap_or_else(|| task.build.clone())
    }

    /// Forks a worker running `build` for `slot` of `task`; `None` if the fork failed (the slot then backs off).
    pub(super) fn spawn_worker(
        &mut self,
        task: usize,
        slot: u32,
        build: &Build,
        init_timeout: Duration,
    ) -> Option<Pid> {
        let cell = match self.board.claim() {
            Ok(cell) => cell,
            Err(e) => {
                warn!(slot, "cannot start a worker: {e}");
                if let Some(startup) = &mut self.startup {
                    startup.fail(format!("cannot start a worker for slot {slot}: {e}"));
                }
                return None;
            }
        };
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
        let spec = WorkerSpec {
            task: settings.name.clone(),
            slot,
            generation: build.generation,
            plugin: build.plugin.clone(),
            limits: build.limits,
            config_json: build.config_json.clone(),
            title: title.clone(),
            master: Pid::this(),
            report_fd: self.report_tx.as_raw_fd(),
            keep_fds: vec![self.report_tx.as_raw_fd(), build.plugin.raw_fd()],
            output: pipes.as_ref().map(|(_, ends)| (ends.stdout.as_raw_fd(), ends.stderr.as_raw_fd())),
            inherited_nofile: self.inherited_nofile,
            plugin_log_level: self.plugin_log_level,
        };
        // SAFETY: the master is single-threaded, so the child starts with consistent memory; it runs only
        // `worker::run`, which never returns into the master's code.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let cell_ptr: *const crate::scoreboard::Cell = self.board.cell(cell);
                // SAFETY: the scoreboard mapping stays mapped for the child's whole life: `worker::run` never
                // returns, so no destructor of the master's state (which would unmap it) runs in the child.
                worker::run(spec, unsafe { &*cell_ptr })
            }
            Ok(ForkResult::Parent { child }) => {
                // Also set in the child: whichever runs first, the group exists before anyone signals it.
                let _ = setpgid(child, child);
                if let Some((reads, ends)) = pipes {
                    drop(ends);
                    let origin = super::capture::Origin {
                        task: self.tasks[task].settings.name.clone(),
                        slot,
                        pid: child,
                        generation: build.generation,
                        title,
                    };
                    if let Err(e) = self.captures.watch(reads, origin) {
                        warn!(slot, pid = child.as_raw(), "cannot read the output of a new worker: {e}");
                    }
                }
                let now = Mono::now();
                let state = &mut self.tasks[task].slots[slot as usize];
                state.spawned += 1;
                state.respawn_at = None;
                debug!(slot, pid = child.as_raw(), generation = build.generation, "worker spawned");
                self.workers.insert(
                    child,
                    Worker {
                        pid: child,
                        task,
                        slot,
                        generation: build.generation,
                        cell,
                        plugin_sha256: build.plugin.sha256.clone(),
                        started: now,
                        init_deadline: now + init_timeout,
                        started_wall: SystemTime::now(),
                        ready: false,
                        stop_sent: false,
                        kill_sent: false,
                        kill_at: None,
                        seq_seen: (0, now),
                        killed_for: None,
                        rss: None,
                        stopped_since: None,
                    },
                );
                if let Some(startup) = &mut self.startup {
                    startup.pending.insert(child);
                }
                self.dirty = true;
                Some(child)
            }
            Err(e) => {
                self.board.release(cell);
                let backoff = self.tasks[task].settings.backoff;
                let state = &mut self.tasks[task].slots[slot as usize];
                state.crashes += 1;
                let delay = backoff.delay(state.crashes);
                state.respawn_at = Some(Mono::now() + delay);
                warn!(slot, retry_in_ms = delay.as_millis() as u64, "fork failed: {e}");
                // A start is all or nothing: a first wave with a slot that could not be forked is no start.
                if let Some(startup) = &mut self.startup {
                    startup.fail(format!("cannot fork a worker for slot {slot}: {e}"));
                }
                None
            }
        }
    }

    /// Reaps every exited child. Before a worker is reaped (while its pid, and so its process group id, cannot be
    /// reused) the rest of its process group is killed: processes its plugin spawned end with it.
    pub(super) fn reap_workers(&mut self) {
        let mut reaped = false;
        loop {
            let exited = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => status.pid(),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("waitid failed: {e}");
                    break;
                }
            };
            let Some(pid) = exited else { break };
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
            self.end_orphans(false);
        }
    }

    /// Records a worker's end, logs it, and schedules the slot's refill (at once, or after a crash backoff).
    fn on_worker_exit(&mut self, pid: Pid, ended: Ended) {
        // What the worker wrote last is logged before its exit (its pipes stay open while a child holds them).
        self.captures.read_all_of(pid);
        // A worker writes its report (ready, or why it failed) before it exits, but the report may have come in
        // after this wake-up read them: read again, so a worker that was ready is never taken for one that ended
        // during its start (which fails a start or a rollout).
        if self.workers.get(&pid).is_some_and(|w| !w.ready) {
            self.read_reports();
        }
        let Some(worker) = self.workers.remove(&pid) else {
            // An orphaned descendant adopted as subreaper (or as PID 1).
            debug!(pid = pid.as_raw(), ended = ?ended, "reaped an adopted orphan");
            return;
        };
        let executions = self.board.cell(worker.cell).executions();
        self.board.release(worker.cell);
        let now = Mono::now();
        let lived = now.since(worker.started);
        let (code, signal, mut reason, crash) = match ended {
            Ended::Code(code) => (Some(code), None, worker_code::describe(code).to_owned(), code != worker_code::OK),
            Ended::Signal(signal) => {
                let asked = worker.stop_sent && worker.killed_for.is_none();
                (None, Some(signal.as_str().to_owned()), format!("killed by {}", signal.as_str()), !asked)
            }
        };
        if let Some(why) = &worker.killed_for {
            // A worker that reported why it failed knows best; a kill by the master adds the master's reason.
            reason = match ended {
                Ended::Code(_) => why.clone(),
                Ended::Signal(_) => format!("{reason}: {why}"),
            };
        }
        let task = &mut self.tasks[worker.task];
        task.executions_done += executions;
        let category = match (crash, worker.kill_sent, worker.stop_sent) {
            (true, _, _) => "crash",
            (false, true, _) => "killed",
            (false, false, true) => "stopped",
            (false, false, false) => "normal",
        };
        *task.exits.entry(category).or_default() += 1;
        let fields = (worker.slot, pid.as_raw(), executions, lived.as_millis() as u64);
        match (code, &signal) {
            (Some(code), _) if crash => warn!(
                task = %task.settings.name, slot = fields.0, pid = fields.1, executions = fields.2,
                lived_ms = fields.3, code, "worker crashed: {reason}"
            ),
            (Some(code), _) => info!(
                task = %task.settings.name, slot = fields.0, pid = fields.1, executions = fields.2,
                lived_ms = fields.3, code, "worker exited: {reason}"
            ),
            (None, Some(signal)) if crash => warn!(
                task = %task.settings.name, slot = fields.0, pid = fields.1, executions = fields.2,
                lived_ms = fields.3, signal = %signal, "worker crashed: {reason}"
            ),
            (None, signal) => info!(
                task = %task.settings.name, slot = fields.0, pid = fields.1, executions = fields.2,
                lived_ms = fields.3, signal = %signal.as_deref().unwrap_or("-"), "worker ended: {reason}"
            ),
        }
        if let Some(startup) = &mut self.startup
            && startup.pending.remove(&pid)
        {
            startup.fail(format!("worker {pid} ended during start: {reason}"));
        }
        self.dirty = true;
        if self.on_rollout_worker_exit(pid, &reason) {
            // A new-generation worker that never became ready: the rollout's failure, not the slot's crash.
            return;
        }
        let task = &mut self.tasks[worker.task];
        let backoff = task.settings.backoff;
        if let Some(slot) = task.slots.get_mut(worker.slot as usize) {
            slot.last_exit = Some(ExitStatus {
                pid: pid.as_raw(),
                code,
                signal,
                reason,
                crash,
                at: sysinfo::unix_seconds(SystemTime::now()),
            });
            if crash {
                slot.crashes = if lived >= backoff.reset { 1 } else { slot.crashes + 1 };
                let delay = backoff.delay(slot.crashes);
                slot.respawn_at = Some(now + delay);
                if matches!(self.phase, HostPhase::Running) && self.host.check_interval.is_some() {
                    info!(
                        slot = worker.slot,
                        crashes = slot.crashes,
                        delay_ms = delay.as_millis() as u64,
                        "respawn after backoff"
                    );
                }
            } else {
                if lived >= backoff.reset {
                    slot.crashes = 0;
                }
                slot.respawn_at = None;
            }
        }
    }

    /// Asks a worker (and the processes of its group) to stop gracefully; it is killed if it is still there
    /// after the stop timeout.
    pub(super) fn stop_worker(&mut self, pid: Pid) {
        let kill_at = Mono::now() + self.host.stop_timeout;
        if let Some(worker) = self.workers.get_mut(&pid) {
            if !worker.stop_sent {
                worker.kill_at = Some(kill_at);
            }
            worker.stop_sent = true;
            signal_group(pid, Signal::SIGTERM);
            self.dirty = true;
        }
    }

    /// Kills a worker for a fault (the reason is recorded with its exit).
    pub(super) fn kill_worker(&mut self, pid: Pid, reason: String) {
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.killed_for = Some(reason);
            worker.kill_sent = true;
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
            worker.stop_sent = true;
            worker.kill_sent = true;
            signal_group(pid, Signal::SIGKILL);
            self.dirty = true;
        }
    }

    /// Kills every worker and its processes now.
    pub(super) fn kill_all(&mut self) {
        let alive: Vec<Pid> = self.workers.values().filter(|w| !w.kill_sent).map(|w| w.pid).collect();
        for pid in alive {
            self.discard_worker(pid);
        }
    }
}

/// Signals a worker's process group, falling back to the worker alone.
fn signal_group(pid: Pid, signal: Signal) {
    if killpg(pid, signal).is_err() {
        let _ = kill(pid, signal);
    }
}
