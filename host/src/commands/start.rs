//! `pmhost start`: check everything a start needs, take the pid file, detach if asked, then become the master.
//!
//! Every check that can fail on bad input (directories, plugin file, name) runs before the pid file is taken and
//! before anything forks, so a refused start leaves nothing behind.

use std::os::fd::AsRawFd;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{ForkResult, fork, pipe2, setsid};
use tracing::{info, warn};

use super::CommandError;
use super::plan::plan_start;
use crate::cli::StartArgs;
use crate::exit::cli as code;
use crate::master::{Master, MasterParts, signals};
use crate::pidfile::PidFile;
use crate::plugin;
use crate::ready::{ReadyNotifier, wait_for_daemon};
use crate::rundir::HostDirs;
use crate::{logging, rundir, title};

/// Runs `pmhost start`.
pub fn start(args: Box<StartArgs>) -> Result<i32, CommandError> {
    close_inherited_fds();
    let plan = plan_start(&args)?;
    let host = &plan.host;
    let dirs = HostDirs::open(&host.pid_root, &host.status_root, &host.name, true)?.expect("created when missing");
    let plugins = dirs.plugins(true)?.expect("created when missing");
    if plan.log.enabled {
        // Log files are opened by path below a root whose every parent was checked: nobody else can swap them.
        rundir::open_root(&plan.log.dir, true)?;
    }
    // Block the master's signals before the pid file names this process: a `pmhost status` (SIGUSR1) or
    // `scale` (SIGUSR2) arriving while the plugin is staged must wait in the queue (the master's signalfd reads
    // it later), not end the process by its default action.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals::handled()), None)
        .map_err(|e| CommandError::system("block signals", e))?;
    let mut pid_file = PidFile::acquire(dirs.pid_root(), &host.name)?;
    let mut staged: Vec<plugin::StagedPlugin> = Vec::new();
    for task in &plan.tasks {
        // Tasks that run the same file share one staged copy: 64 tasks of one plugin copy and hash it once.
        if let Some(same) = plan.tasks.iter().zip(&staged).find(|(other, _)| other.plugin == task.plugin) {
            staged.push(same.1.clone());
            continue;
        }
        match plugin::stage(&task.plugin, &plugins) {
            Ok(plugin) => staged.push(plugin),
            Err(e) => {
                pid_file.remove();
                return Err(e.into());
            }
        }
    }
    plugin::prune(&plugins, staged.iter());

    let ready = if args.daemon {
        match daemonize(&host.name)? {
            Detached::Parent(code) => return Ok(code),
            Detached::Daemon(ready) => {
                if let Err(e) = pid_file.record_pid() {
                    let error = CommandError::system(format!("write pid file {}", pid_file.path().display()), e);
                    return Err(report_to_caller(ready, error));
                }
                Some(ready)
            }
        }
    } else {
        None
    };
    logging::init_host(&plan.log);
    // Read (and remove from the environment) before anything is forked or the title rewritten.
    let notifier = crate::notify::Notifier::from_env();

    // From here on this process is the master: signals are read from a signalfd, not delivered.
    let master_title = host.master_title();
    title::set(&master_title);
    logging::set_title(&master_title);
    for (task, plugin) in plan.tasks.iter().zip(&staged) {
        info!(task = %task.name, plugin = %plugin.original.display(), build = plugin.short_sha(), "starting {}", host.name);
    }
    let parts = MasterParts {
        host: plan.host,
        tasks: plan.tasks.into_iter().zip(staged).collect(),
        pid_file,
        dirs,
        plugins,
        ready,
        plugin_log_level: logging::plugin_level(),
        config_path: plan.config_path,
        overrides: plan.overrides,
        notifier,
        log: plan.log.clone(),
    };
    let master = Master::new(parts).map_err(|e| CommandError::system("set up the master's event loop", e))?;
    let stopped = master.run()?;
    Ok(if stopped.forced { code::STOPPED_FORCIBLY } else { code::OK })
}

/// Closes every descriptor above stderr that the caller left open: a daemon must not keep its caller's files,
/// pipes or sockets (a pipe held open keeps a caller's `$(...)` waiting forever), and workers must get only what
/// the master hands them. Nothing of pmhost's own is open yet.
fn close_inherited_fds() {
    // SAFETY: close_range on descriptors this process owns and has no handle to; no flags.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// Sends a daemon's start error (with its causes) to the command waiting on the readiness pipe, and returns it.
fn report_to_caller(ready: ReadyNotifier, error: CommandError) -> CommandError {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    ready.send(Err(&reason));
    error
}

enum Detached {
    /// In the calling process: the exit code to return.
    Parent(i32),
    /// In the daemon: the pipe to report readiness on.
    Daemon(ReadyNotifier),
}

/// Detaches: the caller waits on a pipe until the daemon reports ready or failed; the daemon (a grandchild in
/// its own session) gets the write end.
fn daemonize(name: &str) -> Result<Detached, CommandError> {
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).map_err(|e| CommandError::system("create a pipe", e))?;
    // SAFETY: the CLI is single-threaded here; the children continue with the same code.
    match unsafe { fork() }.map_err(|e| CommandError::system("fork", e))? {
        ForkResult::Parent { child } => {
            drop(write_end);
            // While waiting, Ctrl-C and kill still work on this command (the daemon lives on in its session);
            // the signals of pmhost's own tools stay blocked until the daemon has written its pid.
            let mut interrupt = SigSet::empty();
            for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGQUIT] {
                interrupt.add(signal);
            }
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&interrupt), None);
            let outcome = wait_for_daemon(read_end);
            let _ = nix::sys::wait::waitpid(child, None);
            match outcome {
                Ok(pid) => {
                    println!("started {name} (master pid {pid})");
                    Ok(Detached::Parent(code::OK))
                }
                Err(reason) => Err(CommandError::DaemonStart { name: name.to_owned(), reason }),
            }
        }
        ForkResult::Child => {
            drop(read_end);
            let _ = setsid();
            // SAFETY: as above; the intermediate child exits at once, so the daemon is not a session leader and can
            // never acquire a controlling terminal.
            match unsafe { fork() } {
                Ok(ForkResult::Parent { .. }) => std::process::exit(0),
                Ok(ForkResult::Child) => {}
                Err(e) => {
                    ReadyNotifier::new(write_end).send(Err(&format!("fork failed: {e}")));
                    std::process::exit(code::FAILED);
                }
            }
            detach_stdio();
            Ok(Detached::Daemon(ReadyNotifier::new(write_end)))
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null.
fn detach_stdio() {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        Ok(null) => {
            for fd in 0..=2 {
                // SAFETY: dup2 onto the standard descriptors, which this process owns.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        Err(e) => warn!("cannot open /dev/null: {e}"),
    }
}
