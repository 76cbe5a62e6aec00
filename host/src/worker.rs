//! A worker process, from the moment after `fork` to its exit: set up the process, load the staged plugin,
//! `init`, then the work loop within the task's limits.
//!
//! Stop requests arrive as SIGTERM (or SIGINT) from the master. The handler sets a flag and writes to the
//! worker's stop eventfd (both async-signal-safe): a `work` call in flight is never interrupted, the sleep
//! between calls is (it waits on the eventfd), and the plugin sees the request through `stop_requested()` (the
//! flag, free to check) and `stop_fd()` / `sleep()` (the eventfd, to wake a job blocked in I/O or a pause).
//! No thread and no work-path cost: the eventfd is touched only by the handler and by waits.

use std::ffi::CString;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

use abi_stable::std_types::{RSome, RStr};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction, sigprocmask};
use nix::unistd::Pid;
use pmhost_plugin_api::ffi::{HostLogger, JobBox, PluginModuleRef, WorkResult, report as plugin_report};
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
#[derive(Clone)]
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
    /// Who the worker runs as and in which environment.
    pub process: std::sync::Arc<crate::settings::ProcessSettings>,
    /// Process title.
    pub title: String,
    /// The master's pid.
    pub master: Pid,
    /// Write end of the report pipe.
    pub report_fd: RawFd,
    /// The master's descriptors this worker keeps (its report pipe, its plugin build); every other one above
    /// stderr is closed (never unlocked: see `pidfile`), except the log files.
    pub keep_fds: Vec<RawFd>,
    /// The write ends of the capture pipes that become stdout and stderr (`None`: keep the master's).
    pub output: Option<(RawFd, RawFd)>,
    /// The open-file limit pmhost was started with, when the master raised its own (the task's `rlimit_nofile`
    /// wins).
    pub inherited_nofile: Option<u64>,
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

/// Runs the worker; never returns. `preloaded`: the plugin, when this worker was forked by a zygote that loaded
/// and checked it already (see `zygote`); else the worker loads it.
pub fn run(spec: WorkerSpec, cell: &'static Cell, preloaded: Option<PluginModuleRef>) -> ! {
    let pid = std::process::id() as i32;
    let span = tracing::info_span!("worker", task = %spec.task, slot = spec.slot, pid, generation = spec.generation);
    let _entered = span.enter();
    if let Err(e) = prepare_process(&spec) {
        fail(&spec, format!("worker setup failed: {e}"), code::SETUP_FAILED);
    }
    title::set(&spec.title);
    crate::logging::set_title(&spec.title);
    let mut job = start_job(&spec, cell, preloaded);
    cell.set_phase(Phase::Running);
    report::send(spec.report_fd, &Report::Ready { pid });
    debug!("worker ready");

    let mut ctx = WorkContext::new(spec.slot, spec.generation, &STOP, STOP_EVENT.load(Ordering::Relaxed));
    let limits = spec.limits.jittered(pid as u64 ^ crate::sysinfo::monotonic_ns());
    let (end, finished) = work_loop(&mut job, &mut ctx, cell, &limits);
    cell.set_phase(if end == LoopEnd::Stopped { Phase::Stopping } else { Phase::Retiring });
    if end == LoopEnd::Stopped {
        crate::zygote::footprint::forgo_learning();
    }
    debug!(calls = finished, reason = ?end, "work loop ended");
    if let RSome(message) = job.shutdown() {
        error!("{}", plugin_report::shutdown_panicked(&message));
        exit(code::PANICKED);
    }
    // Keep the task's rhythm across the respawn: a worker that retires after its last call still waits
    // `execute_usleep` (interruptibly), so `execute_times = 1` means one call per pause, not a fork loop.
    if matches!(end, LoopEnd::ExecuteTimes | LoopEnd::LimitSeconds) && !limits.execute_usleep.is_zero() {
        ctx.sleep(limits.execute_usleep);
    }
    exit(code::OK)
}

/// Reports why the worker cannot go on (the master records it as the reason) and exits with `exit_code`.
fn fail(spec: &WorkerSpec, message: String, exit_code: i32) -> ! {
    error!("{message}");
    report::send(spec.report_fd, &Report::Failed { pid: std::process::id() as i32, message });
    exit(exit_code)
}

/// Loads the staged build (unless a zygote already did: `preloaded`) and runs the job's `init`; a failure of
/// either ends the worker.
fn start_job(spec: &WorkerSpec, cell: &Cell, preloaded: Option<PluginModuleRef>) -> JobBox {
    let module = match preloaded {
        Some(module) => module,
        None => plugin::load(&spec.plugin.load_path(), &spec.plugin.original)
            .unwrap_or_else(|e| fail(spec, e.to_string(), code::LOAD_FAILED)),
    };
    cell.set_phase(Phase::Initializing);
    let logger = HostLogger { max_level: spec.plugin_log_level, log: host_log };
    let pid = std::process::id() as i32;
    let stop_fd = STOP_EVENT.load(Ordering::Relaxed);
    let init_ctx =
        InitContext::new(&spec.task, &spec.config_json, spec.slot, spec.generation, pid, &STOP, stop_fd, logger);
    match (module.init())(&init_ctx).into_result() {
        Ok(job) => job,
        Err(failure) => fail(spec, plugin_report::init_failure(&failure), code::INIT_FAILED),
    }
}

/// Calls `work` until a stop request, the limits, or the job retires; returns why it ended and the calls done.
/// The hot path: per call, two scoreboard stores and the limit checks, no syscall (the pause only when
/// `execute_usleep` is set).
fn work_loop(job: &mut JobBox, ctx: &mut WorkContext<'_>, cell: &Cell, limits: &Limits) -> (LoopEnd, u64) {
    let deadline = limits.limit_seconds.map(|limit| Instant::now() + limit);
    let mut finished: u64 = 0;
    let end = loop {
        if STOP.load(Ordering::Relaxed) {
            break LoopEnd::Stopped;
        }
        ctx.set_execution(finished + 1);
        if finished == 0 {
            cell.mark_first_call(crate::sysinfo::monotonic_ns());
        }
        cell.begin_work(finished);
        let result = job.work(ctx);
        finished += 1;
        cell.end_work(finished);
        match result {
            WorkResult::Continue => {}
            WorkResult::Retire => break LoopEnd::Retired,
            WorkResult::Failed(message) => error!(call = finished, "{}", plugin_report::work_failed(&message)),
            WorkResult::Panicked(message) => {
                error!(call = finished, "{}", plugin_report::work_panicked(&message));
                exit(code::PANICKED);
            }
        }
        if limits.execute_times != 0 && finished >= limits.execute_times {
            break LoopEnd::ExecuteTimes;
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break LoopEnd::LimitSeconds;
        }
        if !limits.execute_usleep.is_zero() && !ctx.sleep(limits.execute_usleep) {
            break LoopEnd::Stopped;
        }
    };
    (end, finished)
}

/// Why a worker could not prepare itself (before any plugin code ran).
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{0}")]
    Os(#[from] nix::Error),
    /// The messages carry the errno: they reach the user as one line through the report pipe.
    #[error("cannot set {setting} to {value}: {errno} (the hard limit is {hard}{note})")]
    Rlimit { setting: &'static str, value: u64, errno: nix::Error, hard: String, note: String },
    #[error(transparent)]
    Process(#[from] crate::identity::ProcessError),
}

/// Process setup after fork, before any plugin code runs.
fn prepare_process(spec: &WorkerSpec) -> Result<(), SetupError> {
    let mut keep = spec.keep_fds.clone();
    keep.extend(crate::logging::open_fds());
    if let Some((stdout, stderr)) = spec.output {
        // The worker's own log lines keep going where the master's stderr goes; what the plugin writes is
        // captured.
        let saved = nix::fcntl::fcntl(std::io::stderr(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
        keep.push(saved);
        crate::logging::set_stderr_fd(saved);
        for (from, to) in [(stdout, 1), (stderr, 2)] {
            // SAFETY: dup2 onto the standard descriptors, which this process owns; `from` is open.
            if unsafe { libc::dup2(from, to) } < 0 {
                return Err(nix::Error::last().into());
            }
        }
    }
    // A zygote's spare opened its stop event already (see `prepare_signals_and_group`).
    keep.extend(stop_event());
    close_all_but(&keep);
    prepare_signals_and_group(spec.master)?;
    if let (None, Some(soft)) = (spec.limits.rlimits.nofile, spec.inherited_nofile) {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
    }
    set_rlimits(&spec.limits.rlimits)?;
    // User, groups, environment, directory, umask, nice; after the limits (raising a hard limit needs the
    // master's privileges) and before the parent-death signal (a credential change clears it).
    crate::identity::apply(&spec.process, &[crate::master::WORKER_MARK])?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    // The master may have died between fork and prctl: then no signal will ever come.
    if nix::unistd::getppid() != spec.master {
        warn!("master exited before the worker started");
        exit(code::ORPHANED);
    }
    Ok(())
}

/// The part of a worker's setup that does not depend on its task: its own process group, the environment
/// mark, the stop event and handlers, and the signal mask. A zygote's spare does it while it waits for its
/// request (see `zygote`), off the path from the master's request to the first `work` call; done once.
pub(crate) fn prepare_signals_and_group(master: Pid) -> nix::Result<()> {
    if stop_event().is_some() {
        return Ok(());
    }
    // Own process group (the master sets it too, whichever runs first): stopping the worker reaches the
    // processes its plugin spawned, and the terminal's Ctrl-C reaches only the master.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // Every descendant inherits this mark; the master ends marked processes left behind when a worker ends,
    // even those that left the process group (see `master::orphans`).
    mark_environment(std::process::id());
    MASTER_PID.store(master.as_raw(), Ordering::Relaxed);
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
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// The stop eventfd once [`prepare_signals_and_group`] opened it: a zygote's spare waits on it beside its socket,
/// so that a SIGTERM or SIGINT sent to the spare ends it instead of stopping the worker it would become.
pub(crate) fn stop_event() -> Option<RawFd> {
    let event = STOP_EVENT.load(Ordering::Relaxed);
    (event >= 0).then_some(event)
}

/// The value a zygote gives [`crate::master::WORKER_MARK`] so that its workers can write their pid into the
/// string in place: ten digits, the most a pid has.
pub(crate) const MARK_PLACEHOLDER: &str = "0000000000";

/// Sets `PMHOST_WORKER={pid}` in this worker's environment. A worker cloned by a zygote finds the placeholder
/// the zygote set ([`MARK_PLACEHOLDER`]) and overwrites its digits in place: `setenv` would search the whole
/// environment and copy its array, a few percent of a short-lived warm worker's life.
fn mark_environment(pid: u32) {
    let name = CString::new(crate::master::WORKER_MARK).expect("no NUL in the name");
    // SAFETY: single-threaded (just forked, before the plugin loads): nothing reads or changes the environment
    // concurrently. getenv returns the value of a `NAME=VALUE` string libc allocated with setenv (the zygote's
    // placeholder), at least ten bytes and a NUL long when it equals the placeholder; writing at most ten
    // digits and a NUL into it stays inside it.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        if !value.is_null() && std::ffi::CStr::from_ptr(value).to_bytes() == MARK_PLACEHOLDER.as_bytes() {
            let digits = pid.to_string();
            std::ptr::copy_nonoverlapping(digits.as_ptr(), value.cast::<u8>(), digits.len());
            *value.add(digits.len()) = 0;
            return;
        }
        std::env::set_var(crate::master::WORKER_MARK, pid.to_string());
    }
}

/// Closes every descriptor above stderr but `keep`: what the master holds for itself and for other workers
/// (signalfd, pid file, run directories, other workers' output pipes, ...) is not this worker's. One
/// `close_range` per gap, so the cost does not grow with the number of workers.
pub(crate) fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter(|fd| **fd > 2).map(|fd| *fd as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 3u32;
    for fd in keep.into_iter().chain([u32::MAX]) {
        if fd > first {
            // SAFETY: close_range on descriptors of this process that nothing in it uses; no flags.
            unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0u32) };
        }
        first = fd.saturating_add(1);
    }
}

/// Applies the task's resource limits (soft and hard) before any plugin code runs.
fn set_rlimits(rlimits: &crate::settings::Rlimits) -> Result<(), SetupError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let limits = [
        ("rlimit_nofile", Resource::RLIMIT_NOFILE, rlimits.nofile),
        ("rlimit_as", Resource::RLIMIT_AS, rlimits.address_space),
        ("rlimit_core", Resource::RLIMIT_CORE, rlimits.core),
    ];
    for (setting, resource, value) in limits {
        let Some(value) = value else { continue };
        setrlimit(resource, value, value).map_err(|errno| {
            let hard = match getrlimit(resource) {
                Ok((_, hard)) if hard == libc::RLIM_INFINITY => "unlimited".to_owned(),
                Ok((_, hard)) => hard.to_string(),
                Err(_) => "unknown".to_owned(),
            };
            // Open files have a ceiling no privilege lifts: the kernel's fs.nr_open.
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok();
            let note = match nr_open.as_deref().map(str::trim) {
                Some(max) if resource == Resource::RLIMIT_NOFILE => {
                    format!("; only CAP_SYS_RESOURCE raises it, and never above fs.nr_open = {max}")
                }
                _ => "; only CAP_SYS_RESOURCE raises it".to_owned(),
            };
            SetupError::Rlimit { setting, value, errno, hard, note }
        })?;
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

/// Ends the worker as `exit(3)` does: the plugin's exit handlers, ELF destructors and thread-local destructors
/// run, and C stdio is flushed. Rust's own clean-up in `std::process::exit` is done by hand where it matters:
/// this program's buffered `stdout` is flushed. What is skipped is taking down the main thread's alternate
/// signal stack (`sigaltstack` and a `munmap`, with its TLB flush), which the address space's teardown does
/// anyway: measured in a churn of one-call workers, that clean-up was ~1.3 % of all CPU, ~5 µs per worker.
fn exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: exit is what std::process::exit ends with, after the same flush of this program's stdout.
    unsafe { libc::exit(code) }
}

/// Receives the plugin's `tracing` events (through the bridge) and records them in the host's subscriber, under
/// the worker span, with target `pmhost::run` so they land in the run log.
pub(crate) extern "C" fn host_log(level: u8, target: RStr<'_>, message: RStr<'_>) {
    let (target, message) = (target.as_str(), message.as_str());
    // tracing's macros take their level as a constant: one arm per level.
    match pmhost_plugin_api::ffi::level::filter(level).into_level() {
        Some(tracing::Level::ERROR) => {
            tracing::error!(target: crate::logging::RUN_TARGET, plugin = target, "{message}")
        }
        Some(tracing::Level::WARN) => tracing::warn!(target: crate::logging::RUN_TARGET, plugin = target, "{message}"),
        Some(tracing::Level::INFO) => tracing::info!(target: crate::logging::RUN_TARGET, plugin = target, "{message}"),
        Some(tracing::Level::DEBUG) => {
            tracing::debug!(target: crate::logging::RUN_TARGET, plugin = target, "{message}")
        }
        Some(tracing::Level::TRACE) => {
            tracing::trace!(target: crate::logging::RUN_TARGET, plugin = target, "{message}")
        }
        None => {}
    }
}
