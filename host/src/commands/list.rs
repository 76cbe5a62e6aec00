//! `pmhost list`: every master under the pid root, running or stale, with what its status file says.

use serde::Serialize;

use super::CommandError;
use super::watch::read_snapshot;
use crate::cli::ListArgs;
use crate::exit::cli as code;
use crate::pidfile;
use crate::rundir::{self, Dir};
use crate::status::Snapshot;

/// One line of the list.
#[derive(Debug, Serialize)]
struct Entry {
    name: String,
    /// The master's pid, when one holds the pid file.
    pid: Option<i32>,
    /// `running`, `starting`, `stopping` (from the status file), `stale` (a pid file nobody holds), or `refused`
    /// (a pid file that cannot be trusted or read: `problem` says why).
    state: String,
    /// Why the pid file was refused.
    problem: Option<String>,
    tasks: Vec<String>,
    workers: usize,
    workers_wanted: u32,
    generation: Option<u32>,
}

/// Runs `pmhost list`.
pub fn list(args: ListArgs) -> Result<i32, CommandError> {
    let defaults = rundir::default_roots();
    let pid_root = args.pid_root.unwrap_or(defaults.pid);
    let status_root = args.status_root.unwrap_or(defaults.status);
    let Some(pids) = rundir::open_root(&pid_root, false)? else {
        print_entries(&[], args.json);
        return Ok(code::OK);
    };
    let statuses = rundir::open_root(&status_root, false).ok().flatten();
    let mut names: Vec<String> = pids
        .entries()
        .map_err(|e| CommandError::system(format!("read {}", pid_root.display()), e))?
        .into_iter()
        .filter_map(|(name, _)| name.strip_suffix(".pid").map(str::to_owned))
        .filter(|n| crate::names::validate("name", n).is_ok())
        .collect();
    names.sort();
    let entries: Vec<Entry> = names.into_iter().map(|name| entry(&pids, statuses.as_ref(), name)).collect();
    print_entries(&entries, args.json);
    Ok(code::OK)
}

/// The list entry of the host `name`; a pid file that cannot be trusted is reported, not fatal.
fn entry(pids: &Dir, statuses: Option<&Dir>, name: String) -> Entry {
    let mut entry = Entry {
        name,
        pid: None,
        state: "stale".to_owned(),
        problem: None,
        tasks: Vec::new(),
        workers: 0,
        workers_wanted: 0,
        generation: None,
    };
    let pid = match pidfile::running_master(pids, &entry.name) {
        Ok(Some(pid)) => pid,
        Ok(None) => return entry,
        Err(e) => {
            // One bad file (another user's, a FIFO) must not hide every other master.
            eprintln!("pmhost: warning: {e}");
            entry.state = "refused".to_owned();
            entry.problem = Some(e.to_string());
            return entry;
        }
    };
    entry.pid = Some(pid.as_raw());
    entry.state = "running".to_owned();
    let snapshot: Option<Snapshot> = statuses
        .and_then(|root| root.subdir(&entry.name, false).ok().flatten())
        .and_then(|dir| read_snapshot(&dir).ok().flatten());
    if let Some(s) = snapshot {
        entry.state = s.state.to_string();
        entry.tasks = s.tasks.iter().map(|t| t.name.clone()).collect();
        entry.workers = s.tasks.iter().map(|t| t.workers.len()).sum();
        entry.workers_wanted = s.tasks.iter().map(|t| t.workers_wanted).sum();
        entry.generation = Some(s.generation);
    }
    entry
}

fn print_entries(entries: &[Entry], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(entries).expect("entries serialize"));
        return;
    }
    println!("{:<24} {:>8} {:<10} {:>9} {:>4}  tasks", "name", "pid", "state", "workers", "gen");
    for e in entries {
        let pid = e.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let generation = e.generation.map_or_else(|| "-".to_owned(), |g| g.to_string());
        let workers = format!("{}/{}", e.workers, e.workers_wanted);
        let tail = e.problem.clone().unwrap_or_else(|| e.tasks.join(","));
        println!("{:<24} {:>8} {:<10} {:>9} {:>4}  {tail}", e.name, pid, e.state, workers, generation);
    }
}
