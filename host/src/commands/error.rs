//! Errors of the CLI commands, each mapped to a documented exit code.

use std::path::PathBuf;

use thiserror::Error;

use crate::exit::cli as code;
use crate::master::MasterError;
use crate::pidfile::PidFileError;
use crate::plugin::StageError;
use crate::rundir::RunDirError;

/// A command failed.
#[derive(Debug, Error)]
pub enum CommandError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Plugin(#[from] StageError),
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error("no master named {name} is running (no locked pid file at {path})")]
    NotRunning { name: String, path: PathBuf },
    #[error("cannot {what}")]
    System {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("master {name} (pid {pid}) did not write a status snapshot within {waited_ms} ms")]
    NoSnapshot { name: String, pid: i32, waited_ms: u64 },
    #[error("cannot read status file {path}")]
    BadStatus {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("start of {name} failed: {reason}")]
    DaemonStart { name: String, reason: String },
    #[error("restart of {name} rolled back, the old workers keep running: {reason}")]
    RolledBack { name: String, reason: String },
    #[error("upgrade of {name} refused, the master keeps running its binary and its workers: {reason}")]
    UpgradeRefused { name: String, reason: String },
    #[error("{name} is stopping: the restart was not done, and its workers are ending")]
    Stopping { name: String },
    #[error("{name} refused the request: {reason}")]
    Refused { name: String, reason: String },
    #[error("no plugin given: pass --plugin PATH, or --config FILE with [[task]] entries")]
    NoPlugin,
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "the {what} of {name} did not finish within {waited_ms} ms; `pmhost status --name {name}` shows where it is"
    )]
    StillRunning { name: String, what: &'static str, waited_ms: u64 },
    #[error(
        "{name} (pid {pid}) did not take the {what} request within {waited_ms} ms (is it stopped?); the request \
         was withdrawn and will not be applied later"
    )]
    Withdrawn { name: String, pid: i32, what: &'static str, waited_ms: u64 },
    #[error("the master (pid {pid}) exited before it answered; see its log")]
    MasterGone { pid: i32 },
    #[error("there is no log directory {dir}; pass the host's --log-dir or --config (the host may log elsewhere)")]
    NoLogDir { dir: PathBuf },
    #[error("master {name} (pid {pid}) is still running after SIGKILL")]
    Unkillable { name: String, pid: i32 },
    #[error(transparent)]
    Scaffold(#[from] crate::scaffold::ScaffoldError),
}

impl CommandError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::NotRunning { .. } => code::NOT_RUNNING,
            CommandError::PidFile(PidFileError::AlreadyRunning { .. }) => code::ALREADY_RUNNING,
            CommandError::RolledBack { .. } | CommandError::UpgradeRefused { .. } => code::ROLLED_BACK,
            CommandError::Master(MasterError::BatchFailed(_)) => code::BATCH_FAILED,
            CommandError::NoPlugin | CommandError::Usage(_) | CommandError::Config(_) => code::USAGE,
            CommandError::Scaffold(error) if error.is_usage() => code::USAGE,
            _ => code::FAILED,
        }
    }

    /// Wraps an OS error with what was being done.
    pub fn system(what: impl Into<String>, source: impl Into<std::io::Error>) -> CommandError {
        CommandError::System { what: what.into(), source: source.into() }
    }
}
