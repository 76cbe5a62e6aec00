//! `pmhost status`: ask the master for a fresh snapshot (a queued real-time signal; SIGUSR1 for a master that does
//! not take it), wait for its answer (SIGURG once the snapshot is written, with a deadline; no fixed sleep, no
//! directory watch), then print it as a table or JSON, or judge health for `--check`.

use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

use super::CommandError;
use super::plan::{Resolved, resolve_target};
use super::process::{MasterHandle, find_master};
use super::watch::read_snapshot;
use crate::cli::StatusArgs;
use crate::exit::cli as code;
use crate::master::SNAPSHOT_WRITTEN;
use crate::master::signals::{Action, signal_for};
use crate::status::{Snapshot, render_table};
use crate::sysinfo;

/// Runs `pmhost status`.
pub fn status(args: StatusArgs) -> Result<i32, CommandError> {
    let target = resolve_target(&args.target)?;
    let master = find_master(&target)?;
    let no_snapshot = || CommandError::NoSnapshot {
        name: target.name.clone(),
        pid: master.pid.as_raw(),
        waited_ms: args.timeout.as_millis() as u64,
    };
    let snapshot = fresh_snapshot(&master, &target, args.timeout)?.ok_or_else(no_snapshot)?;
    if args.check {
        return Ok(if snapshot.healthy() { code::OK } else { code::UNHEALTHY });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot).expect("status serializes"));
    } else {
        print!("{}", render_table(&snapshot));
    }
    Ok(code::OK)
}

/// Asks the master for a snapshot and returns it once written; `None` at the deadline.
pub(crate) fn fresh_snapshot(
    master: &MasterHandle,
    target: &Resolved,
    timeout: Duration,
) -> Result<Option<Snapshot>, CommandError> {
    let mut answer = SigSet::empty();
    answer.add(SNAPSHOT_WRITTEN);
    // Blocked, the answer stays pending until we wait for it, however fast the master is.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&answer), None).map_err(|e| CommandError::system("block SIGURG", e))?;
    let asked_at = sysinfo::monotonic_ns();
    // The queued request cannot merge with another caller's, so every caller gets its own answer. A master that
    // does not block it (an older pmhost) would die of it: ask such a master with SIGUSR1, as before.
    let queued = crate::master::signals::queued_snapshot_signal();
    if !(master.blocks(queued) && master.send(queued).is_ok()) {
        master.signal(signal_for(Action::Snapshot))?;
    }
    let deadline = Instant::now() + timeout;
    // The status directory may be missing until the master answers (it re-creates a removed one).
    let mut dir = target.status_dir(false)?;
    loop {
        if dir.as_ref().is_none_or(|d| d.is_removed()) {
            dir = target.status_dir(false)?;
        }
        if let Some(dir) = &dir
            && let Some(snapshot) = read_snapshot(dir)?
            && snapshot.written_at_mono_ns >= asked_at
        {
            return Ok(Some(snapshot));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        wait_signal(&answer, left);
    }
}

/// Waits for a signal in `set` (blocked), at most `timeout`.
fn wait_signal(set: &SigSet, timeout: Duration) {
    let timeout =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: the set is a valid sigset_t, the info pointer may be null, the timespec lives across the call.
    unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
}
