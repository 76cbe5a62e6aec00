//! pmhost: a multi-process task host. The `pmhost` binary (`main.rs`) is a thin shell around this library.
//!
//! # Layers
//!
//! Each layer uses only the ones below it:
//!
//! ```text
//!  commands   cli ─▶ commands::* (start, stop, status, restart, scale, list, logs, top, validate, new, ...)
//!     │          plan: flags + pmhost.toml + defaults ─▶ settings        top, logread: what the operator sees
//!     ▼
//!  master     core (the loop) ─ children, stopping, rollout, scaling, supervise, capture, orphans, snapshot,
//!             watch (new builds of watched plugin files)
//!     │          decisions as pure functions: policy, progress (rollouts), startup, life (a worker's states)
//!     ▼
//!  worker     worker: one worker process, from fork to exit, running the plugin; zygote: a process per
//!             build that loads the plugin once and forks the workers of every task running it for the master
//!     │
//!     ▼
//!  shared     settings (each task setting defined once), config (pmhost.toml), plugin (stage, load, probe),
//!             rundir (the trust boundary), pidfile, requests, control, ready, report, scoreboard, status,
//!             logging, metrics, notify, title, sysinfo, duration, size, names, exit; scaffold (`pmhost new`)
//! ```
//!
//! # Who owns which state
//!
//! | state | owner | shared with |
//! |---|---|---|
//! | tasks, slots, builds, workers and their lives (`master::state`) | the master, alone | — (status is a copy) |
//! | the scoreboard (`scoreboard`): a shared page per worker, phase and counters | the master maps it | each worker writes its own cell |
//! | the report pipe (`report`): ready / failed | the master reads | every worker writes |
//! | worker output pipes (`master::capture`) | the master reads | the worker and its children write |
//! | inotify watches on watched tasks' plugin directories (`master::watch`) | the master, alone | — (the user's build writes the files) |
//! | the run directories (`rundir`): pid file, status, staged builds, requests | the master, through held descriptors | the CLI reads them, writes requests |
//! | the readiness pipe (`ready`) | the daemon writes once | `start -d` waits on it |
//! | a stop conversation (`control`) | the CLI asks | the master answers |
//! | log files (`logging`) | every process appends whole records | `logs` reads |
//!
//! The master is single-threaded and never loads plugin code; workers load it after the fork, or inherit it
//! loaded from their build's zygote.

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod duration;
pub mod exit;
pub mod identity;
pub mod logging;
pub mod logread;
pub mod master;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod pidfile;
pub mod plugin;
pub mod ready;
pub mod report;
pub mod requests;
pub mod rundir;
pub mod scaffold;
pub mod scoreboard;
pub mod settings;
pub mod size;
pub mod status;
pub mod sysinfo;
pub mod title;
pub mod top;
pub mod upgrade;
pub mod worker;
pub mod zygote;
