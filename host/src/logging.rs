//! Log output: `tracing` events as lines in the original's shape,
//! `[Info][process_m:Worker:mailer 1234 2026-01-30 15:36:36]: message key=value`.
//!
//! The subscriber writes synchronously (no writer thread): the master forks, and a writer thread would not
//! exist in the children, losing their lines.

use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::sysinfo;

/// The title shown in every line. Process-wide because it is a property of the process (a worker sets its own
/// after fork, while single-threaded); a formatter has no other way to learn it.
static TITLE: Mutex<String> = Mutex::new(String::new());

/// Sets the title this process's lines carry.
pub fn set_title(title: &str) {
    if let Ok(mut current) = TITLE.lock() {
        title.clone_into(&mut current);
    }
}

/// Installs the global subscriber: lines to stderr, filtered by `RUST_LOG` or else `default_level`.
pub fn init(default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(LineFormat)
        .try_init();
}

/// The most verbose level a plugin should forward, given the filter (0 off .. 5 trace).
pub fn plugin_level() -> u8 {
    match tracing::level_filters::LevelFilter::current().into_level() {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

struct LineFormat;

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
        let title = TITLE.lock().map(|t| t.clone()).unwrap_or_default();
        let title = if title.is_empty() { "pmhost".to_owned() } else { title };
        write!(
            writer,
            "[{}][{} {} {}]: ",
            level_word(event.metadata().level()),
            title,
            std::process::id(),
            sysinfo::local_time_text(SystemTime::now())
        )?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, " {fields}")?;
                }
            }
        }
        writeln!(writer)
    }
}
