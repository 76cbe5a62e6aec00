//! Logging: `tracing` events to stderr and to log files, in the original's line shape
//! `[Info][process_m:Worker:mailer 1234 2026-01-30 15:36:36]: message key=value`, or as JSON lines.
//!
//! Files (in `log.dir`, when logging to files is enabled):
//! - the process log (`process`): master and worker lifecycle: starts, exits with code or signal, respawns;
//! - the run log (`run`): what plugins log through the bridge (target `pmhost::run`);
//! - `error_` + each of those: its error records again, so a person can read errors alone;
//! - `fatal_process`: records that end the master (a failed start, a broken event loop).
//!
//! Files are named `{name}.{period}.log` (`process.2026-01-30.log`; hourly: `process.2026-01-30-15.log`; never:
//! `process.log`), periods in local time. Every process writes each record with one `write` to a file opened
//! with `O_APPEND`, so the master and its workers share files without interleaving lines. There is no writer
//! thread: the master forks, and a thread would not exist in the children, losing their lines.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::sysinfo;

/// Target of records that come from plugins (the run log).
pub const RUN_TARGET: &str = "pmhost::run";
/// Target of records that end the master (also written to the fatal file).
pub const FATAL_TARGET: &str = "pmhost::fatal";

/// The title shown in every line. Process-wide because it is a property of the process (a worker sets its own
/// after fork, while single-threaded); a formatter has no other way to learn it.
static TITLE: Mutex<String> = Mutex::new(String::new());

/// Sets the title this process's lines carry.
pub fn set_title(title: &str) {
    if let Ok(mut current) = TITLE.lock() {
        title.clone_into(&mut current);
    }
}

/// The process a record is written for when it is not this one: the master logs a worker's captured output
/// under the worker's title and pid.
static ON_BEHALF: Mutex<Option<(String, u32)>> = Mutex::new(None);

/// Runs `log` (which records events) with the lines showing `title` and `pid` as their process.
pub fn as_process<R>(title: &str, pid: u32, log: impl FnOnce() -> R) -> R {
    if let Ok(mut current) = ON_BEHALF.lock() {
        *current = Some((title.to_owned(), pid));
    }
    let result = log();
    if let Ok(mut current) = ON_BEHALF.lock() {
        *current = None;
    }
    result
}

/// The title and pid a record shows.
fn current_process() -> (String, u32) {
    if let Some(origin) = ON_BEHALF.lock().ok().and_then(|o| o.clone()) {
        return origin;
    }
    let title = TITLE.lock().map(|t| t.clone()).unwrap_or_default();
    (if title.is_empty() { "pmhost".to_owned() } else { title }, std::process::id())
}

/// Where this process's stderr log lines go: fd 2, unless a worker's fd 2 is its captured output (then a copy
/// of the master's stderr, so the worker's own records are not captured and logged twice).
static STDERR_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(2);

/// Sends this process's stderr log lines to `fd` from now on.
pub fn set_stderr_fd(fd: std::os::fd::RawFd) {
    STDERR_FD.store(fd, std::sync::atomic::Ordering::Relaxed);
}

/// The stderr log writer: one `write` per record to [`STDERR_FD`].
struct StderrLog;

impl Write for StderrLog {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let fd = STDERR_FD.load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the descriptor is fd 2 or a copy of it this process keeps open for its whole life.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::unistd::write(fd, bytes).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// When log files start afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Rotation {
    /// A file per day.
    #[default]
    Daily,
    /// A file per hour.
    Hourly,
    /// One file.
    Never,
}

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `[Info][title pid time]: message key=value`.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Log settings (the original's `LogConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSettings {
    /// Write log files at all.
    pub enabled: bool,
    /// Directory of the files.
    pub dir: PathBuf,
    /// Name of the process log.
    pub process: String,
    /// Name of the run log.
    pub run: String,
    /// Prefix of the error files.
    pub error_prefix: String,
    /// Prefix of the fatal file.
    pub fatal_prefix: String,
    /// Rotation.
    pub rotation: Rotation,
    /// Line format (files and stderr).
    pub format: Format,
    /// Level filter, in `RUST_LOG` syntax (`info`, `warn,pmhost::run=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// Also write to stderr (foreground runs).
    pub stderr: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            enabled: true,
            dir: crate::rundir::default_roots().log,
            process: "process".to_owned(),
            run: "run".to_owned(),
            error_prefix: "error_".to_owned(),
            fatal_prefix: "fatal_".to_owned(),
            rotation: Rotation::Daily,
            format: Format::Text,
            level: "info".to_owned(),
            stderr: true,
        }
    }
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")))
}

/// Logging for short CLI commands: warnings and errors to stderr.
pub fn init_cli() {
    let _ = tracing_subscriber::registry()
        .with(filter("warn"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(io::stderr)
                .with_ansi(false)
                .event_format(LineFormat(Format::Text)),
        )
        .try_init();
}

/// Installs the master's subscriber (workers inherit it across fork). The log directory must already exist.
pub fn init_host(settings: &LogSettings) {
    let format = settings.format;
    // Filters pick events; spans pass every file layer so that each can print the worker span's fields.
    let is_run = |meta: &Metadata<'_>| meta.is_span() || meta.target() == RUN_TARGET;
    let is_error = |meta: &Metadata<'_>| meta.is_span() || *meta.level() == Level::ERROR;
    let file = |name: &str| RollingFile::new(&settings.dir, name, settings.rotation);
    let files = settings.enabled.then(|| {
        let layer = |name: &str| {
            tracing_subscriber::fmt::layer().with_writer(file(name)).with_ansi(false).event_format(LineFormat(format))
        };
        let errors = |name: &str| format!("{}{}", settings.error_prefix, name);
        let fatal = format!("{}{}", settings.fatal_prefix, settings.process);
        layer(&settings.process)
            .with_filter(filter_fn(move |meta| meta.is_span() || meta.target() != RUN_TARGET))
            .and_then(layer(&settings.run).with_filter(filter_fn(is_run)))
            .and_then(
                layer(&errors(&settings.process)).with_filter(filter_fn(move |meta| {
                    meta.is_span() || (is_error(meta) && meta.target() != RUN_TARGET)
                })),
            )
            .and_then(layer(&errors(&settings.run)).with_filter(filter_fn(move |meta| is_error(meta) && is_run(meta))))
            .and_then(layer(&fatal).with_filter(filter_fn(|meta| meta.is_span() || meta.target() == FATAL_TARGET)))
    });
    let stderr = settings.stderr.then(|| {
        tracing_subscriber::fmt::layer().with_writer(|| StderrLog).with_ansi(false).event_format(LineFormat(format))
    });
    let _ = tracing_subscriber::registry().with(filter(&settings.level)).with(files).with(stderr).try_init();
}

/// The most verbose level a plugin should forward, given the filter (0 off .. 5 trace).
pub fn plugin_level() -> u8 {
    pmhost_plugin_api::ffi::level::filter_code(tracing::level_filters::LevelFilter::current())
}

/// The descriptors of the log files this process has open: a forked worker keeps them (it writes its own
/// records to the same files) while it closes everything else of the master's.
static OPEN_FILES: Mutex<Vec<std::os::fd::RawFd>> = Mutex::new(Vec::new());

/// The log files open now (see `OPEN_FILES`).
pub fn open_fds() -> Vec<std::os::fd::RawFd> {
    OPEN_FILES.lock().map(|fds| fds.clone()).unwrap_or_default()
}

/// A log file that starts afresh each period. Each record is one `write` on an `O_APPEND` descriptor.
struct RollingFile {
    dir: PathBuf,
    name: String,
    rotation: Rotation,
    current: Mutex<Option<(String, File)>>,
}

impl RollingFile {
    fn new(dir: &Path, name: &str, rotation: Rotation) -> RollingFile {
        RollingFile { dir: dir.to_owned(), name: name.to_owned(), rotation, current: Mutex::new(None) }
    }

    fn path_for(&self, period: &str) -> PathBuf {
        if period.is_empty() {
            self.dir.join(format!("{}.log", self.name))
        } else {
            self.dir.join(format!("{}.{period}.log", self.name))
        }
    }

    fn period(&self) -> String {
        let now = sysinfo::local_time_text(SystemTime::now()); // YYYY-MM-DD HH:MM:SS
        match self.rotation {
            Rotation::Daily => now[..10].to_owned(),
            Rotation::Hourly => format!("{}-{}", &now[..10], &now[11..13]),
            Rotation::Never => String::new(),
        }
    }

    fn write_record(&self, record: &[u8]) -> io::Result<()> {
        let period = self.period();
        let mut current = self.current.lock().map_err(|_| io::Error::other("log file lock poisoned"))?;
        if current.as_ref().is_none_or(|(open, _)| *open != period) {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(self.path_for(&period))?;
            if let Ok(mut open) = OPEN_FILES.lock() {
                if let Some((_, old)) = current.as_ref() {
                    open.retain(|fd| *fd != old.as_raw_fd());
                }
                open.push(file.as_raw_fd());
            }
            *current = Some((period, file));
        }
        let (_, file) = current.as_mut().expect("opened above");
        file.write_all(record)
    }
}

/// One formatted record, written on drop in a single `write`.
struct RecordWriter<'a> {
    file: &'a RollingFile,
    buffer: Vec<u8>,
}

impl Write for RecordWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for RecordWriter<'_> {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            // A full or vanished log directory must not take the host down: the record is dropped.
            let _ = self.file.write_record(&self.buffer);
        }
    }
}

impl<'a> MakeWriter<'a> for RollingFile {
    type Writer = RecordWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        RecordWriter { file: self, buffer: Vec::with_capacity(256) }
    }
}

/// The line formats.
struct LineFormat(Format);

fn level_word(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "Error",
        Level::WARN => "Warn",
        Level::INFO => "Info",
        Level::DEBUG => "Debug",
        Level::TRACE => "Trace",
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let (title, pid) = current_process();
        let time = sysinfo::local_time_text(SystemTime::now());
        let level = event.metadata().level();
        match self.0 {
            Format::Text => {
                // The record is built first and escaped as a whole: a message (a plugin's, say) that contains a
                // newline must not start a line of its own that looks like another record.
                let mut record = String::with_capacity(256);
                let mut line = Writer::new(&mut record);
                write!(line, "[{}][{} {} {}]: ", level_word(level), title, pid, time)?;
                ctx.field_format().format_fields(line.by_ref(), event)?;
                if let Some(scope) = ctx.event_scope() {
                    for span in scope.from_root() {
                        let extensions = span.extensions();
                        if let Some(fields) = extensions.get::<FormattedFields<N>>()
                            && !fields.is_empty()
                        {
                            write!(line, " {fields}")?;
                        }
                    }
                }
                writer.write_str(&escape_controls(&record))?;
                writeln!(writer)
            }
            Format::Json => {
                let mut object = serde_json::Map::new();
                object.insert("time".into(), time.into());
                object.insert("level".into(), level.as_str().into());
                object.insert("title".into(), title.into());
                object.insert("pid".into(), pid.into());
                object.insert("target".into(), event.metadata().target().into());
                let mut fields = JsonFields(serde_json::Map::new());
                event.record(&mut fields);
                if let Some(scope) = ctx.event_scope() {
                    let mut spans = Vec::new();
                    for span in scope.from_root() {
                        let extensions = span.extensions();
                        let text = extensions.get::<FormattedFields<N>>().map(|f| f.to_string()).unwrap_or_default();
                        spans.push(serde_json::Value::String(format!("{}{{{text}}}", span.name())));
                    }
                    if !spans.is_empty() {
                        object.insert("spans".into(), spans.into());
                    }
                }
                for (key, value) in fields.0 {
                    object.entry(key).or_insert(value);
                }
                let mut line = serde_json::Value::Object(object).to_string();
                line.push('\n');
                writer.write_str(&line)
            }
        }
    }
}

/// `text` with every control character written as an escape (`\n`, `\r`, `\t`, `\u{1b}`...), so one record is
/// always one line and cannot carry terminal escape sequences.
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// Collects an event's fields as JSON values.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer, for reading what the formatter wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buffer lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn a_newline_in_a_message_cannot_forge_a_text_line() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(buffer.clone())
                .with_ansi(false)
                .event_format(LineFormat(Format::Text)),
        );
        let forged = "done\n[Info][process_m:Master:job 1 2026-01-30 15:36:36]: master stopped\r\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: RUN_TARGET, plugin = "evil\nplugin", "{forged}");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.ends_with('\n'), "{text:?}");
        assert!(text.contains(r"done\n[Info][process_m:Master:job"), "{text}");
        assert!(text.contains(r"master stopped\r") && text.contains(r"evil\nplugin"), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    }

    #[test]
    fn plain_text_is_not_copied() {
        assert!(matches!(escape_controls("no controls here"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\tb"), r"a\tb");
    }
}
