//! Warm spawns: the master's side of the zygotes (see [`crate::zygote`] for the design and why).
//!
//! The master keeps at most one zygote per (task, generation). A spawn asks the build's zygote when it is ready
//! and falls back to a cold fork otherwise (no zygote yet, still loading, dead, or not answering): a zygote is a
//! cache, never a dependency. A zygote whose build no task or slot runs any more (after a rollout or a rollback)
//! is killed; one that dies is forgotten when it is reaped and started again by the next spawn of its build.
//! Tasks that run as another user (`user`, `group`) never use a zygote: it would run their plugin's code as the
//! master's user.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::{ForkResult, Pid, fork};
use tracing::{debug, warn};

use super::core::Master;
use super::state::Build;
use crate::scoreboard::CellIndex;
use crate::zygote::{self, Request};

/// How long a ready zygote may take to answer a request before the master gives up on it (it answers in
/// microseconds; this only bounds a zygote that hangs).
const ANSWER_DEADLINE: Duration = Duration::from_secs(1);

/// One zygote process and the master's end of its socket.
pub(super) struct Zygote {
    pub(super) pid: Pid,
    task: usize,
    generation: u32,
    socket: OwnedFd,
    ready: bool,
}

impl Master {
    /// Asks the zygote of `build` for a worker in `slot`; `None` when there is none ready (the caller then forks
    /// the worker itself). Starts the zygote if the build has none.
    pub(super) fn warm_spawn(
        &mut self,
        task: usize,
        slot: u32,
        build: &Build,
        cell: CellIndex,
        output: Option<&super::capture::WorkerEnds>,
    ) -> Option<Pid> {
        if build.process.user.is_some() || build.process.group.is_some() {
            // A zygote loads the plugin (running its constructors) as the master's user: a task that runs as
            // another user is always forked cold, so none of its code runs with the master's privileges.
            return None;
        }
        let index = match self.zygotes.iter().position(|z| z.task == task && z.generation == build.generation) {
            Some(index) => index,
            None => {
                self.start_zygote(task, build);
                return None;
            }
        };
        if !self.zygotes[index].ready && !self.zygotes[index].check_ready() {
            return None;
        }
        let zygote = &self.zygotes[index];
        let request = Request { slot, cell: cell.0 as u32, output: output.is_some() };
        let ends = output.map(|ends| [ends.stdout.as_raw_fd(), ends.stderr.as_raw_fd()]);
        match zygote::send(&zygote.socket, request, ends).ok().and_then(|()| zygote.answer()) {
            Some(pid) => Some(pid),
            None => {
                let zygote = self.zygotes.swap_remove(index);
                warn!(pid = zygote.pid.as_raw(), "a zygote did not answer: killed, spawning cold");
                let _ = kill(zygote.pid, Signal::SIGKILL);
                None
            }
        }
    }

    /// Forks a zygote for `build` of `task` (it becomes usable once it says it loaded the plugin).
    fn start_zygote(&mut self, task: usize, build: &Build) {
        let (ours, theirs) = match socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            Ok(pair) => pair,
            Err(e) => {
                debug!("cannot make a zygote's socket: {e}");
                return;
            }
        };
        // The zygote blocks on its end; ours stays non-blocking (answers are awaited with poll).
        let _ = nix::fcntl::fcntl(&theirs, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()));
        let title = self.host.worker_title(&self.tasks[task].settings.name);
        let template = self.worker_spec(task, 0, build, title, None);
        // SAFETY: as for a worker (see `spawn_worker`): the master is single-threaded and the child runs only
        // `zygote::run`, which never returns into the master's code.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(ours);
                let board: *const crate::scoreboard::Scoreboard = &self.board;
                // SAFETY: the scoreboard lives in the master's memory image, which this child owns a copy of
                // for its whole life: `zygote::run` never returns, so nothing drops it.
                zygote::run(template, unsafe { &*board }, theirs)
            }
            Ok(ForkResult::Parent { child }) => {
                let _ = nix::unistd::setpgid(child, child);
                debug!(pid = child.as_raw(), generation = build.generation, "zygote started");
                self.zygotes.push(Zygote {
                    pid: child,
                    task,
                    generation: build.generation,
                    socket: ours,
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
        true
    }

    /// Kills the zygotes of builds no task or slot runs any more.
    pub(super) fn prune_zygotes(&mut self) {
        let in_use = |task: usize, generation: u32| {
            self.tasks.get(task).is_some_and(|t| {
                !t.retired
                    && (t.build.generation == generation
                        || t.slots.iter().any(|s| s.build.as_ref().is_some_and(|b| b.generation == generation)))
            })
        };
        let stale: Vec<Pid> = self.zygotes.iter().filter(|z| !in_use(z.task, z.generation)).map(|z| z.pid).collect();
        for pid in stale {
            debug!(pid = pid.as_raw(), "zygote of a build no longer run: killed");
            let _ = kill(pid, Signal::SIGKILL);
            self.zygotes.retain(|z| z.pid != pid);
        }
    }

    /// Kills and reaps every zygote (the master is leaving).
    pub(super) fn kill_zygotes(&mut self) {
        for zygote in self.zygotes.drain(..) {
            let _ = kill(zygote.pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(zygote.pid, None);
        }
    }
}

impl Zygote {
    /// Whether the zygote said it loaded its plugin (reads its ready byte without waiting).
    fn check_ready(&mut self) -> bool {
        let mut byte = [0u8; 1];
        if let Ok(1) = nix::unistd::read(&self.socket, &mut byte) {
            self.ready = byte[0] == zygote::READY;
        }
        self.ready
    }

    /// Waits (bounded) for the pid of the worker the zygote just cloned.
    fn answer(&self) -> Option<Pid> {
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(ANSWER_DEADLINE).unwrap_or(PollTimeout::MAX);
        loop {
            match poll(&mut fds, timeout) {
                Ok(0) => return None,
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
        }
        let mut bytes = [0u8; 4];
        match nix::unistd::read(&self.socket, &mut bytes) {
            Ok(4) => zygote::decode_answer(&bytes),
            _ => None,
        }
    }
}
