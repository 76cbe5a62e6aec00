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
    let request = Request::Scale { id: id.clone(), task: args.task.clone(), workers: args.workers };
    requests::submit(watch.dir(), &id, &request)?;
    let started = Instant::now();
    master.signal(signal_for(Action::Requests))?;
    let deadline = started + args.timeout;
    let answer =
        watch.wait_for(&master, deadline, |s| s.last_scale.as_ref().filter(|r| r.request_id == id).cloned())?;
    let Some(answer) = answer else {
        return Err(CommandError::NoSnapshot {
            name: target.name.clone(),
            pid: master.pid.as_raw(),
            waited_ms: args.timeout.as_millis() as u64,
        });
    };
    if let Some(error) = answer.error {
        return Err(CommandError::Refused { name: target.name.clone(), reason: error });
    }
    let wanted = args.workers as usize;
    let settled = watch.wait_for(&master, deadline, |s| {
        s.tasks
            .iter()
            .filter(|t| args.task.as_ref().is_none_or(|name| &t.name == name))
            .all(|t| t.served_slots() == wanted && t.workers.iter().all(|w| (w.slot as usize) < wanted))
            .then_some(())
    })?;
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
