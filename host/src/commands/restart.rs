//! `pmhost restart`: check the new build, ask the master for a rollout, follow its progress, report the outcome.
//! When no master runs under the name, start one (in the background).

use std::path::PathBuf;
use std::time::Instant;

use super::CommandError;
use super::plan::{Resolved, resolve_target};
use super::process::{MasterHandle, find_master};
use super::start;
use super::watch::StatusWatch;
use crate::cli::RestartArgs;
use crate::exit::cli as code;
use crate::master::signals::{Action, signal_for};
use crate::plugin;
use crate::plugin::probe::ProbeError;
use crate::requests::{self, Request};
use crate::settings::DEFAULT_INIT_TIMEOUT;
use crate::status::{HostState, RestartStatus, Snapshot};

/// Runs `pmhost restart`.
pub fn restart(mut args: Box<RestartArgs>) -> Result<i32, CommandError> {
    let target = resolve_target(&args.start.target)?;
    let master = match find_master(&target) {
        Ok(master) => master,
        Err(CommandError::NotRunning { .. }) => {
            println!("{} is not running: starting it", target.name);
            args.start.daemon = true;
            return start::start(Box::new(args.start));
        }
        Err(e) => return Err(e),
    };
    refuse_start_only_flags(&args)?;
    let watch = StatusWatch::new(target.status_dir(true)?.expect("created when missing"))?;
    let before = watch.read()?.ok_or_else(|| CommandError::NotRunning {
        name: target.name.clone(),
        path: target.status_dir_path().join(crate::rundir::STATUS_FILE),
    })?;
    if before.state == HostState::Stopping {
        return Err(CommandError::Stopping { name: target.name.clone() });
    }
    // Check the new build here, before the master is touched: it must exist, be an ELF and load as a plugin.
    let new_plugin = args.start.plugin.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    let load_timeout = args.start.task.0.init_timeout.unwrap_or(DEFAULT_INIT_TIMEOUT).min(args.timeout);
    for path in builds_to_check(&args, new_plugin.as_ref(), &target, &before) {
        check_build(&path, load_timeout)
            .map_err(|reason| CommandError::RolledBack { name: target.name.clone(), reason })?;
    }

    let id = requests::new_id();
    let request = Request::Restart {
        id: id.clone(),
        plugin: new_plugin,
        task: args.task.clone(),
        surge: Some(args.surge),
        init_timeout_ms: args.start.task.0.init_timeout.map(|t| t.as_millis() as u64),
        // The request expires when this command stops waiting (a moment before its own deadline below).
        expires_at_mono_ns: Some(crate::sysinfo::monotonic_ns().saturating_add(args.timeout.as_nanos() as u64)),
    };
    requests::submit(watch.dir(), &id, &request)?;
    let started = Instant::now();
    master.signal(signal_for(Action::Requests))?;
    let (record, snapshot) = follow(&watch, &master, &id, started + args.timeout, &target.name, args.timeout)?;
    let generation = record.generation;
    judge(&target.name, record, &snapshot)?;
    println!(
        "restarted {}: every slot runs generation {generation} ({}) after {} ms",
        target.name,
        builds(&snapshot),
        started.elapsed().as_millis()
    );
    Ok(code::OK)
}

/// The plugin files the new generation will run: the one named, else the config file's as it is now, else the
/// ones the host runs (rebuilt in place).
fn builds_to_check(
    args: &RestartArgs,
    new_plugin: Option<&PathBuf>,
    target: &Resolved,
    before: &Snapshot,
) -> Vec<PathBuf> {
    let selected = |name: &str| args.task.as_ref().is_none_or(|task| task == name);
    match (new_plugin, &target.config) {
        (Some(path), _) => vec![path.clone()],
        (None, Some(file)) => {
            file.tasks.iter().filter(|t| selected(&t.name)).filter_map(|t| t.values.plugin.clone()).collect()
        }
        (None, None) => before.tasks.iter().filter(|t| selected(&t.name)).map(|t| PathBuf::from(&t.plugin)).collect(),
    }
}

/// Loads a new build in a probe process, from a private scratch copy: loading runs the library's constructors,
/// which may exit, crash or hang, never in this process, with `timeout` as the deadline; and a refused build
/// leaves nothing in the host's directories. The error is the sentence the user reads.
fn check_build(path: &std::path::Path, timeout: std::time::Duration) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let scratch_dir = crate::rundir::open_root(scratch.path(), false)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the temporary directory vanished".to_owned())?;
    let staged = plugin::stage(path, &scratch_dir).map_err(|e| e.to_string())?;
    let shown = staged.original.display();
    let loaded = plugin::probe::run(timeout, || {
        plugin::load(&staged.load_path(), &staged.original).map(|_| ()).map_err(|e| e.to_string())
    });
    match loaded {
        Ok(Ok(())) => {
            println!("new build {shown} ({}) loads", staged.short_sha());
            Ok(())
        }
        Ok(Err(reason)) => Err(reason),
        Err(ProbeError::TimedOut(waited)) => {
            Err(format!("loading {shown} did not finish within {waited:?} (--init-timeout)"))
        }
        Err(e) => Err(format!("loading {shown}: {e}")),
    }
}

/// Follows the rollout of request `id` slot by slot until it ends; a restart that did not even begin by the
/// deadline is withdrawn.
fn follow(
    watch: &StatusWatch,
    master: &MasterHandle,
    id: &str,
    deadline: Instant,
    name: &str,
    timeout: std::time::Duration,
) -> Result<(RestartStatus, Snapshot), CommandError> {
    let mut shown = 0;
    let outcome = watch.wait_for(master, deadline, |snapshot| {
        let record = snapshot.last_restart.as_ref().filter(|r| r.request_id.as_deref() == Some(id))?;
        if record.slots_done > shown {
            shown = record.slots_done;
            println!("generation {}: {}/{} slots moved", record.generation, record.slots_done, record.slots_total);
        }
        (!record.in_progress).then(|| (record.clone(), snapshot.clone()))
    })?;
    if let Some(outcome) = outcome {
        return Ok(outcome);
    }
    let waited_ms = timeout.as_millis() as u64;
    let begun = watch.read()?.and_then(|s| s.last_restart).is_some_and(|r| r.request_id.as_deref() == Some(id));
    if begun {
        return Err(CommandError::StillRunning { name: name.to_owned(), what: "restart", waited_ms });
    }
    // Not begun: take the request back (the master drops it anyway, if it already read it: it has expired).
    requests::withdraw(watch.dir(), id);
    Err(CommandError::Withdrawn { name: name.to_owned(), pid: master.pid.as_raw(), what: "restart", waited_ms })
}

/// The outcome of a finished rollout: every slot moved, or why not.
fn judge(name: &str, record: RestartStatus, snapshot: &Snapshot) -> Result<(), CommandError> {
    if record.ok {
        return Ok(());
    }
    if snapshot.state == HostState::Stopping {
        // Refused (or cut short) because a stop began: the old workers do not keep running.
        return Err(CommandError::Stopping { name: name.to_owned() });
    }
    let reason = record.error.unwrap_or_else(|| "rolled back".to_owned());
    Err(CommandError::RolledBack { name: name.to_owned(), reason })
}

/// Flags that only shape a start: a running host takes them from its config file (or keeps its start flags), so
/// accepting them here would silently do nothing.
fn refuse_start_only_flags(args: &RestartArgs) -> Result<(), CommandError> {
    let values = super::plan::overrides(&args.start);
    let given = crate::settings::TaskValues { plugin: None, init_timeout: None, ..values };
    let host_flags = args.start.check_interval.is_some()
        || args.start.stop_timeout.is_some()
        || args.start.title_prefix.is_some()
        || args.start.log_level.is_some()
        || args.start.log_format.is_some()
        || args.start.log_rotation.is_some()
        || args.start.no_log_files
        || args.start.subreaper;
    if given != crate::settings::TaskValues::default() || host_flags {
        return Err(CommandError::Usage(
            "restart of a running host takes only --plugin, --task, --surge, --init-timeout and --timeout; the \
             other settings come from its config file (edit it and restart) or from its start; use `pmhost scale` \
             for the worker count"
                .to_owned(),
        ));
    }
    Ok(())
}

fn builds(snapshot: &Snapshot) -> String {
    snapshot
        .tasks
        .iter()
        .map(|t| format!("{} {}", t.name, &t.plugin_sha256[..12.min(t.plugin_sha256.len())]))
        .collect::<Vec<_>>()
        .join(", ")
}
