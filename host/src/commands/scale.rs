//! `pmhost scale`: set the worker count of a running master and wait until it holds.

use std::time::Instant;

use super::CommandError;
use super::plan::resolve_target;
use super::process::find_master;
use super::watch::StatusWatch;
use crate::cli::ScaleArgs;
use crate::exit::cli as code;
use crate::master::signals::{Action, signal_for};
use crate::requests::{self, Request};

/// Runs `pmhost scale`.
pub fn scale(args: ScaleArgs) -> Result<i32, CommandError> {
    let target = resolve_target(&args.target)?;
    let master = find_master(&target)?;
    let watch = StatusWatch::new(target.status_dir(true)?.expect("created when missing"))?;
    let id = requests::new_id();
    // The request expires when this command stops waiting (a moment before its own deadline below).
    let expires_at_mono_ns = Some(crate::sysinfo::monotonic_ns().saturating_add(args.timeout.as_nanos() as u64));
    let request = Request::Scale { id: id.clone(), task: args.task.clone(), workers: args.workers, expires_at_mono_ns };
    requests::submit(watch.dir(), &id, &request)?;
    let started = Instant::now();
    master.signal(signal_for(Action::Requests))?;
    let deadline = started + args.timeout;
    let answer =
        watch.wait_for(&master, deadline, |s| s.last_scale.as_ref().filter(|r| r.request_id == id).cloned())?;
    let Some(answer) = answer else {
        let (name, pid, waited_ms) = (target.name.clone(), master.pid.as_raw(), args.timeout.as_millis() as u64);
        // Never answered. Still unread: take it back (and were it read now, the master would drop it: it has
        // expired). Read: it was applied, but the status file does not say so.
        return Err(if requests::withdraw(watch.dir(), &id) {
            CommandError::Withdrawn { name, pid, what: "scale", waited_ms }
        } else {
            CommandError::NoSnapshot { name, pid, waited_ms }
        });
    };
    if let Some(error) = answer.error {
        return Err(CommandError::Refused { name: target.name.clone(), reason: error });
    }
    let settled = watch
        .wait_for(&master, deadline, |s| s.scale_settled(args.task.as_deref(), Some(args.workers)).then_some(()))?;
    match settled {
        Some(()) => {
            println!(
                "{} now runs {} workers per task ({} ms)",
                target.name,
                args.workers,
                started.elapsed().as_millis()
            );
            Ok(code::OK)
        }
        None => Err(CommandError::StillRunning {
            name: target.name.clone(),
            what: "scaling",
            waited_ms: args.timeout.as_millis() as u64,
        }),
    }
}
