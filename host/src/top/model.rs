//! What `pmhost top` knows beyond one snapshot: call rates between successive snapshots, a minute of per-task
//! rate history for the sparklines, and the crashes seen in the last minute. Pure: fed snapshots, asked figures.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::status::{Snapshot, TaskStatus};

/// Rate samples kept per task: one a refresh, a minute's worth.
pub const HISTORY: usize = 60;
/// Crashes older than this are no longer counted.
const CRASH_WINDOW_S: u64 = 60;

/// The snapshots seen and what follows from them.
#[derive(Debug, Default)]
pub struct Model {
    previous: Option<Snapshot>,
    current: Option<Snapshot>,
    /// Per task: calls/s at each refresh, oldest first.
    history: BTreeMap<String, VecDeque<u64>>,
    /// Per task: crashed workers seen (pid, Unix seconds of the exit).
    crashes: BTreeMap<String, BTreeSet<(i32, u64)>>,
}

impl Model {
    /// Takes a new snapshot. A snapshot of another master (it was restarted) starts the figures afresh.
    pub fn update(&mut self, snapshot: Snapshot) {
        if self.current.as_ref().is_some_and(|c| c.master.pid != snapshot.master.pid) {
            *self = Model::default();
        }
        for task in &snapshot.tasks {
            let seen = self.crashes.entry(task.name.clone()).or_default();
            let exits = task.workers.iter().filter_map(|w| w.last_exit.as_ref());
            for exit in exits.chain(task.backoff.iter().filter_map(|b| b.last_exit.as_ref())) {
                if exit.crash {
                    seen.insert((exit.pid, exit.at));
                }
            }
            seen.retain(|(_, at)| at + CRASH_WINDOW_S >= snapshot.written_at);
        }
        self.previous = self.current.take();
        self.current = Some(snapshot);
        let rates: Vec<(String, u64)> = self
            .current
            .iter()
            .flat_map(|c| &c.tasks)
            .filter_map(|t| Some((t.name.clone(), self.task_rate(&t.name)?.round() as u64)))
            .collect();
        for (task, rate) in rates {
            let history = self.history.entry(task).or_default();
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(rate);
        }
    }

    /// The newest snapshot.
    pub fn current(&self) -> Option<&Snapshot> {
        self.current.as_ref()
    }

    /// Seconds between the two newest snapshots.
    fn interval_s(&self) -> Option<f64> {
        let (previous, current) = (self.previous.as_ref()?, self.current.as_ref()?);
        let ns = current.written_at_mono_ns.checked_sub(previous.written_at_mono_ns)?;
        (ns > 0).then(|| ns as f64 / 1e9)
    }

    fn tasks(&self, name: &str) -> Option<(&TaskStatus, &TaskStatus)> {
        let previous = self.previous.as_ref().and_then(|s| s.tasks.iter().find(|t| t.name == name))?;
        let current = self.current.as_ref()?.tasks.iter().find(|t| t.name == name)?;
        Some((previous, current))
    }

    /// Calls per second of `task` between the two newest snapshots (`None` from a single sample).
    pub fn task_rate(&self, task: &str) -> Option<f64> {
        let (previous, current) = self.tasks(task)?;
        let calls = current.executions_total.checked_sub(previous.executions_total)?;
        Some(calls as f64 / self.interval_s()?)
    }

    /// Calls per second of the worker `pid` of `task` (`None` for a worker not in the previous snapshot).
    pub fn worker_rate(&self, task: &str, pid: i32) -> Option<f64> {
        let (previous, current) = self.tasks(task)?;
        let before = previous.workers.iter().find(|w| w.pid == pid)?.executions;
        let now = current.workers.iter().find(|w| w.pid == pid)?.executions;
        Some(now.checked_sub(before)? as f64 / self.interval_s()?)
    }

    /// Crashed workers of `task` seen in the last minute.
    pub fn crashes_last_minute(&self, task: &str) -> usize {
        self.crashes.get(task).map_or(0, BTreeSet::len)
    }

    /// Calls/s of `task` at each refresh over the last minute, oldest first.
    pub fn history(&self, task: &str) -> Vec<u64> {
        self.history.get(task).map(|h| h.iter().copied().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ExitStatus, MasterStatus, WorkerStatus};

    fn snapshot(master: i32, at_s: u64, workers: &[(i32, u64)], crashed: &[(i32, u64)]) -> Snapshot {
        let worker = |(pid, executions): (i32, u64), index: usize| WorkerStatus {
            slot: index as u32,
            pid,
            title: String::new(),
            state: crate::status::WorkerState::Idle,
            executions,
            generation: 1,
            plugin_sha256: String::new(),
            rss_bytes: None,
            started_at: 0,
            restarts: 0,
            uid: None,
            last_exit: crashed.get(index).map(|&(pid, at)| ExitStatus {
                pid,
                code: Some(1),
                signal: None,
                reason: "crash".into(),
                crash: true,
                at,
            }),
        };
        Snapshot {
            name: "h".into(),
            state: crate::status::HostState::Running,
            master: MasterStatus {
                pid: master,
                title: String::new(),
                rss_bytes: None,
                started_at: 0,
                uptime_s: at_s,
                stop_timeout_ms: 0,
                version: String::new(),
            },
            generation: 1,
            written_at_mono_ns: at_s * 1_000_000_000,
            written_at: 1000 + at_s,
            last_restart: None,
            last_scale: None,
            last_upgrade: None,
            tasks: vec![TaskStatus {
                name: "t".into(),
                plugin: String::new(),
                plugin_sha256: String::new(),
                workers_wanted: workers.len() as u32,
                executions_total: workers.iter().map(|w| w.1).sum(),
                workers: workers.iter().enumerate().map(|(i, &w)| worker(w, i)).collect(),
                backoff: Vec::new(),
                watch: None,
                spawn_latency: None,
            }],
        }
    }

    #[test]
    fn rates_need_two_samples_and_follow_the_counters() {
        let mut model = Model::default();
        model.update(snapshot(1, 10, &[(100, 5), (101, 5)], &[]));
        assert_eq!(model.task_rate("t"), None);
        assert_eq!(model.worker_rate("t", 100), None);
        model.update(snapshot(1, 12, &[(100, 25), (102, 2)], &[]));
        assert_eq!(model.task_rate("t"), Some(8.5));
        assert_eq!(model.worker_rate("t", 100), Some(10.0));
        assert_eq!(model.worker_rate("t", 102), None, "a new worker has no rate yet");
        assert_eq!(model.history("t"), [9]);
    }

    #[test]
    fn crashes_are_counted_once_and_forgotten_after_a_minute() {
        let mut model = Model::default();
        model.update(snapshot(1, 0, &[(100, 0), (101, 0)], &[(90, 1000), (91, 999)]));
        model.update(snapshot(1, 1, &[(100, 0), (101, 0)], &[(90, 1000), (91, 999)]));
        assert_eq!(model.crashes_last_minute("t"), 2);
        model.update(snapshot(1, 60, &[(100, 0), (102, 0)], &[(90, 1000), (101, 1059)]));
        assert_eq!(model.crashes_last_minute("t"), 2, "pid 91 is older than a minute, 101 is new");
    }

    #[test]
    fn a_new_master_starts_afresh() {
        let mut model = Model::default();
        model.update(snapshot(1, 10, &[(100, 50)], &[]));
        model.update(snapshot(1, 11, &[(100, 60)], &[]));
        model.update(snapshot(2, 12, &[(200, 1)], &[]));
        assert_eq!(model.task_rate("t"), None);
        assert!(model.history("t").is_empty());
    }
}
