//! `pmhost status`: ask the master for a fresh snapshot (SIGUSR1), wait for it to land (inotify on the status
//! directory, with a deadline), then print it as a table or JSON, or judge health for `--check`.

use std::time::Instant;

use super::CommandError;
use super::plan::resolve_target;
use super::process::find_master;
use super::watch::StatusWatch;
use crate::cli::StatusArgs;
use crate::exit::cli as code;
use crate::master::signals::{Action, signal_for};
use crate::status::{Snapshot, render_table};
use crate::sysinfo;

/// Runs `pmhost status`.
pub fn status(args: StatusArgs) -> Result<i32, CommandError> {
    let target = resolve_target(&args.target)?;
    let master = find_master(&target)?;
    let watch = StatusWatch::new(&target.status_dir())?;
    let asked_at = sysinfo::monotonic_ns();
    master.signal(signal_for(Action::Snapshot))?;
    let deadline = Instant::now() + args.timeout;
    let snapshot =
        watch.wait_for(deadline, |s| (s.written_at_mono_ns >= asked_at).then(|| s.clone()))?.ok_or_else(|| {
            CommandError::NoSnapshot {
                name: target.name.clone(),
                pid: master.pid.as_raw(),
                waited_ms: args.timeout.as_millis() as u64,
            }
        })?;
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
pub fn healthy(snapshot: &Snapshot) -> bool {
    snapshot.state == "running"
        && snapshot.tasks.iter().all(|task| {
            let ready = task.workers.iter().filter(|w| matches!(w.state.as_str(), "idle" | "busy")).count();
            ready >= task.workers_wanted as usize
        })
}
