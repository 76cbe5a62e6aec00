//! From command line and config file to settings: which master a command means, and what a start runs.
//! Precedence everywhere: flag, then environment variable, then the config file, then the default.

use std::path::{Path, PathBuf};

use super::CommandError;
use crate::cli::{LogFormatArg, LogRotationArg, StartArgs, Target};
use crate::config::{self, ConfigFile};
use crate::logging::{Format, LogSettings, Rotation};
use crate::rundir::{self, Dir, RunDirError};
use crate::settings::{DEFAULT_NAME, DEFAULT_TITLE_PREFIX, HostSettings, TaskOverrides, TaskSettings};

/// The master a command is about, and where its files are.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub pid_root: PathBuf,
    pub status_root: PathBuf,
    pub log_dir: PathBuf,
    pub config: Option<ConfigFile>,
}

impl Resolved {
    /// `{pid_root}/{name}.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.pid_root.join(format!("{}.pid", self.name))
    }

    /// `{status_root}/{name}`, for messages.
    pub fn status_dir_path(&self) -> PathBuf {
        self.status_root.join(&self.name)
    }

    /// The pid root, checked and held (`Ok(None)`: it does not exist).
    pub fn pid_root_dir(&self) -> Result<Option<Dir>, RunDirError> {
        rundir::open_root(&self.pid_root, false)
    }

    /// The host's status directory, checked and held; `create` makes it (and the way there) if missing.
    pub fn status_dir(&self, create: bool) -> Result<Option<Dir>, RunDirError> {
        match rundir::open_root(&self.status_root, create)? {
            Some(root) => root.subdir(&self.name, create),
            None => Ok(None),
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Resolves `--config`, `--name` and the roots.
pub fn resolve_target(target: &Target) -> Result<Resolved, CommandError> {
    let config = target.config.as_deref().map(config::load).transpose()?;
    let host = config.as_ref().map(|c| &c.host);
    let log = config.as_ref().map(|c| &c.log);
    let defaults = rundir::default_roots();
    Ok(Resolved {
        name: target
            .name
            .clone()
            .or_else(|| host.and_then(|h| h.name.clone()))
            .unwrap_or_else(|| DEFAULT_NAME.to_owned()),
        pid_root: absolute(
            &target.pid_root.clone().or_else(|| host.and_then(|h| h.pid_root.clone())).unwrap_or(defaults.pid),
        ),
        status_root: absolute(
            &target.status_root.clone().or_else(|| host.and_then(|h| h.status_root.clone())).unwrap_or(defaults.status),
        ),
        log_dir: absolute(&target.log_dir.clone().or_else(|| log.and_then(|l| l.dir.clone())).unwrap_or(defaults.log)),
        config,
    })
}

/// Everything a start runs.
pub struct Plan {
    pub host: HostSettings,
    pub log: LogSettings,
    pub tasks: Vec<TaskSettings>,
    /// The task flags, kept by the master to re-apply when it re-reads the config file.
    pub overrides: TaskOverrides,
    pub config_path: Option<PathBuf>,
}

/// The task flags of a start.
pub fn overrides(args: &StartArgs) -> TaskOverrides {
    TaskOverrides {
        plugin: args.plugin.as_deref().map(absolute),
        config_json: args.task_config.clone(),
        working_directory: args.task.0.working_directory.as_deref().map(absolute),
        ..args.task.0.clone()
    }
}

/// Resolves a start: host, logs and tasks.
pub fn plan_start(args: &StartArgs) -> Result<Plan, CommandError> {
    let target = resolve_target(&args.target)?;
    let file = target.config.as_ref();
    let overrides = overrides(args);
    let tasks: Vec<TaskSettings> = match file {
        Some(file) => {
            if overrides.plugin.is_some() && file.tasks.len() > 1 {
                return Err(CommandError::Usage(format!(
                    "--plugin replaces the plugin of a one-task config, but {} has {} tasks",
                    file.path.display(),
                    file.tasks.len()
                )));
            }
            file.resolve_tasks(&overrides)
        }
        None => vec![overrides.settings(&target.name).ok_or(CommandError::NoPlugin)?],
    };
    let host_spec = file.map(|f| f.host.clone()).unwrap_or_default();
    let host = HostSettings {
        name: target.name.clone(),
        title_prefix: args
            .title_prefix
            .clone()
            .or(host_spec.title_prefix)
            .unwrap_or_else(|| DEFAULT_TITLE_PREFIX.to_owned()),
        pid_root: target.pid_root.clone(),
        status_root: target.status_root.clone(),
        check_interval: match args.check_interval {
            Some(interval) => interval.0,
            None => host_spec.check_interval.unwrap_or(Some(std::time::Duration::from_secs(300))),
        },
        stop_timeout: args.stop_timeout.or(host_spec.stop_timeout).unwrap_or(std::time::Duration::from_secs(10)),
        subreaper: args.subreaper || host_spec.subreaper.unwrap_or(false),
    };
    let log_spec = file.map(|f| f.log.clone()).unwrap_or_default();
    let defaults = LogSettings::default();
    let log = LogSettings {
        enabled: !args.no_log_files && log_spec.enabled.unwrap_or(defaults.enabled),
        dir: target.log_dir.clone(),
        process: log_spec.process.unwrap_or(defaults.process),
        run: log_spec.run.unwrap_or(defaults.run),
        error_prefix: log_spec.error_prefix.unwrap_or(defaults.error_prefix),
        fatal_prefix: log_spec.fatal_prefix.unwrap_or(defaults.fatal_prefix),
        rotation: match args.log_rotation {
            Some(LogRotationArg::Daily) => Rotation::Daily,
            Some(LogRotationArg::Hourly) => Rotation::Hourly,
            Some(LogRotationArg::Never) => Rotation::Never,
            None => log_spec.rotation.unwrap_or(defaults.rotation),
        },
        format: match args.log_format {
            Some(LogFormatArg::Text) => Format::Text,
            Some(LogFormatArg::Json) => Format::Json,
            None => log_spec.format.unwrap_or(defaults.format),
        },
        level: args.log_level.clone().or(log_spec.level).unwrap_or(defaults.level),
        stderr: !args.daemon,
    };
    for task in &tasks {
        crate::identity::check(&task.process).map_err(|e| CommandError::Usage(format!("task {}: {e}", task.name)))?;
    }
    Ok(Plan { host, log, tasks, overrides, config_path: file.map(|f| f.path.clone()) })
}
