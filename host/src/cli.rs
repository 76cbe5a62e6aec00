//! The command line: every subcommand, flag and environment variable, with the help text users read.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::duration::{self, BareUnit};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the operation failed (the message says why)
  2  invalid command line or config file (new: an invalid crate name or an occupied directory)
  3  no master runs under that name (stop, status, scale, top --once)
  4  a master already runs under that name
  5  status --check: the master runs but a worker slot is not served
  6  restart: the new build was refused or rolled back; the old workers keep running
  7  start (foreground) or stop: stopped, but some workers had to be killed (stop timeout, immediate stop)
  8  start in batch mode (check interval 0 or less): some workers crashed (the message says how many and why)";

/// pmhost runs background jobs written as Rust plugins in supervised worker processes.
///
/// A master process forks workers; each worker loads the plugin, runs its `init` once and its `work` in a loop
/// within limits. The master respawns workers that exit or crash, and stops, restarts and reports on request.
#[derive(Debug, Parser)]
#[command(name = "pmhost", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a master and its workers (in the foreground unless -d).
    #[command(after_help = EXIT_CODES)]
    Start(Box<StartArgs>),
    /// Stop a running master gracefully: workers finish their call and shut down.
    #[command(after_help = EXIT_CODES)]
    Stop(StopArgs),
    /// Show a running master and its workers.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
    /// Hot-swap the plugin: roll new workers out slot by slot, rolling back if the new build fails.
    ///
    /// The new plugin (--plugin, or the file the master runs, rebuilt) is checked for loadability first; then
    /// each slot gets a new worker, and its old worker stops only once the new one finished `init`. If a new
    /// worker fails, the old workers keep running and the command exits 6 with the reason. When no master runs
    /// under the name, restart starts one in the background, taking the same flags as start.
    #[command(after_help = EXIT_CODES)]
    Restart(Box<RestartArgs>),
    /// Change the number of workers of a running master (surplus workers stop gracefully, highest slots first).
    #[command(after_help = EXIT_CODES)]
    Scale(ScaleArgs),
    /// Upgrade pmhost itself without stopping a job: the running master re-executes the new binary in place (same
    /// pid, same workers, no call interrupted); a binary that cannot take over is refused or rolled back (exit 6).
    #[command(after_help = EXIT_CODES)]
    Upgrade(UpgradeArgs),
    /// List every master under the pid root: running or stale, with its workers.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Show what a host logged: its process and run logs merged in time order, filtered, optionally followed.
    ///
    /// Reads the log files on disk, so it works whether or not the host runs. Lines keep their stored shape
    /// (text or JSON); --json prints every line as a JSON object. With --name or --config only that host's lines
    /// (hosts share a log directory by default); with neither, every host's.
    #[command(after_help = EXIT_CODES)]
    Logs(LogsArgs),
    /// A live view of a running host: tasks, workers, call rates; keys to restart and scale.
    ///
    /// Keys: q quit, r rolling restart, + / - one worker more / less for the selected task, up / down select a
    /// task, ? help. Refreshes once a second with one snapshot request to the master per refresh.
    #[command(after_help = EXIT_CODES)]
    Top(TopArgs),
    /// Check a plugin without starting anything: load it in a probe process, report its API version, and run
    /// its init (and shutdown) with the given config.
    #[command(after_help = EXIT_CODES)]
    Validate(ValidateArgs),
    /// Create a plugin crate, ready to build, test and run: a documented job, its unit tests, a pmhost.toml.
    ///
    /// PATH must not exist or be an empty directory; nothing is left behind if the crate cannot be written.
    /// The crate depends on this pmhost's plugin interface: by path on the checkout pmhost was built from,
    /// when that is still there at the same API version, else on that version from crates.io. Then:
    /// `cd PATH && cargo test && cargo build --release && pmhost start --config pmhost.toml`. Exit code 2 for
    /// an invalid crate name or an occupied PATH.
    #[command(after_help = EXIT_CODES)]
    New(NewArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of pmhost.
    Man,
}

/// `pmhost new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Directory of the new crate (created with its parents; an existing one must be empty).
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Package name: lowercase ASCII letters, digits, `-` and `_` (words apart by one), starting with a letter
    /// or `_`; the plugin file is lib{name with - as _}.so. [default: the directory's name]
    #[arg(long)]
    pub name: Option<String>,
    /// Write an async job (an AsyncJob on tokio, with the API's `tokio` feature) instead of a plain one.
    #[arg(long = "async")]
    pub asynchronous: bool,
}

/// `pmhost list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Directory of pid files. [default: /run/pmhost/pid as root, else $XDG_RUNTIME_DIR/pmhost/pid]
    #[arg(long, env = "PMHOST_PID_ROOT", value_name = "DIR")]
    pub pid_root: Option<PathBuf>,
    /// Directory of status directories. [default: /run/pmhost/status as root, else
    /// $XDG_RUNTIME_DIR/pmhost/status]
    #[arg(long, env = "PMHOST_STATUS_ROOT", value_name = "DIR")]
    pub status_root: Option<PathBuf>,
    /// Print JSON (an array of {name, pid, state, problem, tasks, workers, workers_wanted, generation}).
    #[arg(long)]
    pub json: bool,
}

/// `pmhost logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Keep printing lines as they are written (across log rotation) until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print the last LINES matching lines ("all": every one). With -f, 0 prints only new lines.
    #[arg(short = 'n', long, default_value = "50", value_parser = parse_lines, value_name = "LINES")]
    pub lines: LineCount,
    /// Only lines of this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Only lines of this worker slot.
    #[arg(long)]
    pub slot: Option<u32>,
    /// Only lines written by this process or about it (the master's lines about a worker).
    #[arg(long)]
    pub pid: Option<i32>,
    /// Only lines of this level and more severe.
    #[arg(long, value_enum)]
    pub level: Option<LevelArg>,
    /// Only lines written in this last stretch of time ("10m", "2h", "1d"; a bare number is seconds).
    #[arg(long, value_parser = parse_seconds, value_name = "DURATION")]
    pub since: Option<Duration>,
    /// Only captured worker output of this stream.
    #[arg(long, value_enum)]
    pub stream: Option<StreamArg>,
    /// Print each line as a JSON object (text lines are converted).
    #[arg(long)]
    pub json: bool,
}

/// `pmhost logs -n`: a number of lines, or every line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCount(pub Option<usize>);

/// `pmhost logs --level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LevelArg {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// `pmhost logs --stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamArg {
    Stdout,
    Stderr,
}

/// `pmhost top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print one screen as plain text and exit (two snapshots one second apart, so rates are real).
    #[arg(long)]
    pub once: bool,
}

/// `pmhost validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The plugin to check.
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    pub plugin: Option<PathBuf>,
    /// Check every task of this config file (each plugin with its [task.config]).
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The task's settings as a JSON object, handed to init.
    #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
    pub task_config: Option<String>,
    /// Longest init.
    #[arg(long, default_value = "60s", value_parser = parse_seconds, value_name = "SECS")]
    pub init_timeout: Duration,
}

/// Which master, and where its files live.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// pmhost.toml describing the host: its name, roots, logs and tasks. Flags override the file.
    #[arg(short = 'c', long, env = "PMHOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name of the master: its pid file, status directory and process titles derive from it (baseTitle in
    /// process_manage).
    /// [default: [host] name, else "process"]
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    /// Directory of pid files (created 0700; every directory above it must belong to root or you). [default:
    /// [host] pid_root, else /run/pmhost/pid as root, $XDG_RUNTIME_DIR/pmhost/pid (or ~/.local/state/pmhost/pid)
    /// for other users]
    #[arg(long, env = "PMHOST_PID_ROOT", value_name = "DIR")]
    pub pid_root: Option<PathBuf>,
    /// Directory of status directories (created 0700, checked like the pid root). [default: [host] status_root,
    /// else pmhost/status beside the pid root's default]
    #[arg(long, env = "PMHOST_STATUS_ROOT", value_name = "DIR")]
    pub status_root: Option<PathBuf>,
    /// Directory of log files (created 0700, checked like the pid root). [default: [log] dir, else pmhost/log
    /// beside the pid root's default]
    #[arg(long, env = "PMHOST_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
}

/// `pmhost start`. Settings not given fall back to the config file, then to the defaults.
#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub target: Target,
    /// The plugin: a shared library built from a crate that calls pmhost_plugin_api::export_job!. Without
    /// --config it is required; with a one-task config it replaces the task's plugin.
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,
    /// The task settings (see settings::task: each defined once).
    #[command(flatten)]
    pub task: crate::settings::TaskFlags,
    /// Check tick in seconds (status refresh and health checks). 0 or less: batch mode, no respawn, the master
    /// exits when its workers are done. [default: 300]
    #[arg(long, value_parser = parse_check_interval, allow_hyphen_values = true, value_name = "SECS")]
    pub check_interval: Option<CheckInterval>,
    /// Grace period of a graceful stop before remaining workers are killed. [default: 10s]
    #[arg(long, value_parser = parse_seconds, value_name = "SECS")]
    pub stop_timeout: Option<Duration>,
    /// Adopt and reap orphaned descendants (PR_SET_CHILD_SUBREAPER). Always on now (every master contains its
    /// workers' process trees); the flag is accepted so existing command lines keep working.
    #[arg(long)]
    pub subreaper: bool,
    /// Prefix of process titles: {prefix}:Master:{name}, {prefix}:Worker:{task}. [default: process_m]
    #[arg(long)]
    pub title_prefix: Option<String>,
    /// The task's settings as a JSON object, handed to the plugin's init (the one-plugin form of [task.config]).
    #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
    pub task_config: Option<String>,
    /// Run in the background. Returns once every worker is ready (exit 0) or the start failed (non-zero).
    #[arg(short = 'd', long)]
    pub daemon: bool,
    /// Log level (error, warn, info, debug, trace, or RUST_LOG syntax); RUST_LOG overrides it. [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log line format: text (`[Info][title pid time]: message key=value` lines) or json (one object per line).
    /// [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// When log files start afresh: daily, hourly or never. [default: daily]
    #[arg(long, value_enum)]
    pub log_rotation: Option<LogRotationArg>,
    /// Do not write log files (foreground runs still log to stderr).
    #[arg(long)]
    pub no_log_files: bool,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// `[Info][title pid time]: message key=value`.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--log-rotation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogRotationArg {
    /// A file per day.
    Daily,
    /// A file per hour.
    Hourly,
    /// One file.
    Never,
}

/// The check tick, or batch mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckInterval(pub Option<Duration>);

/// `pmhost restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub start: StartArgs,
    /// Roll only this task (hosts with several tasks).
    #[arg(long)]
    pub task: Option<String>,
    /// New workers started at a time during the rollout.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=crate::settings::MAX_WORKERS as i64))]
    pub surge: u32,
    /// How long to wait for the rollout to finish.
    #[arg(long, default_value = "5m", value_parser = parse_seconds, value_name = "SECS")]
    pub timeout: Duration,
}

/// `pmhost scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub target: Target,
    /// The number of workers wanted.
    #[arg(value_parser = clap::value_parser!(u32).range(1..=crate::settings::MAX_WORKERS as i64))]
    pub workers: u32,
    /// Scale only this task (default: every task).
    #[arg(long)]
    pub task: Option<String>,
    /// How long to wait until the workers are ready (or gone).
    #[arg(long, default_value = "60s", value_parser = parse_seconds, value_name = "SECS")]
    pub timeout: Duration,
}

/// `pmhost upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub target: Target,
    /// The new pmhost binary [default: the file the master was started from, as it is on disk now]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<std::path::PathBuf>,
    /// How long to wait until the new binary runs the master.
    #[arg(long, default_value = "30s", value_parser = parse_seconds, value_name = "SECS")]
    pub timeout: Duration,
}

/// `pmhost stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: Target,
    /// How long to wait for a graceful stop before stopping at once. [default: the host's stop timeout + 5s, so
    /// the master's own grace runs out first]
    #[arg(long, value_parser = parse_seconds, value_name = "SECS")]
    pub timeout: Option<Duration>,
    /// Stop at once (workers are killed) instead of gracefully.
    #[arg(long)]
    pub now: bool,
}

/// `pmhost status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print one JSON object (schema in the README) instead of the table.
    #[arg(long, conflicts_with = "check")]
    pub json: bool,
    /// Print nothing; exit 0 if the master runs and every worker slot is served, 5 if not, 3 if no master runs, 1 if
    /// the master does not answer within --timeout.
    #[arg(long)]
    pub check: bool,
    /// How long to wait for the master's fresh snapshot.
    #[arg(long, default_value = "5s", value_parser = parse_seconds, value_name = "SECS")]
    pub timeout: Duration,
}

/// When clap refused a missing value that came from an environment variable set to the empty string (clap
/// reports it as a missing flag value, which points at the wrong place), the sentence that says so.
pub fn empty_env_var(error: &clap::Error) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::InvalidValue {
        return None;
    }
    let (Some(ContextValue::String(value)), Some(ContextValue::String(flag))) =
        (error.get(ContextKind::InvalidValue), error.get(ContextKind::InvalidArg))
    else {
        return None;
    };
    if !value.is_empty() {
        return None;
    }
    let argv: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let command = Cli::command();
    command.get_subcommands().flat_map(|sub| sub.get_arguments()).find_map(|arg| {
        let (env, long) = (arg.get_env()?, arg.get_long()?);
        let long = format!("--{long}");
        let short = arg.get_short().map(|c| format!("-{c}"));
        let on_command_line =
            argv.iter().any(|a| *a == long || a.starts_with(&format!("{long}=")) || short.as_ref() == Some(a));
        let empty = std::env::var_os(env).is_some_and(|v| v.is_empty());
        (flag.starts_with(&format!("{long} ")) && !on_command_line && empty).then(|| {
            format!(
                "the environment variable {} is set but empty: unset it, or set it to the value {long} would take",
                env.to_string_lossy()
            )
        })
    })
}

fn parse_name(text: &str) -> Result<String, String> {
    crate::names::validate("name", text).map(|()| text.to_owned()).map_err(|e| e.to_string())
}

fn parse_lines(text: &str) -> Result<LineCount, String> {
    if text.eq_ignore_ascii_case("all") {
        return Ok(LineCount(None));
    }
    text.parse::<usize>()
        .map(|n| LineCount(Some(n)))
        .map_err(|_| format!("{text:?} is not a number of lines or \"all\""))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    duration::parse(text, BareUnit::Seconds).map_err(|e| e.to_string())
}

fn parse_check_interval(text: &str) -> Result<CheckInterval, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') && trimmed[1..].parse::<f64>().is_ok() {
        return Ok(CheckInterval(None));
    }
    let interval = parse_seconds(trimmed)?;
    Ok(CheckInterval((!interval.is_zero()).then_some(interval)))
}

fn parse_json_object(text: &str) -> Result<String, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(text.to_owned()),
        Ok(_) => Err("the task config must be a JSON object, e.g. '{\"queue\": \"mail\"}'".to_owned()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn check_interval_of_zero_or_less_is_batch_mode() {
        assert_eq!(parse_check_interval("0").unwrap(), CheckInterval(None));
        assert_eq!(parse_check_interval("-1").unwrap(), CheckInterval(None));
        assert_eq!(parse_check_interval("300").unwrap(), CheckInterval(Some(Duration::from_secs(300))));
    }
}
