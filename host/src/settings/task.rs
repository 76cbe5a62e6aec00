//! Task settings, each defined once.
//!
//! [`task_settings!`] below is the only list of the task settings a user can give. From each entry come: the
//! field of [`TaskValues`] (the value as given, possibly absent), the `pmhost.toml` key of `[[task]]` (with
//! positions and suggestions, see `config`), the `pmhost start` flag (`--` and the key with dashes, its help
//! and default, see [`TaskFlags`]), the merge (flag over file over default, [`TaskValues::or`]), and the row of
//! the README's settings table and the line of `examples/pmhost.toml` that a test holds to the definition. The
//! resolved value and its default live in [`TaskValues::settings`]. Adding a setting is one entry here plus its
//! use; `plugin` and `config` are not in the list because their shape differs (a file given once for one-task
//! hosts, a free-form table).

use std::path::PathBuf;
use std::time::Duration;

use super::resolved::{Backoff, Limits, MAX_WORKERS, ProcessSettings, Rlimits, TaskSettings};
use crate::duration::{self, BareUnit};

/// The default number of workers (the original's `maxWorkerNum`).
pub const DEFAULT_WORKERS: u32 = 4;
/// The default longest `init`.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What kind of value a setting takes, and so how it is parsed from a flag and from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number from `min` to `max`; `range` says so in a sentence ("1 to 1024").
    Count { min: u64, max: u64, range: &'static str },
    /// A duration: a number in `unit`, or a text with a unit ("200ms").
    Duration(BareUnit),
    /// A size in bytes: a number, or a text with a unit ("512MiB").
    Size,
    /// A fraction from 0 to 1.
    Fraction,
    /// On or off: `true`/`false` in the file; `true`, `false`, `yes`, `no`, `on`, `off` as a flag's value.
    Switch,
    /// A signed whole number from `min` to `max` (`nice`).
    Signed { min: i64, max: i64, range: &'static str },
    /// File permission bits in octal: `"027"` (a text) or `0o027` (a TOML integer); at most `0o777`.
    Octal,
    /// A non-empty text (a user or group name or id, a directory).
    Text,
}

/// A parsed setting value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Count(u64),
    Duration(Duration),
    Size(u64),
    Fraction(f64),
    Switch(bool),
    Signed(i64),
    Text(String),
}

/// One task setting: its key (`[[task]]` key; the flag is `--` and the key with dashes), kind, default as shown
/// to people, the name of its value in `--help`, and what it means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Setting {
    pub key: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
}

impl Setting {
    /// `--key-with-dashes`.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }

    /// The value of a flag.
    pub fn parse_text(&self, text: &str) -> Result<Value, String> {
        match self.kind {
            Kind::Count { .. } => {
                let n: i128 = text.trim().parse().map_err(|_| format!("{text:?} is not a whole number"))?;
                self.count(n)
            }
            Kind::Duration(unit) => duration::parse(text, unit).map(Value::Duration).map_err(|e| e.to_string()),
            Kind::Size => crate::size::parse(text).map(Value::Size).map_err(|e| e.to_string()),
            Kind::Fraction => {
                let f: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number"))?;
                self.fraction(f)
            }
            Kind::Switch => match text.trim() {
                "true" | "yes" | "on" => Ok(Value::Switch(true)),
                "false" | "no" | "off" => Ok(Value::Switch(false)),
                _ => Err(format!("{text:?} is not true or false")),
            },
            Kind::Signed { .. } => {
                let n: i128 = text.trim().parse().map_err(|_| format!("{text:?} is not a whole number"))?;
                self.signed(n)
            }
            Kind::Octal => self.octal(text),
            Kind::Text => self.text(text),
        }
    }

    /// The value of the key in `pmhost.toml`.
    pub fn parse_toml(&self, value: &toml::Value) -> Result<Value, String> {
        let wrong = |expected: &str| format!("invalid type: {} {value}, expected {expected}", value.type_str());
        match (self.kind, value) {
            (Kind::Count { .. }, toml::Value::Integer(n)) => self.count(i128::from(*n)),
            (Kind::Count { .. }, _) => Err(wrong("an integer")),
            (Kind::Duration(unit), toml::Value::Integer(n)) => self.duration(&n.to_string(), unit),
            (Kind::Duration(unit), toml::Value::Float(f)) => self.duration(&f.to_string(), unit),
            (Kind::Duration(unit), toml::Value::String(text)) => self.duration(text, unit),
            (Kind::Duration(_), _) => Err(wrong("a number or a duration such as \"200ms\"")),
            (Kind::Size, toml::Value::Integer(n)) if *n < 0 => Err(format!("a size cannot be negative ({n})")),
            (Kind::Size, toml::Value::Integer(n)) => Ok(Value::Size(*n as u64)),
            (Kind::Size, toml::Value::String(text)) => {
                crate::size::parse(text).map(Value::Size).map_err(|e| e.to_string())
            }
            (Kind::Size, _) => Err(wrong("a number of bytes or a size such as \"512MiB\"")),
            (Kind::Fraction, toml::Value::Float(f)) => self.fraction(*f),
            (Kind::Fraction, toml::Value::Integer(n)) => self.fraction(*n as f64),
            (Kind::Fraction, _) => Err(wrong("a number from 0 to 1")),
            (Kind::Switch, toml::Value::Boolean(on)) => Ok(Value::Switch(*on)),
            (Kind::Switch, _) => Err(wrong("true or false")),
            (Kind::Signed { .. }, toml::Value::Integer(n)) => self.signed(i128::from(*n)),
            (Kind::Signed { .. }, _) => Err(wrong("an integer")),
            (Kind::Octal, toml::Value::String(text)) => self.octal(text),
            (Kind::Octal, toml::Value::Integer(n)) if (0..=0o777).contains(n) => Ok(Value::Count(*n as u64)),
            (Kind::Octal, toml::Value::Integer(n)) => Err(format!("{} must be 0o000 to 0o777, not {n:#o}", self.key)),
            (Kind::Octal, _) => Err(wrong("an octal text such as \"027\" or an integer such as 0o027")),
            (Kind::Text, toml::Value::String(text)) => self.text(text),
            (Kind::Text, _) => Err(wrong("a string")),
        }
    }

    fn signed(&self, n: i128) -> Result<Value, String> {
        match self.kind {
            Kind::Signed { min, max, range } if n < i128::from(min) || n > i128::from(max) => {
                Err(format!("{} must be {range}, not {n}", self.key))
            }
            _ => Ok(Value::Signed(n as i64)),
        }
    }

    fn octal(&self, text: &str) -> Result<Value, String> {
        let digits = text.trim().trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(bits) if bits <= 0o777 && !digits.is_empty() => Ok(Value::Count(u64::from(bits))),
            _ => Err(format!("{} is octal permission bits from 000 to 777 (\"027\"), not {text:?}", self.key)),
        }
    }

    fn text(&self, text: &str) -> Result<Value, String> {
        if text.trim().is_empty() {
            Err(format!("{} cannot be empty", self.key))
        } else {
            Ok(Value::Text(text.to_owned()))
        }
    }

    fn count(&self, n: i128) -> Result<Value, String> {
        match self.kind {
            Kind::Count { min, max, range } if n < i128::from(min) || n > i128::from(max) => {
                Err(format!("{} must be {range}, not {n}", self.key))
            }
            _ => Ok(Value::Count(n as u64)),
        }
    }

    fn duration(&self, text: &str, unit: BareUnit) -> Result<Value, String> {
        duration::parse(text, unit).map(Value::Duration).map_err(|e| e.to_string())
    }

    fn fraction(&self, f: f64) -> Result<Value, String> {
        if (0.0..=1.0).contains(&f) {
            Ok(Value::Fraction(f))
        } else {
            Err(format!("{} is a fraction from 0 to 1, not {f}", self.key))
        }
    }
}

/// How a parsed value becomes a field.
trait FromValue {
    fn from_value(value: Value) -> Self;
}

impl FromValue for u32 {
    fn from_value(value: Value) -> Self {
        u64::from_value(value).min(u64::from(u32::MAX)) as u32
    }
}

impl FromValue for i32 {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Signed(n) => n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
            other => u32::from_value(other).min(i32::MAX as u32) as i32,
        }
    }
}

impl FromValue for String {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Text(text) => text,
            Value::Count(n) | Value::Size(n) => n.to_string(),
            Value::Signed(n) => n.to_string(),
            Value::Fraction(f) => f.to_string(),
            Value::Duration(d) => format!("{d:?}"),
            Value::Switch(on) => on.to_string(),
        }
    }
}

impl FromValue for PathBuf {
    fn from_value(value: Value) -> Self {
        PathBuf::from(String::from_value(value))
    }
}

impl FromValue for u64 {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Count(n) | Value::Size(n) => n,
            Value::Duration(d) => d.as_secs(),
            Value::Fraction(f) => f as u64,
            Value::Switch(on) => u64::from(on),
            Value::Signed(n) => n.max(0) as u64,
            Value::Text(text) => text.trim().parse().unwrap_or(0),
        }
    }
}

impl FromValue for f64 {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Fraction(f) => f,
            Value::Count(n) | Value::Size(n) => n as f64,
            Value::Duration(d) => d.as_secs_f64(),
            Value::Switch(on) => f64::from(u8::from(on)),
            Value::Signed(n) => n as f64,
            Value::Text(text) => text.trim().parse().unwrap_or(0.0),
        }
    }
}

impl FromValue for Duration {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Duration(d) => d,
            Value::Count(n) | Value::Size(n) => Duration::from_secs(n),
            Value::Fraction(f) => Duration::from_secs_f64(f),
            Value::Switch(_) | Value::Signed(_) | Value::Text(_) => Duration::ZERO,
        }
    }
}

impl FromValue for bool {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Switch(on) => on,
            Value::Count(n) | Value::Size(n) => n != 0,
            Value::Fraction(f) => f != 0.0,
            Value::Duration(d) => !d.is_zero(),
            Value::Signed(n) => n != 0,
            Value::Text(text) => !text.is_empty(),
        }
    }
}

macro_rules! task_settings {
    ($( $field:ident: $ty:ty = $kind:expr, default $default:literal, value $value_name:literal, $help:literal; )+) => {
        /// Task settings as given, each possibly absent: by the command line (which overrides the file for every
        /// task) or by a `[[task]]` table of the config file.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct TaskValues {
            /// The plugin file (`--plugin`: one-task hosts only).
            pub plugin: Option<PathBuf>,
            /// `[task.config]` or `--task-config`, as JSON text.
            pub config_json: Option<String>,
            /// `[task.environment]`: variables added to the workers' environment, in the file's order.
            pub environment: Option<Vec<(String, String)>>,
            $( #[doc = $help] pub $field: Option<$ty>, )+
        }

        /// Every task setting, in the order `--help`, the README and the example file show them.
        pub const TASK_SETTINGS: &[Setting] = &[
            $( Setting { key: stringify!($field), kind: $kind, default: $default, value_name: $value_name, help: $help }, )+
        ];

        impl TaskValues {
            /// Each value of `self`, else the one of `other`.
            pub fn or(&self, other: &TaskValues) -> TaskValues {
                TaskValues {
                    plugin: self.plugin.clone().or_else(|| other.plugin.clone()),
                    config_json: self.config_json.clone().or_else(|| other.config_json.clone()),
                    environment: self.environment.clone().or_else(|| other.environment.clone()),
                    $( $field: self.$field.clone().or_else(|| other.$field.clone()), )+
                }
            }

            /// Sets the setting `key` (one of [`TASK_SETTINGS`]).
            pub fn set(&mut self, key: &str, value: Value) {
                match key {
                    $( stringify!($field) => self.$field = Some(<$ty as FromValue>::from_value(value)), )+
                    other => unreachable!("{other} is not a task setting"),
                }
            }

            /// Whether any setting of the list is given (not counting `plugin`, `config` and `environment`).
            pub fn any_setting(&self) -> bool {
                false $( || self.$field.is_some() )+
            }
        }
    };
}

task_settings! {
    workers: u32 = Kind::Count { min: 1, max: MAX_WORKERS as u64, range: "1 to 1024" },
        default "4", value "N", "worker processes per task, 1 to 1024 (maxWorkerNum in process_manage)";
    execute_times: u64 = Kind::Count { min: 0, max: u64::MAX, range: "0 (unlimited) or more" },
        default "1", value "N", "`work` calls before a worker retires and a fresh one takes its slot; 0 = unlimited";
    execute_usleep: Duration = Kind::Duration(BareUnit::Micros),
        default "200000 (µs)", value "USEC", "pause after each `work` call: microseconds or with a unit (\"100ms\"); 0 = no pause and no sleep syscall";
    limit_seconds: Duration = Kind::Duration(BareUnit::Seconds),
        default "0", value "SECS", "lifetime of a worker before it retires: seconds or with a unit; 0 = unlimited";
    init_timeout: Duration = Kind::Duration(BareUnit::Seconds),
        default "60s", value "SECS", "longest `init`; a slower worker is killed and counts as failed";
    backoff_initial: Duration = Kind::Duration(BareUnit::Seconds),
        default "100ms", value "SECS", "delay before the respawn after a second crash in a row (the first crash of a healthy slot is replaced at once); doubles per further consecutive crash";
    backoff_max: Duration = Kind::Duration(BareUnit::Seconds),
        default "30s", value "SECS", "longest delay between crash respawns";
    backoff_reset: Duration = Kind::Duration(BareUnit::Seconds),
        default "10s", value "SECS", "a worker that ran this long before it crashed starts the backoff afresh";
    work_timeout: Duration = Kind::Duration(BareUnit::Seconds),
        default "0 (off)", value "SECS", "a `work` call running longer gets its worker killed (TERM, KILL after the stop timeout) and replaced; 0 = no limit";
    max_rss: u64 = Kind::Size,
        default "off", value "SIZE", "a worker whose resident memory exceeds this (\"512MiB\") is retired after its current call and replaced";
    limit_jitter: f64 = Kind::Fraction,
        default "0", value "FRACTION", "stretch each worker's `execute_times` and `limit_seconds` by a random fraction up to this (0 to 1), so workers do not all retire at once";
    rlimit_nofile: u64 = Kind::Count { min: 1, max: u64::MAX, range: "1 or more" },
        default "inherited", value "N", "RLIMIT_NOFILE (open files) set in each worker before the plugin loads";
    rlimit_as: u64 = Kind::Size,
        default "inherited", value "SIZE", "RLIMIT_AS (address space, e.g. \"4GiB\") set in each worker before the plugin loads";
    rlimit_core: u64 = Kind::Size,
        default "inherited", value "SIZE", "RLIMIT_CORE (core file size; 0 = no core dumps) set in each worker before the plugin loads";
    capture_output: bool = Kind::Switch,
        default "true", value "BOOL", "log what workers (and their child processes) write to stdout and stderr, line by line, in the run log; false: their output goes where the master's goes";
    user: String = Kind::Text,
        default "the master's", value "USER", "run the workers as this user (name or id) with its groups; needs a master running as root";
    group: String = Kind::Text,
        default "the user's", value "GROUP", "run the workers with this primary group (name or id); needs a master running as root";
    clear_env: bool = Kind::Switch,
        default "false", value "BOOL", "start the workers from an empty environment: only PATH and [task.environment]";
    working_directory: PathBuf = Kind::Text,
        default "the master's", value "DIR", "the workers' working directory (relative to the config file's directory)";
    umask: u32 = Kind::Octal,
        default "inherited", value "OCTAL", "the workers' file creation mask, in octal (\"027\")";
    nice: i32 = Kind::Signed { min: -20, max: 19, range: "-20 to 19" },
        default "inherited", value "N", "the workers' scheduling niceness, -20 (first) to 19 (last); lowering it needs root";
    watch: bool = Kind::Switch,
        default "false", value "BOOL", "for development: when the plugin file is replaced by a new build (cargo's hard link or rename, or an overwrite in place), wait until it has not changed for 500 ms and no writer has it open, then roll it out as `pmhost restart` would (rolled back if it fails; a build identical to the running one is ignored); `--watch` alone means true";
}

/// The command line's task values: they override the file's for every task.
pub type TaskOverrides = TaskValues;

impl TaskValues {
    /// The settings of a task named `name`, with defaults for what is absent; `None` without a plugin.
    pub fn settings(&self, name: &str) -> Option<TaskSettings> {
        let limits = Limits::default();
        let backoff = Backoff::default();
        let zero_is_none = |d: Duration| (!d.is_zero()).then_some(d);
        Some(TaskSettings {
            name: name.to_owned(),
            plugin: self.plugin.clone()?,
            workers: self.workers.unwrap_or(DEFAULT_WORKERS),
            limits: Limits {
                execute_times: self.execute_times.unwrap_or(limits.execute_times),
                execute_usleep: self.execute_usleep.unwrap_or(limits.execute_usleep),
                limit_seconds: self.limit_seconds.and_then(zero_is_none),
                limit_jitter: self.limit_jitter.unwrap_or(0.0),
                rlimits: Rlimits { nofile: self.rlimit_nofile, address_space: self.rlimit_as, core: self.rlimit_core },
            },
            init_timeout: self.init_timeout.unwrap_or(DEFAULT_INIT_TIMEOUT),
            backoff: Backoff {
                initial: self.backoff_initial.unwrap_or(backoff.initial),
                max: self.backoff_max.unwrap_or(backoff.max),
                reset: self.backoff_reset.unwrap_or(backoff.reset),
            },
            config_json: self.config_json.clone().unwrap_or_else(|| "{}".to_owned()),
            work_timeout: self.work_timeout.and_then(zero_is_none),
            max_rss: self.max_rss.filter(|bytes| *bytes > 0),
            capture_output: self.capture_output.unwrap_or(true),
            watch: self.watch.unwrap_or(false),
            process: ProcessSettings {
                user: self.user.clone(),
                group: self.group.clone(),
                environment: self.environment.clone().unwrap_or_default(),
                clear_env: self.clear_env.unwrap_or(false),
                working_directory: self.working_directory.clone(),
                umask: self.umask,
                nice: self.nice,
            },
        })
    }
}

/// The task flags of `pmhost start` (and `restart`), one per [`TASK_SETTINGS`] entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFlags(pub TaskValues);

impl clap::FromArgMatches for TaskFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut values = TaskValues::default();
        for setting in TASK_SETTINGS {
            if let Some(value) = matches.get_one::<Value>(setting.key) {
                values.set(setting.key, value.clone());
            }
        }
        Ok(TaskFlags(values))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for TaskFlags {
    fn augment_args(command: clap::Command) -> clap::Command {
        TASK_SETTINGS.iter().fold(command, |command, setting| {
            let setting: &'static Setting = setting;
            let arg = clap::Arg::new(setting.key)
                .long(setting.key.replace('_', "-"))
                .value_name(setting.value_name)
                .help(format!("{} [default: {}]", capitalized(setting.help), setting.default))
                .value_parser(clap::builder::ValueParser::new(move |text: &str| setting.parse_text(text)));
            // An on/off flag given alone means on (`--watch`); `--watch false` still turns it off.
            let arg = match setting.kind {
                Kind::Switch => arg.num_args(0..=1).default_missing_value("true"),
                _ => arg,
            };
            command.arg(arg)
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(key: &str) -> &'static Setting {
        TASK_SETTINGS.iter().find(|s| s.key == key).unwrap()
    }

    #[test]
    fn flags_and_file_values_parse_alike() {
        let cases: &[(&str, &str, toml::Value, Value)] = &[
            ("workers", "8", toml::Value::Integer(8), Value::Count(8)),
            (
                "execute_usleep",
                "100ms",
                toml::Value::String("100ms".into()),
                Value::Duration(Duration::from_millis(100)),
            ),
            ("execute_usleep", "1500", toml::Value::Integer(1500), Value::Duration(Duration::from_micros(1500))),
            ("init_timeout", "2", toml::Value::Float(2.0), Value::Duration(Duration::from_secs(2))),
            ("max_rss", "512MiB", toml::Value::String("512MiB".into()), Value::Size(512 << 20)),
            ("limit_jitter", "0.5", toml::Value::Float(0.5), Value::Fraction(0.5)),
            ("rlimit_nofile", "64", toml::Value::Integer(64), Value::Count(64)),
        ];
        for (key, text, toml_value, expected) in cases {
            assert_eq!(setting(key).parse_text(text).as_ref(), Ok(expected), "{key} = {text}");
            assert_eq!(setting(key).parse_toml(toml_value).as_ref(), Ok(expected), "{key} = {toml_value}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_range() {
        let cases: &[(&str, toml::Value, &str)] = &[
            ("workers", toml::Value::Integer(0), "workers must be 1 to 1024, not 0"),
            ("workers", toml::Value::Integer(1025), "workers must be 1 to 1024, not 1025"),
            ("execute_times", toml::Value::Integer(-1), "execute_times must be 0 (unlimited) or more, not -1"),
            ("rlimit_nofile", toml::Value::Integer(0), "rlimit_nofile must be 1 or more, not 0"),
            ("limit_jitter", toml::Value::Float(2.0), "limit_jitter is a fraction from 0 to 1, not 2"),
            ("max_rss", toml::Value::Integer(-1), "a size cannot be negative (-1)"),
            ("workers", toml::Value::String("two".into()), "invalid type: string \"two\", expected an integer"),
        ];
        for (key, value, message) in cases {
            assert_eq!(setting(key).parse_toml(value).unwrap_err(), *message, "{key} = {value}");
        }
        assert_eq!(setting("workers").parse_text("0").unwrap_err(), "workers must be 1 to 1024, not 0");
        assert!(setting("workers").parse_text("x").is_err());
    }

    #[test]
    fn the_merge_takes_each_value_from_the_first_that_has_it() {
        let mut flags = TaskValues::default();
        flags.set("workers", Value::Count(2));
        let mut file = TaskValues::default();
        file.set("workers", Value::Count(8));
        file.set("execute_times", Value::Count(0));
        let merged = flags.or(&file);
        assert_eq!((merged.workers, merged.execute_times), (Some(2), Some(0)));
        assert!(merged.any_setting() && !TaskValues::default().any_setting());
    }

    #[test]
    fn an_on_off_flag_alone_means_on() {
        #[derive(clap::Parser)]
        struct Start {
            #[command(flatten)]
            task: TaskFlags,
        }
        let parse = |args: &[&str]| {
            <Start as clap::Parser>::try_parse_from(std::iter::once("start").chain(args.iter().copied()))
                .map(|start| start.task.0)
        };
        assert_eq!(parse(&["--watch"]).unwrap().watch, Some(true));
        assert_eq!(parse(&["--watch", "--workers", "2"]).unwrap().watch, Some(true));
        assert_eq!(parse(&["--watch", "false"]).unwrap().watch, Some(false));
        assert_eq!(parse(&["--capture-output", "off"]).unwrap().capture_output, Some(false));
        assert_eq!(parse(&[]).unwrap().watch, None);
        assert!(parse(&["--watch", "maybe"]).is_err());
    }

    /// The rows of the README's table of `start` settings for the task settings, as the definition says.
    fn readme_rows() -> String {
        TASK_SETTINGS.iter().map(|s| format!("| `{}` | {} | {} |\n", s.flag(), s.default, s.help)).collect()
    }

    #[test]
    fn the_readme_and_the_example_file_follow_the_definition() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        for row in readme_rows().lines() {
            assert!(readme.contains(row), "README.md lacks the settings row\n{row}\n(from settings/task.rs)");
        }
        let example = std::fs::read_to_string(root.join("examples/pmhost.toml")).unwrap();
        let task_block = &example[example.find("[[task]]").unwrap()..];
        for setting in TASK_SETTINGS {
            let listed = task_block.lines().any(|line| {
                let line = line.trim_start_matches('#').trim_start();
                line.starts_with(&format!("{} =", setting.key)) || line.starts_with(&format!("{} = ", setting.key))
            });
            assert!(listed, "examples/pmhost.toml does not list `{}` in its [[task]]", setting.key);
        }
    }

    #[test]
    fn every_setting_has_a_distinct_key_help_and_default() {
        let mut keys: Vec<&str> = TASK_SETTINGS.iter().map(|s| s.key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), TASK_SETTINGS.len());
        for s in TASK_SETTINGS {
            assert!(!s.help.is_empty() && !s.default.is_empty() && !s.value_name.is_empty(), "{s:?}");
        }
    }
}
