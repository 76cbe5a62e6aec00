//! `pmhost status`: ask the master for a fresh snapshot (SIGUSR1), wait for it to land (inotify on the status
//! directory, with a deadline), then print it as a table or JSON, or judge health for `--check`.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::CommandError;
use super::process::find_master;
use crate::cli::StatusArgs;
use crate::exit::cli as code;
use crate::master::signals::{Action, signal_for};
use crate::rundir;
use crate::status::{Snapshot, render_table};
use crate::sysinfo;

/// Runs `pmhost status`.
pub fn status(args: StatusArgs) -> Result<i32, CommandError> {
    let master = find_master(&args.target)?;
    let dir = args.target.status_root.join(&args.target.name);
    let path = dir.join("status.json");
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| CommandError::system("watch the status directory", e))?;
    inotify
        .add_watch(&dir, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE)
        .map_err(|e| CommandError::system(format!("watch {}", dir.display()), e))?;
    let asked_at = sysinfo::monotonic_ns();
    master.signal(signal_for(Action::Snapshot))?;
    let deadline = Instant::now() + args.timeout;
    let snapshot = loop {
        if let Some(snapshot) = read_snapshot(&path)?
            && snapshot.written_at_mono_ns >= asked_at
        {
            break snapshot;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(&inotify, left) {
            return Err(CommandError::NoSnapshot {
                name: args.target.name.clone(),
                pid: master.pid.as_raw(),
                waited_ms: args.timeout.as_millis() as u64,
            });
        }
        let _ = inotify.read_events();
    };
    if args.check {
        return Ok(if healthy(&snapshot) { code::OK } else { code::UNHEALTHY });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot).expect("status serializes"));
    } else {
        print!("{}", render_table(&snapshot));
    }
    Ok(code::OK)
}

/// Running, and every wanted slot has a ready worker.
fn healthy(snapshot: &Snapshot) -> bool {
    snapshot.state == "running"
        && snapshot.tasks.iter().all(|task| {
            let ready = task.workers.iter().filter(|w| matches!(w.state.as_str(), "idle" | "busy")).count();
            ready >= task.workers_wanted as usize
        })
}

fn read_snapshot(path: &std::path::Path) -> Result<Option<Snapshot>, CommandError> {
    let file = match rundir::open_read_nofollow(path) {
        Ok(file) => file,
        Err(_) => return Ok(None),
    };
    serde_json::from_reader(std::io::BufReader::new(file))
        .map(Some)
        .map_err(|source| CommandError::BadStatus { path: path.to_owned(), source })
}

fn wait_readable(inotify: &Inotify, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
}
