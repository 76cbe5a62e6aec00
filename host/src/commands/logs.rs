//! `pmhost logs`: print what a host logged (its process and run logs, merged in time order and filtered), then
//! with `-f` follow the files as they grow and rotate (inotify on the log directory, no polling) until SIGINT or
//! SIGTERM. Reads only files on disk, so a stopped host's logs read the same as a running one's.

use std::collections::VecDeque;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::fd::AsFd;
use std::time::SystemTime;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::CommandError;
use super::plan::{Resolved, resolve_target};
use super::watch::read_snapshot;
use crate::cli::{LevelArg, LogsArgs, StreamArg};
use crate::exit::cli as code;
use crate::logging::LogSettings;
use crate::logread::{Coverage, Filter, HostScope, LogLevel, LogStream, Merged, Record};
use crate::rundir::{self, Dir};
use crate::sysinfo;

/// How much of the end of the logs `-n` reads first (then four times more, until it has its lines).
const TAIL_WINDOW: u64 = 1 << 20;

/// Runs `pmhost logs`.
pub fn logs(args: LogsArgs) -> Result<i32, CommandError> {
    let target = resolve_target(&args.target)?;
    let spec = target.config.as_ref().map(|c| c.log.clone()).unwrap_or_default();
    let defaults = LogSettings::default();
    let bases = [spec.process.unwrap_or(defaults.process), spec.run.unwrap_or(defaults.run)];
    let mut filter = filter_of(&args);
    filter.host = host_scope(&args, &target);
    let dir = rundir::open_root(&target.log_dir, false)?
        .ok_or_else(|| CommandError::NoLogDir { dir: target.log_dir.clone() })?;
    // Everything that follows needs its events from before the first read, so nothing written meanwhile is
    // missed: signals blocked and the directory watched first.
    let follow = args.follow.then(|| Follow::new(&dir)).transpose()?;
    let colour = !args.json && io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut printer = Printer { out: BufWriter::new(io::stdout().lock()), json: args.json, colour };
    let printed = (|| {
        let mut merged = print_backlog(&dir, &bases, &filter, args.lines.0, &mut printer, follow.is_none())?;
        match &follow {
            Some(follow) => follow.run(&mut merged, &dir, &filter, &mut printer),
            None => Ok(()),
        }
    })();
    match printed {
        Ok(()) => Ok(code::OK),
        // A reader that went away (`pmhost logs -f | head`) ends the command, not as a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(code::OK),
        Err(e) => Err(CommandError::system(format!("show the logs in {}", target.log_dir.display()), e)),
    }
}

/// With `--name` or `--config`, that host's lines only: its master's, and its tasks' (from the config file, the
/// running host's status, else the one task a `--name` start runs, named like the host). Without either, every
/// line in the log directory.
fn host_scope(args: &LogsArgs, target: &Resolved) -> Option<HostScope> {
    if args.target.name.is_none() && args.target.config.is_none() {
        return None;
    }
    let mut tasks: Vec<String> =
        target.config.as_ref().map(|c| c.tasks.iter().map(|t| t.name.clone()).collect()).unwrap_or_default();
    let running = target.status_dir(false).ok().flatten().and_then(|dir| read_snapshot(&dir).ok().flatten());
    tasks.extend(running.into_iter().flat_map(|snapshot| snapshot.tasks.into_iter().map(|t| t.name)));
    if tasks.is_empty() {
        tasks.push(target.name.clone());
    }
    Some(HostScope { name: target.name.clone(), tasks })
}

fn filter_of(args: &LogsArgs) -> Filter {
    Filter {
        host: None,
        task: args.task.clone(),
        slot: args.slot,
        pid: args.pid,
        level: args.level.map(|level| match level {
            LevelArg::Error => LogLevel::Error,
            LevelArg::Warn => LogLevel::Warn,
            LevelArg::Info => LogLevel::Info,
            LevelArg::Debug => LogLevel::Debug,
            LevelArg::Trace => LogLevel::Trace,
        }),
        since: args
            .since
            .map(|ago| sysinfo::local_time_text(SystemTime::now().checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH))),
        stream: args.stream.map(|stream| {
            match stream {
                StreamArg::Stdout => "stdout",
                StreamArg::Stderr => "stderr",
            }
            .to_owned()
        }),
    }
}

/// The logs `bases` in `dir`, merged; with `last_bytes`, only the end of each.
fn open_logs(dir: &Dir, bases: &[String], since: Option<&str>, last_bytes: Option<u64>) -> io::Result<Merged> {
    let streams = bases.iter().map(|base| LogStream::new(dir, base, since, last_bytes)).collect::<io::Result<_>>()?;
    Ok(Merged::new(streams))
}

/// Prints the matching lines on disk now, or the last `lines` of them; returns the logs read to their end (for
/// following).
fn print_backlog(
    dir: &Dir,
    bases: &[String],
    filter: &Filter,
    lines: Option<usize>,
    printer: &mut Printer<'_>,
    to_the_end: bool,
) -> io::Result<Merged> {
    let since = filter.since.as_deref();
    let Some(keep) = lines else {
        let mut merged = open_logs(dir, bases, since, None)?;
        while let Some(record) = merged.next_record(dir, to_the_end) {
            if filter.matches(&record) {
                printer.print(&record)?;
            }
        }
        printer.out.flush()?;
        return Ok(merged);
    };
    // The end of the logs first, and further back only while the last `keep` matching lines may lie before what
    // was read: a large log costs what its end holds, not its size.
    let mut window: u64 = if keep == 0 { 0 } else { TAIL_WINDOW };
    loop {
        let mut merged = open_logs(dir, bases, since, Some(window))?;
        let mut tail = VecDeque::with_capacity(keep.min(4096));
        while let Some(record) = merged.next_record(dir, to_the_end) {
            if keep > 0 && filter.matches(&record) {
                if tail.len() == keep {
                    tail.pop_front();
                }
                tail.push_back(record);
            }
        }
        let enough = keep == 0
            || match merged.coverage() {
                Coverage::Complete => true,
                Coverage::After(time) => tail.len() == keep && tail.front().is_some_and(|r| r.time > time),
                Coverage::Unknown => false,
            };
        if enough {
            for record in &tail {
                printer.print(record)?;
            }
            printer.out.flush()?;
            return Ok(merged);
        }
        window = window.saturating_mul(4);
    }
}

/// Lines out, as stored (levels coloured on a terminal) or as JSON objects.
struct Printer<'a> {
    out: BufWriter<io::StdoutLock<'a>>,
    json: bool,
    colour: bool,
}

impl Printer<'_> {
    fn print(&mut self, record: &Record) -> io::Result<()> {
        if self.json {
            return writeln!(self.out, "{}", record.to_json());
        }
        match (self.colour, record.level_span(), record.level) {
            (true, Some(span), Some(level)) => {
                let colour = match level {
                    LogLevel::Error => "\x1b[1;31m",
                    LogLevel::Warn => "\x1b[33m",
                    LogLevel::Info => "\x1b[32m",
                    LogLevel::Debug => "\x1b[36m",
                    LogLevel::Trace => "\x1b[2m",
                };
                let line = &record.line;
                writeln!(self.out, "{colour}{}\x1b[0m{}", &line[span.clone()], &line[span.end..])
            }
            _ => writeln!(self.out, "{}", record.line),
        }
    }
}

/// Following: a watch on the log directory and the stop signals, as descriptors to wait on.
struct Follow {
    inotify: Inotify,
    signals: SignalFd,
}

impl Follow {
    fn new(dir: &Dir) -> Result<Follow, CommandError> {
        let mut stop = SigSet::empty();
        stop.add(Signal::SIGINT);
        stop.add(Signal::SIGTERM);
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop), None)
            .map_err(|e| CommandError::system("block SIGINT and SIGTERM", e))?;
        let signals = SignalFd::with_flags(&stop, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| CommandError::system("create a signalfd", e))?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| CommandError::system("watch the log directory", e))?;
        let events = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE;
        inotify
            .add_watch(&dir.proc_path(), events)
            .map_err(|e| CommandError::system(format!("watch {}", dir.path().display()), e))?;
        Ok(Follow { inotify, signals })
    }

    /// Prints new matching lines as they are written, until SIGINT or SIGTERM.
    fn run(&self, merged: &mut Merged, dir: &Dir, filter: &Filter, printer: &mut Printer<'_>) -> io::Result<()> {
        loop {
            let mut fds = [
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if fds[1].revents().is_some_and(|r| r.intersects(PollFlags::POLLIN)) {
                return Ok(());
            }
            let events = self.inotify.read_events().unwrap_or_default();
            // A new file may be the next period's (or, after an overflow of the event queue, anything may be).
            let new_files = AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_Q_OVERFLOW;
            if events.iter().any(|e| e.mask.intersects(new_files)) {
                merged.rescan(dir);
            }
            while let Some(record) = merged.next_record(dir, false) {
                if filter.matches(&record) {
                    printer.print(&record)?;
                }
            }
            printer.out.flush()?;
        }
    }
}
