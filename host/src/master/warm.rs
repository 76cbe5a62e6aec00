//! Warm spawns: the master's side of the zygotes (see [`crate::zygote`] for the design and why).
//!
//! The master keeps at most one zygote per build: a generation and a staged plugin (its sha256), shared by every
//! task that runs it (each task's settings reach it as a [`TaskTemplate`] before its first request, see
//! [`crate::zygote`]). A spawn asks the build's zygote when it is ready
//! and falls back to a cold fork otherwise (no zygote yet, still loading, dead, or its request queue full): a
//! zygote is a cache, never a dependency. A zygote whose build no task or slot runs any more (after a rollout or a
//! rollback) is killed; one that dies is forgotten when it is reaped and started again by the next spawn of its
//! build. Tasks that run as another user (`user`, `group`) never use a zygote: it would run their plugin's code
//! as the master's user.
//!
//! # The conversation never blocks the master
//!
//! Until this release the master sent a request and then waited (up to a second) for the zygote's answer, the
//! new pid: a zygote that was stopped (SIGSTOP), starved or hung stalled the whole master, every other worker's
//! supervision included, for that second per spawn. Now a request is only sent (`sendmsg` on the zygote's
//! non-blocking request queue, read by the zygote's waiting spare or by the zygote itself, see
//! [`crate::zygote`]) and recorded as a *pending spawn*, keyed by the scoreboard cell claimed for it
//! ([`PendingSpawn`]); the master goes back to its loop. The new worker's first act is a
//! `Report::Spawned { pid, cell }` on the shared report pipe, which the master reads first on every wake-up:
//! only then does the worker exist for the master (its slot, its output streams, its `init` deadline).
//!
//! - **Ordering.** The worker writes `Spawned` before anything else, so in the pipe it comes before the
//!   worker's own `Ready` or `Failed`, and it is written before the worker can exit: when the master reaps a
//!   child it does not know while spawns are pending, it reads the pipe again and finds the record there.
//! - **Occupancy.** A pending spawn occupies its slot (no second worker is started for it), counts against a
//!   rollout's surge and keeps a start undecided, exactly like a worker that is starting.
//! - **A zygote that does not answer.** Each pending spawn has a deadline ([`ANSWER_DEADLINE`]). When it
//!   passes, the zygote is killed and its pending spawns are *abandoned*: their slots are free again and filled
//!   at once, forked cold (the zygote is gone), so a stopped zygote (or a stopped spare, which leaves the queue
//!   unread) costs at most that delay for the slots it was asked for and nothing for any other slot. A zygote
//!   that dies is handled the same way when it is reaped. The master's ends of its sockets close with its
//!   record (killed, forgotten, or all of them at a stop): its spares see the queue hang up and end unread.
//!   A worker it (or its spare) may still have started for an abandoned spawn reports itself later and is
//!   killed on the spot; its scoreboard cell stays reserved until then (a cell whose worker never appears stays
//!   reserved: one 64-byte cell per request a dying zygote or spare swallowed, out of 4096).
//! - **A failed clone** is a `Report::SpawnFailed { cell }` from the zygote: the slot backs off like a failed
//!   fork.
//!
//! Measured (2 cores, `--execute-times 1 --execute-usleep 0`, 2 slots): the master's blocking wait was two
//! context switches per spawn while the zygote cloned; without it the master handles other events meanwhile.
//!
//! # Reports ride on other wake-ups
//!
//! A warm worker writes two reports early in its life, `Spawned` and, after `init`, `Ready`, and each could
//! wake the master on its own. Outside a start or a rollout (which wait for workers' `Ready`) neither needs the
//! master at once: it reads the pipe first on every wake-up, so a worker's reports are always read before its
//! exit is handled, before a `status` answer, before a stop or a scale. So once it has sent a request, the
//! master leaves the report pipe out of its wait for [`REPORT_HOLD`], and its timer ends the hold if nothing
//! else woke it first. Later requests do not extend a hold: at most one timer wake-up per hold. What a hold
//! delays, by at most that long: the start of a worker's `init` deadline, the watch on its output (its pipes
//! hold 64 KiB meanwhile), the cold fallback after a failed clone, and the status file's view of the worker.
//!
//! Measured in a churn of one-call workers (2 slots, `--execute-times 1 --execute-usleep 0`, 2 cores; one binary,
//! the hold switched on and off, runs interleaved): the master's `poll`s per worker 1.29 → 0.80 (half of its
//! wake-ups had been for a report alone), context switches per worker, all processes, 4.9 → 3.4, the master's
//! CPU per worker 56 → 51 and 69 → 62 µs in two series; timer re-arms per worker 0.05 → 0.18 (one per hold).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::{ForkResult, Pid, fork};
use tracing::{debug, warn};

use super::core::Master;
use super::deadlines::Due;
use super::state::Build;
use crate::scoreboard::CellIndex;
use crate::sysinfo::Mono;
use crate::zygote::{self, Request, TaskTemplate};

/// How long a ready zygote may take to clone a worker that reports itself before the master gives up on the
/// zygote (a healthy one takes well under a millisecond; this bounds one that is stopped or hung, and only
/// delays the slots it was asked for). Not shorter: a start of 1024 debug-build workers on a loaded 2-core
/// machine saw a healthy zygote's worker report after more than 1 s.
pub(super) const ANSWER_DEADLINE: Duration = Duration::from_secs(3);

/// How long the master leaves the report pipe out of its wait after a request (see "Reports ride on other
/// wake-ups" in the module docs): several lives of a one-call worker (~0.25 ms each on 2 cores), nothing a
/// person or a deadline notices.
const REPORT_HOLD: Duration = Duration::from_millis(2);

/// A worker asked of a zygote that has not reported its pid yet.
pub(super) struct PendingSpawn {
    pub(super) zygote: Pid,
    pub(super) task: usize,
    pub(super) slot: u32,
    pub(super) build: Build,
    pub(super) init_timeout: Duration,
    /// Its output pipes (the write ends also went to the zygote).
    pub(super) pipes: Option<super::capture::Watched>,
    pub(super) title: String,
    /// Given up (the zygote was killed or died) if it has not reported by then.
    pub(super) answer_by: Mono,
    /// The zygote was given up on: the slot was freed; a worker that still reports for it is killed.
    pub(super) abandoned: bool,
}

/// One zygote process and the master's ends of its two sockets. Dropping it (when the zygote is killed or
/// forgotten) closes both: its spares, which read the queue, see it hang up and end.
pub(super) struct Zygote {
    pub(super) pid: Pid,
    /// The build it serves: a generation and a staged plugin, for every task that runs that build.
    generation: u32,
    sha256: String,
    /// The tasks whose template it was given (the first one at its fork).
    tasks: Vec<usize>,
    /// The ready byte and the templates.
    control: OwnedFd,
    /// The requests, read by the zygote's spare or the zygote itself.
    queue: OwnedFd,
    ready: bool,
}

impl Zygote {
    fn serves(&self, build: &Build) -> bool {
        self.generation == build.generation && self.sha256 == build.plugin.sha256
    }
}

impl Master {
    /// Asks the zygote of `build` for a worker in `slot`: `true` when the request was sent (the worker reports
    /// itself later, see the module docs), `false` when there is no ready zygote (the caller then forks the worker
    /// itself). Starts the zygote if the build has none.
    pub(super) fn request_warm_spawn(
        &mut self,
        task: usize,
        slot: u32,
        build: &Build,
        cell: CellIndex,
        output: Option<&super::capture::WorkerEnds>,
    ) -> bool {
        if build.process.user.is_some() || build.process.group.is_some() {
            // A zygote loads the plugin (running its constructors) as the master's user: a task that runs as
            // another user is always forked cold, so none of its code runs with the master's privileges.
            return false;
        }
        let index = match self.zygotes.iter().position(|z| z.serves(build)) {
            Some(index) => index,
            None => {
                // Also during a start: workers spawned once it has loaded (a start's later spawns) share its
                // relocated plugin pages, so their memory is smaller than that of cold ones.
                self.start_zygote(task, build);
                return false;
            }
        };
        if !self.zygotes[index].ready && !self.zygotes[index].check_ready() {
            return false;
        }
        if !self.zygotes[index].tasks.contains(&task) {
            // The first request of this task to a zygote its build shares with other tasks: its settings first.
            let title = self.host.worker_title(&self.tasks[task].settings.name);
            let template = TaskTemplate::of(task as u32, &self.worker_spec(task, 0, build, title, None));
            let zygote = &mut self.zygotes[index];
            if let Err(e) = zygote::send_template(&zygote.control, &template) {
                debug!(pid = zygote.pid.as_raw(), "cannot give the zygote a task's settings: {e}; spawning cold");
                return false;
            }
            zygote.tasks.push(task);
        }
        let zygote = &self.zygotes[index];
        let request = Request { task: task as u32, slot, cell: cell.0 as u32, output: output.is_some() };
        let ends = output.map(|ends| [ends.stdout.as_raw_fd(), ends.stderr.as_raw_fd()]);
        match zygote::send(&zygote.queue, request, ends) {
            Ok(()) => {
                self.hold_reports();
                true
            }
            Err(e) => {
                // Full (it stopped reading) or gone: spawn cold now; the answer deadlines of what it was already
                // asked settle its fate.
                debug!(pid = zygote.pid.as_raw(), "cannot ask the zygote for a worker: {e}; spawning cold");
                false
            }
        }
    }

    /// Tells every zygote that `pid`, a child this master did not know of, ended: a zygote whose spare it was
    /// clones the next one (see `zygote`, "Spares"). A notice that does not fit (a zygote not reading) is
    /// dropped: that zygote counts a spare too many until it is replaced, and if that leaves it no spare alive,
    /// its requests meet the answer deadline.
    pub(super) fn tell_zygotes_of_an_end(&self, pid: Pid) {
        for zygote in &self.zygotes {
            let _ = zygote::send_gone(&zygote.control, pid.as_raw());
        }
    }

    /// Starts a hold on reports unless one runs, or a start or a rollout waits for them (see the module docs).
    fn hold_reports(&mut self) {
        if self.reports_held_until.is_none() && self.startup.is_none() && self.rollout.is_none() {
            self.reports_held_until = Some(Mono::now() + REPORT_HOLD);
        }
    }

    /// Whether the master's next wait watches the report pipe: not during a hold; a hold ends when it has passed
    /// or a start or a rollout began meanwhile.
    pub(super) fn reports_watched(&mut self) -> bool {
        if let Some(until) = self.reports_held_until {
            if self.startup.is_none() && self.rollout.is_none() && Mono::now() < until {
                return false;
            }
            self.reports_held_until = None;
        }
        true
    }

    /// Records a request sent to a zygote: the slot is taken until the worker reports (or the deadline passes).
    #[expect(clippy::too_many_arguments, reason = "the parts of one spawn, passed on from spawn_worker")]
    pub(super) fn await_warm_spawn(
        &mut self,
        task: usize,
        slot: u32,
        build: &Build,
        cell: CellIndex,
        init_timeout: Duration,
        pipes: Option<super::capture::Watched>,
        title: String,
    ) {
        let zygote = self.zygotes.iter().find(|z| z.serves(build)).map_or(Pid::from_raw(0), |z| z.pid);
        let answer_by = Mono::now() + ANSWER_DEADLINE;
        let pending = PendingSpawn {
            zygote,
            task,
            slot,
            build: build.clone(),
            init_timeout,
            pipes,
            title,
            answer_by,
            abandoned: false,
        };
        self.spawning.insert(cell, pending);
        // Only a slot's first worker holds a start (see `register_worker`).
        let first_wave = self.tasks[task].slots.get(slot as usize).is_none_or(|state| state.spawned == 0);
        if let Some(state) = self.tasks[task].slots.get_mut(slot as usize) {
            state.requested += 1;
        }
        if first_wave && let Some(startup) = &mut self.startup {
            startup.requested.insert(cell);
        }
        self.set_deadline(answer_by, Due::Answer(cell));
    }

    /// A worker a zygote cloned reported its pid: it becomes a worker like any other (or is killed at once if
    /// its request was given up on).
    pub(super) fn on_warm_spawned(&mut self, pid: Pid, cell: CellIndex) {
        let Some(pending) = self.spawning.remove(&cell) else {
            // Not a request of ours (a worker of a previous image, or garbage): leave it to reaping.
            debug!(pid = pid.as_raw(), cell = cell.0, "a spawn report for no pending request");
            return;
        };
        if !pending.abandoned {
            self.settle_request(pending.task, pending.slot, cell);
        }
        debug!(slot = pending.slot, pid = pid.as_raw(), generation = pending.build.generation, "worker spawned warm");
        let PendingSpawn { task, slot, build, init_timeout, pipes, title, abandoned, .. } = pending;
        let rollout_new = self.rollout.as_ref().is_some_and(|r| r.generation == build.generation);
        self.on_spawned(pid, task, slot, &build, cell, init_timeout, pipes, title);
        let stopping = matches!(self.phase, super::core::HostPhase::Stopping { .. });
        // A stop ends the zygotes as it begins and gives up on their requests, but a worker already cloned
        // still reports: during a stop it is stopped gracefully below like every other worker (killing it
        // would make a graceful stop report itself as forced).
        if abandoned && !stopping {
            // Its slot was refilled, cold: a start does not wait for it, and its end is no start failure.
            if let Some(startup) = &mut self.startup {
                startup.pending.remove(&pid);
            }
            warn!(pid = pid.as_raw(), slot, "a worker of a zygote that was given up on reported late: killed");
            self.discard_worker(pid);
            return;
        }
        if rollout_new
            && let Some(rollout) = &mut self.rollout
            && rollout.answered(cell, pid)
        {
            return;
        }
        if stopping {
            // Asked for before the stop: it goes the way of every other worker.
            self.stop_worker(pid);
        }
    }

    /// A zygote could not clone the worker asked for with `cell`: the slot backs off like a failed fork.
    pub(super) fn on_warm_spawn_failed(&mut self, cell: CellIndex) {
        let Some(pending) = self.spawning.remove(&cell) else { return };
        if !pending.abandoned {
            self.settle_request(pending.task, pending.slot, cell);
            if let Some(rollout) = &mut self.rollout {
                rollout.unanswered(cell);
            }
            self.on_fork_failure(pending.task, pending.slot, nix::errno::Errno::EAGAIN);
        }
        self.board.release(cell);
    }

    /// A pending request is settled (answered, failed or abandoned): it no longer holds its slot or a start.
    fn settle_request(&mut self, task: usize, slot: u32, cell: CellIndex) {
        if let Some(state) = self.tasks.get_mut(task).and_then(|t| t.slots.get_mut(slot as usize)) {
            state.requested = state.requested.saturating_sub(1);
        }
        if let Some(startup) = &mut self.startup {
            startup.requested.remove(&cell);
        }
        self.recheck_slot(task, slot);
    }

    /// A zygote did not get a worker to report in time (`cell`'s deadline passed): it is killed and every request
    /// it still holds is given up on.
    pub(super) fn on_answer_overdue(&mut self, cell: CellIndex) {
        let Some(zygote) = self.spawning.get(&cell).map(|p| p.zygote) else { return };
        warn!(
            pid = zygote.as_raw(),
            timeout_ms = ANSWER_DEADLINE.as_millis() as u64,
            "a zygote did not start a worker in time: killed, its slots are spawned cold"
        );
        let _ = kill(zygote, Signal::SIGKILL);
        self.zygotes.retain(|z| z.pid != zygote);
        self.abandon_requests_of(zygote);
    }

    /// Gives up on every request `zygote` still holds: the slots are free again (and refilled, cold).
    fn abandon_requests_of(&mut self, zygote: Pid) {
        let cells: Vec<CellIndex> =
            self.spawning.iter().filter(|(_, p)| p.zygote == zygote && !p.abandoned).map(|(cell, _)| *cell).collect();
        for cell in cells {
            let Some(pending) = self.spawning.get_mut(&cell) else { continue };
            pending.abandoned = true;
            // Its output pipes are closed: a worker that still reports is killed, never read.
            pending.pipes = None;
            let (task, slot) = (pending.task, pending.slot);
            self.settle_request(task, slot, cell);
            if let Some(rollout) = &mut self.rollout {
                rollout.unanswered(cell);
            }
        }
    }

    /// Before an upgrade: waits (bounded by [`ANSWER_DEADLINE`]) until every worker asked of a zygote reported,
    /// so that the new image, which knows only workers, inherits no spawn in flight. Upgrades are rare and
    /// asked for; this is the only place the master waits for a zygote.
    pub(super) fn settle_spawns(&mut self) -> Result<(), String> {
        use std::os::fd::AsFd;
        let until = Mono::now() + ANSWER_DEADLINE;
        while self.spawns_pending() {
            let now = Mono::now();
            if now >= until {
                return Err("a zygote did not start a worker it was asked for; try again".to_owned());
            }
            let mut fds = [nix::poll::PollFd::new(self.reports.as_fd(), nix::poll::PollFlags::POLLIN)];
            let timeout = nix::poll::PollTimeout::try_from(until.since(now)).unwrap_or(nix::poll::PollTimeout::MAX);
            let _ = nix::poll::poll(&mut fds, timeout);
            self.read_reports();
        }
        Ok(())
    }

    /// Spawns the master still waits for (not given up on).
    pub(super) fn spawns_pending(&self) -> bool {
        self.spawning.values().any(|p| !p.abandoned)
    }

    /// Forks a zygote for `build` of `task` (it becomes usable once it says it loaded the plugin).
    fn start_zygote(&mut self, task: usize, build: &Build) {
        let pair = || {
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
        };
        let ((control, their_control), (queue, their_queue)) = match pair().and_then(|c| Ok((c, pair()?))) {
            Ok(pairs) => pairs,
            Err(e) => {
                debug!("cannot make a zygote's sockets: {e}");
                return;
            }
        };
        // Non-blocking: the master never waits for a zygote (a full queue means "spawn cold"), and the zygote and
        // its spares read their ends after a poll, without waiting.
        let title = self.host.worker_title(&self.tasks[task].settings.name);
        let template = self.worker_spec(task, 0, build, title, None);
        super::footprint::join_own_code();
        // SAFETY: as for a worker (see `spawn_worker`): the master is single-threaded and the child runs only
        // `zygote::run`, which never returns into the master's code.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop((control, queue));
                let board: *const crate::scoreboard::Scoreboard = &self.board;
                // SAFETY: the scoreboard lives in the master's memory image, which this child owns a copy of
                // for its whole life: `zygote::run` never returns, so nothing drops it.
                zygote::run(task as u32, template, unsafe { &*board }, their_control, their_queue)
            }
            Ok(ForkResult::Parent { child }) => {
                let _ = nix::unistd::setpgid(child, child);
                debug!(pid = child.as_raw(), generation = build.generation, "zygote started");
                self.zygotes.push(Zygote {
                    pid: child,
                    generation: build.generation,
                    sha256: build.plugin.sha256.clone(),
                    tasks: vec![task],
                    control,
                    queue,
                    ready: false,
                });
            }
            Err(e) => debug!("cannot fork a zygote: {e}"),
        }
    }

    /// A reaped child that was a zygote is forgotten (the next spawn of its build starts another). Returns whether
    /// it was one.
    pub(super) fn forget_zygote(&mut self, pid: Pid) -> bool {
        let Some(index) = self.zygotes.iter().position(|z| z.pid == pid) else { return false };
        let zygote = self.zygotes.swap_remove(index);
        debug!(pid = pid.as_raw(), generation = zygote.generation, "zygote ended");
        self.abandon_requests_of(pid);
        true
    }

    /// Kills the zygotes of builds no task or slot runs any more.
    pub(super) fn prune_zygotes(&mut self) {
        let in_use = |zygote: &Zygote| {
            zygote.tasks.iter().any(|&task| {
                self.tasks.get(task).is_some_and(|t| {
                    !t.retired
                        && (zygote.serves(&t.build)
                            || t.slots.iter().any(|s| s.build.as_ref().is_some_and(|b| zygote.serves(b))))
                })
            })
        };
        let stale: Vec<Pid> = self.zygotes.iter().filter(|z| !in_use(z)).map(|z| z.pid).collect();
        for pid in stale {
            debug!(pid = pid.as_raw(), "zygote of a build no longer run: killed");
            let _ = kill(pid, Signal::SIGKILL);
            self.zygotes.retain(|z| z.pid != pid);
            self.abandon_requests_of(pid);
        }
    }

    /// Ends every zygote as a stop begins: no spawn is asked for any more, and the zygotes' ends (each tears down
    /// a loaded plugin) overlap the workers' instead of following them. They are reaped like any child.
    pub(super) fn end_zygotes(&mut self) {
        let pids: Vec<Pid> = self.zygotes.drain(..).map(|z| z.pid).collect();
        for pid in pids {
            let _ = kill(pid, Signal::SIGKILL);
            self.abandon_requests_of(pid);
        }
    }

    /// Kills and reaps every zygote (the master is leaving, or re-executing itself): all are killed first, so
    /// they end in parallel.
    pub(super) fn kill_zygotes(&mut self) {
        for zygote in &self.zygotes {
            let _ = kill(zygote.pid, Signal::SIGKILL);
        }
        for zygote in self.zygotes.drain(..) {
            let _ = nix::sys::wait::waitpid(zygote.pid, None);
        }
    }
}

impl Zygote {
    /// Whether the zygote said it loaded its plugin (reads its ready byte without waiting).
    fn check_ready(&mut self) -> bool {
        let mut byte = [0u8; 1];
        if let Ok(1) = nix::unistd::read(&self.control, &mut byte) {
            self.ready = byte[0] == zygote::READY;
        }
        self.ready
    }
}
