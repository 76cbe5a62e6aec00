//! `pmhost upgrade`: check a new pmhost binary, ask the running master to re-execute it in place, and wait until
//! the master (same pid) runs it or says why not.

use std::time::Instant;

use super::CommandError;
use super::plan::resolve_target;
use super::process::find_master;
use super::watch::StatusWatch;
use crate::cli::UpgradeArgs;
use crate::exit::cli as code;
use crate::master::signals::{Action, signal_for};
use crate::requests::{self, Request};

/// Runs `pmhost upgrade`.
pub fn upgrade(args: UpgradeArgs) -> Result<i32, CommandError> {
    let target = resolve_target(&args.target)?;
    let master = find_master(&target)?;
    let binary = args
        .binary
        .as_deref()
        .map(std::path::absolute)
        .transpose()
        .map_err(|e| CommandError::system("resolve the binary's path", e))?;
    // Refuse a binary that cannot take over before the master is asked anything.
    if let Some(binary) = &binary {
        let timeout = args.timeout.min(std::time::Duration::from_secs(10));
        crate::upgrade::check_binary(binary, crate::upgrade::HANDOVER_VERSION, timeout)
            .map_err(|e| CommandError::UpgradeRefused { name: target.name.clone(), reason: e.to_string() })?;
    }
    let watch = StatusWatch::new(target.status_dir(true)?.expect("created when missing"))?;
    let id = requests::new_id();
    let expires_at_mono_ns = Some(crate::sysinfo::monotonic_ns().saturating_add(args.timeout.as_nanos() as u64));
    requests::submit(watch.dir(), &id, &Request::Upgrade { id: id.clone(), binary, expires_at_mono_ns })?;
    let started = Instant::now();
    master.signal(signal_for(Action::Requests))?;
    let deadline = started + args.timeout;
    let answer = watch.wait_for(&master, deadline, |s| {
        s.last_upgrade.as_ref().filter(|u| u.request_id.as_deref() == Some(id.as_str())).cloned()
    })?;
    let Some(answer) = answer else {
        let (name, pid, waited_ms) = (target.name.clone(), master.pid.as_raw(), args.timeout.as_millis() as u64);
        return Err(if requests::withdraw(watch.dir(), &id) {
            CommandError::Withdrawn { name, pid, what: "upgrade", waited_ms }
        } else {
            CommandError::NoSnapshot { name, pid, waited_ms }
        });
    };
    if let Some(reason) = answer.error {
        return Err(CommandError::UpgradeRefused { name: target.name.clone(), reason });
    }
    println!(
        "{} (pid {}) upgraded in place from pmhost {} to {} ({}), workers untouched ({} ms)",
        target.name,
        master.pid,
        answer.from_version,
        answer.to_version,
        answer.binary,
        started.elapsed().as_millis()
    );
    Ok(code::OK)
}
