//! pmhost: a multi-process task host. The `pmhost` binary is a thin shell around this library.
//!
//! Layout: [`cli`] defines the command line and [`commands`] runs it in the calling process; [`master`] is the
//! supervising event loop and [`worker`] the life of a worker process; [`plugin`] stages and loads plugins;
//! [`scoreboard`], [`report`], [`pidfile`], [`rundir`] and [`status`] are the shared state and files between them;
//! [`rundir`] is also the trust boundary (every run directory checked up to `/`, then used only through held
//! descriptors), and [`control`] the stop conversation between the CLI and a master (queued signals).

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod duration;
pub mod exit;
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
pub mod scoreboard;
pub mod settings;
pub mod size;
pub mod status;
pub mod sysinfo;
pub mod title;
pub mod top;
pub mod worker;
