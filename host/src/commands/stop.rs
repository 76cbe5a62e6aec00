//! `pmhost stop`: ask the master to stop, wait until it (and so every worker) is gone, escalate if it takes too
//! long, and say what happened.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::CommandError;
use super::plan::resolve_target;
use super::process::find_master;
use crate::cli::StopArgs;
use crate::exit::cli as code;
use crate::master::signals::{Action, signal_for};
use crate::requests::{self, Request};

/// Added to the host's stop timeout for the default wait, so the master's own grace ends first.
const MARGIN: Duration = Duration::from_secs(5);
/// The wait when the host's stop timeout is unknown (its default plus the margin).
const FALLBACK: Duration = Duration::from_secs(10);

/// The host's stop timeout, from its status file.
fn host_stop_timeout(status_dir: &std::path::Path) -> Duration {
    super::watch::read_snapshot(&status_dir.join("status.json"))
        .ok()
        .flatten()
        .map(|s| s.master.stop_timeout_ms)
        .filter(|ms| *ms > 0)
        .map_or(FALLBACK, Duration::from_millis)
}

/// How long an immediate stop may take before the master itself is killed.
const IMMEDIATE_GRACE: Duration = Duration::from_secs(5);

/// Runs `pmhost stop`.
pub fn stop(args: StopArgs) -> Result<i32, CommandError> {
    let target = resolve_target(&args.target)?;
    let name = &target.name;
    let master = find_master(&target)?;
    let started = Instant::now();
    let timeout = args.timeout.unwrap_or_else(|| host_stop_timeout(&target.status_dir()) + MARGIN);
    if !args.now {
        let id = requests::new_id();
        requests::submit(&target.status_dir(), &id, &Request::Stop { id: id.clone() })?;
        master.signal(signal_for(Action::Requests))?;
        println!("stopping {name} (master pid {}): graceful, waiting up to {:?}", master.pid, timeout);
        if master.wait_exit(timeout) {
            println!("stopped {name} in {} ms", started.elapsed().as_millis());
            return Ok(code::OK);
        }
        println!("{name} did not stop within {:?}: stopping at once (workers are killed)", timeout);
    }
    master.signal(signal_for(Action::StopNow))?;
    if master.wait_exit(IMMEDIATE_GRACE) {
        println!("stopped {name} in {} ms", started.elapsed().as_millis());
        return Ok(code::OK);
    }
    println!("{name} master did not exit within {IMMEDIATE_GRACE:?} of an immediate stop: killing it");
    master.signal(Signal::SIGKILL)?;
    if master.wait_exit(IMMEDIATE_GRACE) {
        println!("killed {name} master (pid {}); its workers end on their own within a second", master.pid);
        Ok(code::OK)
    } else {
        Err(CommandError::Unkillable { name: name.clone(), pid: master.pid.as_raw() })
    }
}
