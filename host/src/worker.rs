//! A worker process, from the moment after `fork` to its exit: set up the process, load the staged plugin,
//! `init`, then the work loop within the task's limits.
//!
//! Stop requests arrive as SIGTERM (or SIGINT) from the master. The handler sets a flag and writes to the
//! worker's stop eventfd (both async-signal-safe): a `work` call in flight is never interrupted, the sleep
//! between calls is (it waits on the eventfd), and the plugin sees the request through `stop_requested()` (the
//! flag, free to check) and `stop_fd()` / `sleep()` (the eventfd, to wake a job blocked in I/O or a pause).
//! No thread and no work-path cost: the eventfd is touched only by the handler and by waits.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

use abi_stable::std_types::{RSome, RStr};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction, sigprocmask};
use nix::unistd::Pid;
use pmhost_plugin_api::ffi::{HostLogger, InitFailure, WorkResult};
use pmhost_plugin_api::{InitContext, WorkContext};
use tracing::{debug, error, warn};

use crate::exit::worker as code;
use crate::plugin::{self, StagedPlugin};
use crate::report::{self, Report};
use crate::scoreboard::{Cell, Phase};
use crate::settings::Limits;
use crate::title;

/// Set by the stop-signal handler. A process-wide static because a signal handler can reach nothing else;
/// each worker process has its own copy.
static STOP: AtomicBool = AtomicBool::new(false);
/// The worker's stop eventfd (-1 until `prepare_process` opens it): the handler writes to it; it stays open for
/// the worker's life, since plugins may keep it registered.
static STOP_EVENT: AtomicI32 = AtomicI32::new(-1);
/// The master's pid, for the handler to tell a stop request from the master's death (see `on_stop_signal`).
static MASTER_PID: AtomicI32 = AtomicI32::new(0);

/// Seconds an orphaned worker gets to finish its call and shut down before SIGALRM ends it.
const ORPHAN_GRACE_SECS: u32 = 1;

/// Everything a worker needs, prepared by the master before the fork.
pub struct WorkerSpec {
    /// Task name.
    pub task: String,
    /// Worker slot.
    pub slot: u32,
    /// Rollout generation.
    pub generation: u32,
    /// The staged plugin to load.
    pub plugin: StagedPlugin,
    /// Pacing and retirement.
    pub limits: Limits,
    /// The task's config as JSON.
    pub config_json: String,
    /// Process title.
    pub title: String,
    /// The master's pid.
    pub master: Pid,
    /// Write end of the report pipe.
    pub report_fd: RawFd,
    /// Master-only descriptors to close (never unlock: see `pidfile`).
    pub close_fds: Vec<RawFd>,
    /// The most verbose level the plugin should forward (0 off .. 5 trace).
    pub plugin_log_level: u8,
}

/// Why the work loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopEnd {
    Stopped,
    ExecuteTimes,
    LimitSeconds,
    Retired,
}

/// Runs the worker; never returns.
pub fn run(spec: WorkerSpec, cell: &'static Cell) -> ! {
    let pid = std::process::id() as i32;
    let span = tracing::info_span!("worker", task = %spec.task, slot = spec.slot, pid, generation = spec.generation);
    let _entered = span.enter();
    if let Err(e) = prepare_process(&spec) {
        error!("worker setup failed: {e}");
        report::send(spec.report_fd, &Report::Failed { pid, message: format!("worker setup failed: {e}") });
        exit(code::SETUP_FAILED);
    }
    title::set(&spec.title);
    crate::logging::set_title(&spec.title);

    let module = match plugin::load(&spec.plugin.staged, &spec.plugin.original) {
        Ok(module) => module,
        Err(e) => {
            error!("{e}");
            report::send(spec.report_fd, &Report::Failed { pid, message: e.to_string() });
            exit(code::LOAD_FAILED);
        }
    };

    cell.set_phase(Phase::Initializing);
    let logger = HostLogger { max_level: spec.plugin_log_level, log: host_log };
    let stop_fd = STOP_EVENT.load(Ordering::Relaxed);
    let init_ctx =
        InitContext::new(&spec.task, &spec.config_json, spec.slot, spec.generation, pid, &STOP, stop_fd, logger);
    let mut job = match (module.init())(&init_ctx).into_result() {
        Ok(job) => job,
        Err(failure) => {
            let message = match failure {
                InitFailure::Failed(message) => format!("plugin init failed: {message}"),
                InitFailure::Panicked(message) => format!("plugin init panicked: {message}"),
            };
            error!("{message}");
            report::send(spec.report_fd, &Report::Failed { pid, message });
            exit(code::INIT_FAILED);
        }
    };
    cell.set_phase(Phase::Running);
    report::send(spec.report_fd, &Report::Ready { pid });
    debug!("worker ready");

    let mut ctx = WorkContext::new(spec.slot, spec.generation, &STOP, stop_fd);
    let limits = spec.limits.jittered(pid as u64 ^ crate::sysinfo::monotonic_ns());
    let deadline = limits.limit_seconds.map(|limit| Instant::now() + limit);
    let mut finished: u64 = 0;
    let end = loop {
        if STOP.load(Ordering::Relaxed) {
            break LoopEnd::Stopped;
        }
        ctx.set_execution(finished + 1);
        cell.begin_work(finished);
        let result = job.work(&ctx);
        finished += 1;
        cell.end_work(finished);
        match result {
            WorkResult::Continue => {}
            WorkResult::Retire => break LoopEnd::Retired,
            WorkResult::Failed(message) => error!(call = finished, "work failed: {message}"),
            WorkResult::Panicked(message) => {
                error!(call = finished, "plugin panicked in work: {message}");
                exit(code::PANICKED);
            }
        }
        if limits.execute_times != 0 && finished >= limits.execute_times {
            break LoopEnd::ExecuteTimes;
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break LoopEnd::LimitSeconds;
        }
        if !spec.limits.execute_usleep.is_zero() && !ctx.sleep(spec.limits.execute_usleep) {
            break LoopEnd::Stopped;
        }
    };
    cell.set_phase(if end == LoopEnd::Stopped { Phase::Stopping } else { Phase::Retiring });
    debug!(calls = finished, reason = ?end, "work loop ended");
    if let RSome(message) = job.shutdown() {
        error!("plugin panicked in shutdown: {message}");
        exit(code::PANICKED);
    }
    // Keep the task's rhythm across the respawn: a worker that retires after its last call still waits
    // `execute_usleep` (interruptibly), so `execute_times = 1` means one call per pause, not a fork loop.
    if matches!(end, LoopEnd::ExecuteTimes | LoopEnd::LimitSeconds) && !spec.limits.execute_usleep.is_zero() {
        ctx.sleep(spec.limits.execute_usleep);
    }
    exit(code::OK)
}

/// Process setup after fork, before any plugin code runs.
fn prepare_process(spec: &WorkerSpec) -> nix::Result<()> {
    for fd in &spec.close_fds {
        // SAFETY: these descriptors belong to the master's event loop and pid file; this process never uses them.
        unsafe { libc::close(*fd) };
    }
    // Own process group (the master sets it too, whichever runs first): stopping the worker reaches the
    // processes its plugin spawned, and the terminal's Ctrl-C reaches only the master.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    MASTER_PID.store(spec.master.as_raw(), Ordering::Relaxed);
    // Opened before the handler is installed, so the handler never sees a stop request it cannot signal.
    STOP_EVENT.store(open_stop_event()?.into_raw_fd(), Ordering::Relaxed);
    let handler = SigAction::new(SigHandler::Handler(on_stop_signal), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only touches atomics and errno and calls async-signal-safe write/getppid/alarm.
    unsafe {
        sigaction(Signal::SIGTERM, &handler)?;
        sigaction(Signal::SIGINT, &handler)?;
    }
    // The master blocks its signals to read them from a signalfd; the mask survives fork and must not leak
    // into plugin code (or into processes the plugin spawns).
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    set_rlimits(&spec.limits.rlimits)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    // The master may have died between fork and prctl: then no signal will ever come.
    if nix::unistd::getppid() != spec.master {
        warn!("master exited before the worker started");
        exit(code::ORPHANED);
    }
    Ok(())
}

/// Applies the task's resource limits (soft and hard) before any plugin code runs.
fn set_rlimits(rlimits: &crate::settings::Rlimits) -> nix::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    let limits = [
        (Resource::RLIMIT_NOFILE, rlimits.nofile),
        (Resource::RLIMIT_AS, rlimits.address_space),
        (Resource::RLIMIT_CORE, rlimits.core),
    ];
    for (resource, value) in limits {
        if let Some(value) = value {
            setrlimit(resource, value, value)?;
        }
    }
    Ok(())
}

/// A fresh eventfd for stop requests (close-on-exec: processes the plugin starts do not inherit it;
/// non-blocking: the handler's write can never block).
pub fn open_stop_event() -> nix::Result<OwnedFd> {
    // SAFETY: eventfd with valid flags returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::Release);
    let event = STOP_EVENT.load(Ordering::Relaxed);
    if event >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write is async-signal-safe; 8 bytes from a live buffer to the eventfd, which is never closed.
        // errno is saved and restored, as the interrupted code may be about to read it.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(event, one.as_ptr().cast(), one.len());
            *libc::__errno_location() = errno;
        }
    }
    // A stop signal while our parent is no longer the master is PR_SET_PDEATHSIG: the master died. Nobody will
    // escalate, so give the call in flight a short grace and let SIGALRM's default action end the process.
    // SAFETY: getppid and alarm are async-signal-safe.
    unsafe {
        if libc::getppid() != MASTER_PID.load(Ordering::Relaxed) {
            libc::alarm(ORPHAN_GRACE_SECS);
        }
    }
}

fn exit(code: i32) -> ! {
    std::process::exit(code)
}

/// Receives the plugin's `tracing` events (through the bridge) and records them in the host's subscriber, under
/// the worker span, with target `pmhost::run` so they land in the run log.
pub(crate) extern "C" fn host_log(level: u8, target: RStr<'_>, message: RStr<'_>) {
    let (target, message) = (target.as_str(), message.as_str());
    match level {
        1 => tracing::error!(target: crate::logging::RUN_TARGET, plugin = target, "{message}"),
        2 => tracing::warn!(target: crate::logging::RUN_TARGET, plugin = target, "{message}"),
        3 => tracing::info!(target: crate::logging::RUN_TARGET, plugin = target, "{message}"),
        4 => tracing::debug!(target: crate::logging::RUN_TARGET, plugin = target, "{message}"),
        _ => tracing::trace!(target: crate::logging::RUN_TARGET, plugin = target, "{message}"),
    }
}
