//! `pmhost list`: every master under the pid root, running or stale, with what its status file says.

use std::path::PathBuf;

use serde::Serialize;

use super::CommandError;
use super::watch::read_snapshot;
use crate::cli::ListArgs;
use crate::exit::cli as code;
use crate::pidfile;
use crate::settings::{DEFAULT_PID_ROOT, DEFAULT_STATUS_ROOT};
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
    let pid_root = args.pid_root.unwrap_or_else(|| PathBuf::from(DEFAULT_PID_ROOT));
    let status_root = args.status_root.unwrap_or_else(|| PathBuf::from(DEFAULT_STATUS_ROOT));
    let mut entries = Vec::new();
    let dir = match std::fs::read_dir(&pid_root) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            print_entries(&entries, args.json);
            return Ok(code::OK);
        }
        Err(e) => return Err(CommandError::system(format!("read {}", pid_root.display()), e)),
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".pid")).map(str::to_owned))
        .filter(|n| crate::names::validate("name", n).is_ok())
        .collect();
    names.sort();
    for name in names {
        // One bad file (another user's, unreadable) must not hide every other master.
        let pid = match pidfile::running_master(&pid_root.join(format!("{name}.pid"))) {
            Ok(pid) => pid,
            Err(e) => {
                eprintln!("pmhost: warning: {e}");
                entries.push(Entry {
                    name,
                    pid: None,
                    state: "refused".to_owned(),
                    problem: Some(e.to_string()),
                    tasks: Vec::new(),
                    workers: 0,
                    workers_wanted: 0,
                    generation: None,
                });
                continue;
            }
        };
        let snapshot: Option<Snapshot> =
            pid.and_then(|_| read_snapshot(&status_root.join(&name).join("status.json")).ok().flatten());
        let entry = match (pid, snapshot) {
            (Some(pid), Some(s)) => Entry {
                name,
                pid: Some(pid.as_raw()),
                state: s.state.clone(),
                problem: None,
                tasks: s.tasks.iter().map(|t| t.name.clone()).collect(),
                workers: s.tasks.iter().map(|t| t.workers.len()).sum(),
                workers_wanted: s.tasks.iter().map(|t| t.workers_wanted).sum(),
                generation: Some(s.generation),
            },
            (Some(pid), None) => Entry {
                name,
                pid: Some(pid.as_raw()),
                state: "running".to_owned(),
                problem: None,
                tasks: Vec::new(),
                workers: 0,
                workers_wanted: 0,
                generation: None,
            },
            (None, _) => Entry {
                name,
                pid: None,
                state: "stale".to_owned(),
                problem: None,
                tasks: Vec::new(),
                workers: 0,
                workers_wanted: 0,
                generation: None,
            },
        };
        entries.push(entry);
    }
    print_entries(&entries, args.json);
    Ok(code::OK)
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
        println!("{:<24} {:>8} {:<10} {:>9} {:>4}  {}", e.name, pid, e.state, workers, generation, e.tasks.join(","));
    }
}
