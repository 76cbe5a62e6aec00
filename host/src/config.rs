//! `pmhost.toml`: a whole host in one file (`[host]`, `[log]`, one `[[task]]` per task with its `[task.config]`),
//! read and checked before anything starts. Every mistake is reported as `file:line:column: sentence`.
//!
//! Checking happens in three passes over the text: the TOML syntax (with positions), the keys (unknown keys are
//! errors, with the nearest valid key suggested), then the typed values and their ranges. Relative paths in the
//! file are relative to the file's directory, so a file works from any working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::duration::{self, BareUnit};
use crate::logging::{Format, Rotation};
use crate::settings::{Section, TASK_SETTINGS, TaskSettings, TaskValues, section_keys};

/// A config file could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something in the file is wrong.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
}

/// A number or a duration text, as a setting may be written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    /// A whole number in the setting's unit.
    Integer(i64),
    /// A fractional number in the setting's unit.
    Float(f64),
    /// A duration with a unit, such as "200ms".
    Text(String),
}

/// `[host]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HostSection {
    pub name: Option<Spanned<String>>,
    pub title_prefix: Option<String>,
    pub pid_root: Option<PathBuf>,
    pub status_root: Option<PathBuf>,
    pub check_interval: Option<Spanned<DurationValue>>,
    pub stop_timeout: Option<Spanned<DurationValue>>,
    pub subreaper: Option<bool>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LogSection {
    pub enabled: Option<bool>,
    pub dir: Option<PathBuf>,
    pub process: Option<Spanned<String>>,
    pub run: Option<Spanned<String>>,
    pub error_prefix: Option<String>,
    pub fatal_prefix: Option<String>,
    pub rotation: Option<Rotation>,
    pub format: Option<Format>,
    pub level: Option<String>,
}

/// One `[[task]]`, each value with its position: `name`, `plugin`, the settings of
/// [`TASK_SETTINGS`](crate::settings::TASK_SETTINGS), and `config`.
type TaskSection = BTreeMap<String, Spanned<toml::Value>>;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct FileShape {
    host: HostSection,
    log: LogSection,
    task: Vec<TaskSection>,
}

/// A task as the file describes it, values checked and paths resolved (`values.plugin` is always set).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    pub values: TaskValues,
}

/// The host part of the file, values checked and paths resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSpec {
    pub name: Option<String>,
    pub title_prefix: Option<String>,
    pub pid_root: Option<PathBuf>,
    pub status_root: Option<PathBuf>,
    /// `Some(None)`: batch mode.
    pub check_interval: Option<Option<Duration>>,
    pub stop_timeout: Option<Duration>,
    pub subreaper: Option<bool>,
}

/// The log part of the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogSpec {
    pub enabled: Option<bool>,
    pub dir: Option<PathBuf>,
    pub process: Option<String>,
    pub run: Option<String>,
    pub error_prefix: Option<String>,
    pub fatal_prefix: Option<String>,
    pub rotation: Option<Rotation>,
    pub format: Option<Format>,
    pub level: Option<String>,
}

/// A checked config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    /// The file, absolute.
    pub path: PathBuf,
    pub host: HostSpec,
    pub log: LogSpec,
    pub tasks: Vec<TaskSpec>,
}

const ROOT_KEYS: &[&str] = &["host", "log", "task"];

/// The keys of a `[[task]]`: its name and plugin, every task setting, its `[task.environment]` and its
/// `[task.config]`.
fn task_keys() -> Vec<&'static str> {
    let settings = TASK_SETTINGS.iter().map(|s| s.key);
    ["name", "plugin"].into_iter().chain(settings).chain(["environment", "config"]).collect()
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    parse(&path, &text)
}

/// Checks `text` as the content of `path`.
pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let at = |(span, message): Positioned| {
        let (line, column) = line_column(text, span.map_or(0, |s| s.start));
        ConfigError::Invalid { path: path.to_owned(), line, column, message }
    };
    check_all_keys(text).map_err(at)?;
    let shape: FileShape = toml::from_str(text).map_err(|e| at((e.span(), e.message().trim().to_owned())))?;
    let base = path.parent().unwrap_or(Path::new("/")).to_owned();
    let relative = |p: &Path| if p.is_absolute() { p.to_owned() } else { base.join(p) };
    let host = host_spec(&shape.host, &relative).map_err(at)?;
    let log = log_spec(&shape.log, &relative).map_err(at)?;
    let mut tasks: Vec<TaskSpec> = Vec::new();
    for (index, task) in shape.task.iter().enumerate() {
        let spec = task_spec(task, index, &tasks, &relative).map_err(at)?;
        tasks.push(spec);
    }
    if tasks.is_empty() {
        return Err(at((Some(0..0), "no [[task]]: a host needs at least one task (name and plugin)".to_owned())));
    }
    Ok(ConfigFile { path: path.to_owned(), host, log, tasks })
}

/// The syntax, then every key of every section: unknown keys are refused with the nearest valid one.
fn check_all_keys(text: &str) -> Result<(), Positioned> {
    let tree = DeTable::parse(text).map_err(|e| (e.span(), e.message().trim().to_owned()))?;
    check_keys(tree.get_ref(), ROOT_KEYS, "the top level").map_err(|(span, message)| (Some(span), message))?;
    for (key, value) in tree.get_ref() {
        match (key.get_ref().as_ref(), value.get_ref()) {
            ("host", DeValue::Table(table)) => check_keys(table, &section_keys(Section::Host), "[host]"),
            ("log", DeValue::Table(table)) => check_keys(table, &section_keys(Section::Log), "[log]"),
            ("task", DeValue::Array(tasks)) => tasks.iter().try_for_each(|task| match task.get_ref() {
                DeValue::Table(table) => check_keys_except(table, &task_keys(), "[[task]]", "config"),
                _ => Err((task.span(), "each task is a table: write it as [[task]]".to_owned())),
            }),
            ("task", _) => Err((value.span(), "`task` is a list of tables: write each one as [[task]]".to_owned())),
            (section, _) => Err((value.span(), format!("`{section}` is a table: write it as [{section}]"))),
        }
        .map_err(|(span, message)| (Some(span), message))?;
    }
    Ok(())
}

/// `[host]`, checked.
fn host_spec(host: &HostSection, relative: &dyn Fn(&Path) -> PathBuf) -> Result<HostSpec, Positioned> {
    let name = match &host.name {
        Some(name) => {
            crate::names::validate("host name", name.get_ref()).map_err(|e| (Some(name.span()), e.to_string()))?;
            Some(name.get_ref().clone())
        }
        None => None,
    };
    let check_interval = match &host.check_interval {
        Some(v) => Some(check_interval(v.get_ref()).map_err(|m| (Some(v.span()), m))?),
        None => None,
    };
    let stop_timeout = match &host.stop_timeout {
        Some(v) => Some(to_duration(v.get_ref(), BareUnit::Seconds).map_err(|m| (Some(v.span()), m))?),
        None => None,
    };
    Ok(HostSpec {
        name,
        title_prefix: host.title_prefix.clone(),
        pid_root: host.pid_root.as_deref().map(relative),
        status_root: host.status_root.as_deref().map(relative),
        check_interval,
        stop_timeout,
        subreaper: host.subreaper,
    })
}

/// `[log]`, checked.
fn log_spec(log: &LogSection, relative: &dyn Fn(&Path) -> PathBuf) -> Result<LogSpec, Positioned> {
    let file_name = |v: &Option<Spanned<String>>| -> Result<Option<String>, Positioned> {
        match v {
            Some(name) => crate::names::validate("log file name", name.get_ref())
                .map(|()| Some(name.get_ref().clone()))
                .map_err(|e| (Some(name.span()), e.to_string())),
            None => Ok(None),
        }
    };
    Ok(LogSpec {
        enabled: log.enabled,
        dir: log.dir.as_deref().map(relative),
        process: file_name(&log.process)?,
        run: file_name(&log.run)?,
        error_prefix: log.error_prefix.clone(),
        fatal_prefix: log.fatal_prefix.clone(),
        rotation: log.rotation,
        format: log.format,
        level: log.level.clone(),
    })
}

type Positioned = (Option<std::ops::Range<usize>>, String);

/// Checks one `[[task]]` (the `index`th, after the `earlier` ones): its name, plugin, settings and config.
fn task_spec(
    task: &TaskSection,
    index: usize,
    earlier: &[TaskSpec],
    relative: &dyn Fn(&Path) -> PathBuf,
) -> Result<TaskSpec, Positioned> {
    let text = |key: &str| -> Result<Option<(&str, std::ops::Range<usize>)>, Positioned> {
        match task.get(key) {
            Some(value) => match value.get_ref() {
                toml::Value::String(text) => Ok(Some((text.as_str(), value.span()))),
                other => {
                    Err((Some(value.span()), format!("invalid type: {} {other}, expected a string", other.type_str())))
                }
            },
            None => Ok(None),
        }
    };
    let missing =
        |key: &str| (None, format!("task {} has no `{key}`: each [[task]] needs a name and a plugin", index + 1));
    let (name, name_span) = text("name")?.ok_or_else(|| missing("name"))?;
    crate::names::validate("task name", name).map_err(|e| (Some(name_span.clone()), e.to_string()))?;
    if earlier.iter().any(|t| t.name == name) {
        return Err((Some(name_span), format!("duplicate task name {name:?}: task names must be unique")));
    }
    let (plugin, plugin_span) = text("plugin")?.ok_or_else(|| missing("plugin"))?;
    let plugin = relative(Path::new(plugin));
    if !plugin.exists() {
        return Err((Some(plugin_span), format!("plugin file {} does not exist", plugin.display())));
    }
    let mut values = TaskValues { plugin: Some(plugin), ..TaskValues::default() };
    for setting in TASK_SETTINGS {
        if let Some(value) = task.get(setting.key) {
            let parsed = setting.parse_toml(value.get_ref()).map_err(|message| (Some(value.span()), message))?;
            values.set(setting.key, parsed);
        }
    }
    if let Some(dir) = values.working_directory.take() {
        values.working_directory = Some(relative(&dir));
    }
    if let Some(environment) = task.get("environment") {
        values.environment = Some(environment_table(environment)?);
    }
    values.config_json = Some(match task.get("config") {
        Some(config) => match config.get_ref() {
            toml::Value::Table(table) => {
                serde_json::to_string(table).map_err(|e| (Some(config.span()), e.to_string()))?
            }
            _ => return Err((Some(config.span()), "`config` is a table: write it as [task.config]".to_owned())),
        },
        None => "{}".to_owned(),
    });
    Ok(TaskSpec { name: name.to_owned(), values })
}

/// `[task.environment]`: names and values, each a string (a number or a boolean is written as TOML shows it).
fn environment_table(value: &Spanned<toml::Value>) -> Result<Vec<(String, String)>, Positioned> {
    let toml::Value::Table(table) = value.get_ref() else {
        return Err((Some(value.span()), "`environment` is a table: write it as [task.environment]".to_owned()));
    };
    let mut variables = Vec::new();
    for (name, entry) in table {
        let text = match entry {
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => entry.to_string(),
            other => {
                let message = format!("environment variable {name} is {} {other}: give a string", other.type_str());
                return Err((Some(value.span()), message));
            }
        };
        if name.is_empty() || name.contains('=') || name.contains('\0') || text.contains('\0') {
            return Err((Some(value.span()), format!("{name:?} cannot be an environment variable")));
        }
        variables.push((name.clone(), text));
    }
    Ok(variables)
}

impl TaskSpec {
    /// This task's settings: `overrides` (the command line's values) over the file's, over the defaults.
    pub fn resolve(&self, overrides: &TaskValues) -> Option<TaskSettings> {
        overrides.or(&self.values).settings(&self.name)
    }
}

impl ConfigFile {
    /// Every task's settings, with the command line's `overrides` applied.
    pub fn resolve_tasks(&self, overrides: &TaskValues) -> Vec<TaskSettings> {
        self.tasks.iter().filter_map(|spec| spec.resolve(overrides)).collect()
    }
}

fn to_duration(value: &DurationValue, unit: BareUnit) -> Result<Duration, String> {
    let text = match value {
        DurationValue::Integer(n) => n.to_string(),
        DurationValue::Float(f) => f.to_string(),
        DurationValue::Text(t) => t.clone(),
    };
    duration::parse(&text, unit).map_err(|e| e.to_string())
}

fn check_interval(value: &DurationValue) -> Result<Option<Duration>, String> {
    match value {
        DurationValue::Integer(n) if *n <= 0 => Ok(None),
        DurationValue::Float(f) if *f <= 0.0 => Ok(None),
        other => to_duration(other, BareUnit::Seconds).map(|d| (!d.is_zero()).then_some(d)),
    }
}

type KeyError = (std::ops::Range<usize>, String);

fn check_keys(table: &DeTable<'_>, allowed: &[&str], section: &str) -> Result<(), KeyError> {
    check_keys_except(table, allowed, section, "")
}

/// Every key of `table` must be in `allowed`; `free` names a sub-table whose own keys are not checked.
fn check_keys_except(table: &DeTable<'_>, allowed: &[&str], section: &str, free: &str) -> Result<(), KeyError> {
    for (key, _) in table {
        let name = key.get_ref().as_ref();
        if allowed.contains(&name) || name == free && !free.is_empty() {
            continue;
        }
        let hint = match nearest(name, allowed) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("valid keys: {}", allowed.join(", ")),
        };
        return Err((key.span(), format!("unknown key `{name}` in {section}: {hint}")));
    }
    Ok(())
}

/// The allowed key closest to `key`, if it is close enough to be a typo.
fn nearest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
        .min()
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// 1-based line and column of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<ConfigFile, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libjob.so"), b"\x7fELF").unwrap();
        parse(&dir.path().join("pmhost.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_a_full_file() {
        let file = check(
            r#"
[host]
name = "jobs"
check_interval = 0
stop_timeout = "30s"
[log]
rotation = "hourly"
format = "json"
[[task]]
name = "mailer"
plugin = "libjob.so"
workers = 2
execute_usleep = "100ms"
[task.config]
queue = "mail"
"#,
        )
        .unwrap();
        assert_eq!(file.host.name.as_deref(), Some("jobs"));
        assert_eq!(file.host.check_interval, Some(None));
        assert_eq!(file.log.rotation, Some(Rotation::Hourly));
        assert_eq!(file.tasks[0].values.execute_usleep, Some(Duration::from_millis(100)));
        assert_eq!(file.tasks[0].values.config_json.as_deref(), Some(r#"{"queue":"mail"}"#));
        assert!(file.tasks[0].values.plugin.as_ref().unwrap().is_absolute());
    }

    #[test]
    fn reports_positions_and_suggestions() {
        let e = check("[[task]]\nname = \"a\"\nplugin = \"libjob.so\"\nwrokers = 2\n").unwrap_err();
        assert!(e.contains(":4:1: unknown key `wrokers` in [[task]]: did you mean `workers`?"), "{e}");
        let e = check("[[task]]\nname = \"a\"\nplugin = \"libjob.so\"\nworkers = 0\n").unwrap_err();
        assert!(e.contains(":4:11: workers must be 1 to"), "{e}");
        let e = check("[[task]]\nname = \"a\"\nplugin = \"libjob.so\"\nworkers = \"two\"\n").unwrap_err();
        assert!(e.contains(":4:11:") && e.contains("invalid type"), "{e}");
        let e = check("[host\n").unwrap_err();
        assert!(e.contains(":1:"), "{e}");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("wrokers", "workers"), 2);
        assert_eq!(edit_distance("worker", "workers"), 1);
        assert_eq!(nearest("zzz", &task_keys()), None);
    }
}
