//! `pmhost top`: a live view of a host in the terminal (ratatui on crossterm, only in this CLI process), or one
//! frame as plain text with `--once`.
//!
//! One loop, no threads: it waits in `poll` on the terminal and a signalfd (INT, TERM, HUP, WINCH) until a key,
//! a signal or the next refresh. Each refresh asks the master for one snapshot (the same request and wait as
//! `pmhost status`, bounded well under the refresh period); keys submit scale and restart requests as
//! `pmhost scale` and `pmhost restart` do, without waiting for their outcome, which later snapshots show. A master
//! that stops is shown as not running and picked up again when one starts under the name.

use std::fs::File;
use std::io::{self, IsTerminal};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::CommandError;
use super::plan::{Resolved, resolve_target};
use super::process::{MasterHandle, find_master};
use super::status::fresh_snapshot;
use crate::cli::TopArgs;
use crate::exit::cli as code;
use crate::master::signals::{Action, signal_for};
use crate::requests::{self, Request};
use crate::top::model::Model;
use crate::top::view::{Connection, Screen, restart_text};

/// Time between refreshes (and between the two samples of `--once`).
const REFRESH: Duration = Duration::from_secs(1);
/// Longest wait for the master's snapshot within a refresh.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(800);
/// Width of `--once` output when standard output is not a terminal: wide enough that nothing is cut (a host
/// name may have 64 characters); trailing blanks are trimmed.
const PLAIN_WIDTH: u16 = 240;

/// Runs `pmhost top`.
pub fn top(args: TopArgs) -> Result<i32, CommandError> {
    let target = resolve_target(&args.target)?;
    let mut app = App::new(target);
    if args.once { once(&mut app) } else { interactive(&mut app) }
}

/// `--once`: two samples a refresh apart (rates need two), one frame printed.
fn once(app: &mut App) -> Result<i32, CommandError> {
    app.refresh();
    if app.connection == Connection::Live {
        // The sampling interval itself, not a wait for a condition: rates are calls over this second.
        std::thread::sleep(REFRESH);
        app.refresh();
    }
    let width = ratatui::crossterm::terminal::size()
        .ok()
        .filter(|_| io::stdout().is_terminal())
        .map_or(PLAIN_WIDTH, |(columns, _)| columns);
    print!("{}", app.screen().to_text(width));
    Ok(match app.connection {
        Connection::NotRunning => code::NOT_RUNNING,
        Connection::Live => code::OK,
        _ => code::FAILED,
    })
}

fn interactive(app: &mut App) -> Result<i32, CommandError> {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGWINCH] {
        signals.add(signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).map_err(|e| CommandError::system("block signals", e))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| CommandError::system("create a signalfd", e))?;
    // crossterm reads keys from standard input when it is a terminal, else from /dev/tty: wait on the same one.
    let tty = if io::stdin().is_terminal() {
        None
    } else {
        Some(File::open("/dev/tty").map_err(|e| CommandError::system("open the terminal /dev/tty", e))?)
    };
    let stdin = io::stdin();
    let input: BorrowedFd<'_> = tty.as_ref().map_or_else(|| stdin.as_fd(), |t| t.as_fd());
    let mut terminal = ratatui::try_init().map_err(|e| CommandError::system("set up the terminal", e))?;
    let outcome = (|| -> io::Result<()> {
        let mut next_refresh = Instant::now();
        loop {
            if Instant::now() >= next_refresh {
                app.refresh();
                next_refresh = Instant::now() + REFRESH;
            }
            terminal.draw(|frame| frame.render_widget(&app.screen(), frame.area()))?;
            let left = next_refresh.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(input, PollFlags::POLLIN), PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
            let timeout =
                PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            // A terminal that hung up has nothing more to show or read.
            if fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)) {
                return Ok(());
            }
            if fds[1].revents().is_some_and(|r| r.intersects(PollFlags::POLLIN)) {
                while let Ok(Some(info)) = signal_fd.read_signal() {
                    if info.ssi_signo != Signal::SIGWINCH as u32 {
                        return Ok(());
                    }
                }
            }
            // Every key crossterm has read is handled now, so the next poll sees only new input.
            while event::poll(Duration::ZERO)? {
                if let Event::Key(key) = event::read()?
                    && key.kind == KeyEventKind::Press
                {
                    let quit = matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL));
                    if quit {
                        return Ok(());
                    }
                    app.key(key.code);
                }
            }
        }
    })();
    ratatui::restore();
    outcome.map(|()| code::OK).map_err(|e| CommandError::system("draw the terminal", e))
}

/// A request submitted from a key, until a snapshot shows its outcome or it expires.
struct Pending {
    id: String,
    asked: Asked,
    /// When the request expires (the master drops it unread after that, and `top` withdraws it).
    expires: Instant,
}

/// What a key asked for.
enum Asked {
    Scale { task: String, workers: u32 },
    Restart,
}

/// How long a scale request from `top` stays valid (`pmhost scale`'s default timeout).
const SCALE_EXPIRY: Duration = Duration::from_secs(60);
/// How long a restart request from `top` may wait to begin (`pmhost restart`'s default timeout).
const RESTART_EXPIRY: Duration = Duration::from_secs(300);

struct App {
    target: Resolved,
    master: Option<MasterHandle>,
    model: Model,
    connection: Connection,
    selected: usize,
    message: String,
    help: bool,
    pending: Option<Pending>,
}

impl App {
    fn new(target: Resolved) -> App {
        App {
            target,
            master: None,
            model: Model::default(),
            connection: Connection::NotRunning,
            selected: 0,
            message: String::new(),
            help: false,
            pending: None,
        }
    }

    fn screen(&self) -> Screen<'_> {
        Screen {
            host: &self.target.name,
            model: &self.model,
            connection: &self.connection,
            selected: self.selected,
            message: &self.message,
            help: self.help,
        }
    }

    /// One snapshot request to the master (found again if it was restarted), and what it tells.
    fn refresh(&mut self) {
        if self.master.as_ref().is_some_and(|m| m.wait_exit(Duration::ZERO)) {
            self.master = None;
        }
        if self.master.is_none() {
            match find_master(&self.target) {
                Ok(master) => self.master = Some(master),
                Err(CommandError::NotRunning { .. }) => {
                    self.connection = Connection::NotRunning;
                    self.model = Model::default();
                    return;
                }
                Err(e) => {
                    self.connection = Connection::Failed(e.to_string());
                    return;
                }
            }
        }
        let master = self.master.as_ref().expect("found above");
        self.connection = match fresh_snapshot(master, &self.target, ANSWER_TIMEOUT) {
            Ok(Some(snapshot)) => {
                self.model.update(snapshot);
                Connection::Live
            }
            Ok(None) => Connection::NoAnswer,
            // It exited between the check and the request: the next refresh finds out and looks again.
            Err(_) if master.wait_exit(Duration::ZERO) => Connection::NotRunning,
            Err(e) => Connection::Failed(e.to_string()),
        };
        self.settle_pending();
        let tasks = self.model.current().map_or(0, |s| s.tasks.len());
        self.selected = self.selected.min(tasks.saturating_sub(1));
    }

    /// Reports the outcome of the pending request once a snapshot has it; withdraws it once it expired unread.
    fn settle_pending(&mut self) {
        let Some(pending) = &self.pending else { return };
        let snapshot = self.model.current();
        match &pending.asked {
            Asked::Scale { task, workers } => {
                if let Some(answer) =
                    snapshot.and_then(|s| s.last_scale.as_ref()).filter(|a| a.request_id == pending.id)
                {
                    self.message = match &answer.error {
                        Some(error) => format!("scale refused: {error}"),
                        None => format!("{task}: {workers} workers wanted"),
                    };
                    self.pending = None;
                    return;
                }
            }
            Asked::Restart => {
                let record = snapshot
                    .and_then(|s| s.last_restart.as_ref())
                    .filter(|r| r.request_id.as_deref() == Some(pending.id.as_str()));
                if let Some(record) = record {
                    self.message = format!("restart: {}", restart_text(record));
                    if !record.in_progress {
                        self.pending = None;
                    }
                    return;
                }
            }
        }
        if Instant::now() >= pending.expires {
            if let Ok(Some(dir)) = self.target.status_dir(false) {
                requests::withdraw(&dir, &pending.id);
            }
            self.message = "the master did not take the request in time; it was withdrawn".to_owned();
            self.pending = None;
        }
    }

    fn key(&mut self, key: KeyCode) {
        let tasks = self.model.current().map_or(0, |s| s.tasks.len());
        match key {
            KeyCode::Char('?') | KeyCode::Char('h') => self.help = !self.help,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.selected = (self.selected + 1).min(tasks.saturating_sub(1)),
            KeyCode::Char('+') | KeyCode::Char('=') => self.scale(1),
            KeyCode::Char('-') | KeyCode::Char('_') => self.scale(-1),
            KeyCode::Char('r') => self.restart(),
            _ => {}
        }
    }

    fn scale(&mut self, change: i32) {
        let Some(task) = self.model.current().and_then(|s| s.tasks.get(self.selected)).cloned() else { return };
        let base = match self.pending.as_ref().map(|p| &p.asked) {
            Some(Asked::Scale { task: name, workers }) if *name == task.name => *workers,
            _ => task.workers_wanted,
        };
        let workers = base.saturating_add_signed(change).clamp(1, 1024);
        if workers == base {
            return;
        }
        let id = requests::new_id();
        let expires_at_mono_ns = Some(expiry_mono_ns(SCALE_EXPIRY));
        let request = Request::Scale { id: id.clone(), task: Some(task.name.clone()), workers, expires_at_mono_ns };
        self.message = match self.submit(&id, &request) {
            Ok(()) => {
                let asked = Asked::Scale { task: task.name.clone(), workers };
                self.pending = Some(Pending { id, asked, expires: Instant::now() + SCALE_EXPIRY });
                format!("{}: asking for {workers} workers", task.name)
            }
            Err(e) => format!("scale failed: {e}"),
        };
    }

    fn restart(&mut self) {
        if self.pending.as_ref().is_some_and(|p| matches!(p.asked, Asked::Restart)) {
            self.message = "a restart is already under way".to_owned();
            return;
        }
        let id = requests::new_id();
        let request = Request::Restart {
            id: id.clone(),
            plugin: None,
            task: None,
            surge: None,
            init_timeout_ms: None,
            expires_at_mono_ns: Some(expiry_mono_ns(RESTART_EXPIRY)),
        };
        self.message = match self.submit(&id, &request) {
            Ok(()) => {
                self.pending = Some(Pending { id, asked: Asked::Restart, expires: Instant::now() + RESTART_EXPIRY });
                "restart requested".to_owned()
            }
            Err(e) => format!("restart failed: {e}"),
        };
    }

    /// Writes a request for the master and wakes it, as `pmhost scale` and `pmhost restart` do.
    fn submit(&self, id: &str, request: &Request) -> Result<(), CommandError> {
        let master = self
            .master
            .as_ref()
            .ok_or_else(|| CommandError::NotRunning { name: self.target.name.clone(), path: self.target.pid_file() })?;
        let dir = self.target.status_dir(true)?.expect("created when missing");
        requests::submit(&dir, id, request)?;
        master.signal(signal_for(Action::Requests))
    }
}

/// `CLOCK_MONOTONIC` nanoseconds `after` from now, as requests carry their expiry.
fn expiry_mono_ns(after: Duration) -> u64 {
    crate::sysinfo::monotonic_ns().saturating_add(after.as_nanos() as u64)
}
