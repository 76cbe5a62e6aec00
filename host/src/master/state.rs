//! The master's state of its tasks: what each task runs (its build), its worker slots and their history, and
//! its live workers with where each is in its life.

use std::collections::BTreeMap;
use std::time::SystemTime;

use nix::unistd::Pid;

use super::life::Life;
use crate::plugin::StagedPlugin;
use crate::scoreboard::CellIndex;
use crate::settings::TaskSettings;
use crate::status::ExitStatus;
use crate::sysinfo::Mono;

/// What a worker runs: a plugin build with its limits and config, and the generation it was rolled out as.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Build {
    pub(super) generation: u32,
    #[serde(with = "super::handed::staged")]
    pub(super) plugin: StagedPlugin,
    pub(super) limits: crate::settings::Limits,
    pub(super) config_json: String,
    /// Who the workers run as and in which environment.
    #[serde(with = "super::handed::arc")]
    pub(super) process: std::sync::Arc<crate::settings::ProcessSettings>,
}

impl Build {
    pub(super) fn new(generation: u32, plugin: StagedPlugin, settings: &TaskSettings) -> Build {
        Build {
            generation,
            plugin,
            limits: settings.limits,
            config_json: settings.config_json.clone(),
            process: std::sync::Arc::new(settings.process.clone()),
        }
    }

    /// A build of no real plugin, for unit tests of the master's decisions.
    #[cfg(test)]
    pub(super) fn for_tests(generation: u32) -> Build {
        Build {
            generation,
            plugin: StagedPlugin::for_tests(),
            limits: crate::settings::Limits::default(),
            config_json: "{}".to_owned(),
            process: Default::default(),
        }
    }
}

/// One task: its settings, the build its slots run, and its worker slots.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Task {
    pub(super) settings: TaskSettings,
    /// The committed build: what new slots and respawns run (a slot may differ during a rollout).
    pub(super) build: Build,
    pub(super) slots: Vec<Slot>,
    /// `work` calls finished by workers of this task that have exited.
    pub(super) executions_done: u64,
    /// Worker exits by reason (`normal`, `crash`, `stopped`, `killed`), for metrics.
    #[serde(with = "super::handed::exits")]
    pub(super) exits: BTreeMap<&'static str, u64>,
    /// The last spawn latencies of its workers (not handed over by an upgrade).
    #[serde(skip)]
    pub(super) spawn_latency: super::latency::SpawnLatencies,
    /// Removed from the config file: its workers are stopped and it is no longer shown once they are gone.
    pub(super) retired: bool,
}

/// The history of one worker slot.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Slot {
    /// The build this slot runs, when a rollout has moved it off the task's build. Boxed: it is rare, and a
    /// `Build` inline made each slot 344 bytes (350 KiB of master memory at 1024 slots).
    pub(super) build: Option<Box<Build>>,
    /// Workers started in this slot so far.
    pub(super) spawned: u32,
    /// Consecutive crashes (reset by a normal exit or by a long enough run).
    pub(super) crashes: u32,
    /// No respawn before this (crash backoff).
    pub(super) respawn_at: Option<Mono>,
    /// How the last worker of this slot ended.
    pub(super) last_exit: Option<ExitStatus>,
    /// The live workers of this slot (one, or two while a rollout or a retirement overlaps them): an index into
    /// the master's workers, so per-event work never scans them all. Rebuilt from the workers after an upgrade.
    #[serde(skip)]
    pub(super) pids: Vec<Pid>,
    /// Workers asked of a zygote for this slot that have not reported yet.
    #[serde(skip)]
    pub(super) requested: u32,
}

/// A live worker process.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Worker {
    #[serde(with = "super::handed::pid")]
    pub(super) pid: Pid,
    pub(super) task: usize,
    pub(super) slot: u32,
    pub(super) generation: u32,
    pub(super) cell: CellIndex,
    pub(super) plugin_sha256: String,
    pub(super) started: Mono,
    pub(super) started_wall: SystemTime,
    /// Where it is in its life, with the deadline that applies.
    pub(super) life: Life,
    /// When `init` succeeded.
    pub(super) ready_at: Option<Mono>,
    /// The scoreboard sequence number last seen and when it was first seen (hung-work detection).
    pub(super) seq_seen: (u64, Mono),
    /// What went wrong, when something did: the worker's own report (failed to load or `init`) or the master's
    /// reason to end it (too slow, hung). Its end then counts as a crash, with this reason.
    pub(super) fault: Option<String>,
    /// The fault is the worker's own report (it failed to load or `init`), not the master's reason.
    #[serde(default)]
    pub(super) fault_reported: bool,
    pub(super) rss: Option<u64>,
    /// Since when the worker has been stopped (SIGSTOP, as the kernel told the master), if it is.
    pub(super) stopped_since: Option<Mono>,
    /// Its `/proc/PID/statm`, held open once a snapshot read it (the pid cannot be reused before the master reaps
    /// it); not handed over by an upgrade, the new image opens its own.
    #[serde(skip)]
    pub(super) statm: Option<std::fs::File>,
}

impl Worker {
    /// `init` succeeded (at some point: a stopping worker may have been ready).
    pub(super) fn ready(&self) -> bool {
        self.ready_at.is_some()
    }

    /// Records a fault (the first one is kept: it is the cause).
    pub(super) fn record_fault(&mut self, reason: String) {
        if self.fault.is_none() {
            self.fault = Some(reason);
            self.fault_reported = true;
        }
    }
}
