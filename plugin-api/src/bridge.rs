//! The log bridge: a `tracing` subscriber inside the plugin that hands every event to the host.
//!
//! A plugin is a cdylib with its own copy of `tracing` and so its own global dispatcher; without this bridge a
//! plugin's `tracing::info!` would go nowhere. The host records each event under the worker's span, so the
//! lines carry task, slot and pid. Plugin spans are accepted but not forwarded: their fields are not recorded.

use std::fmt::{self, Write as _};
use std::sync::Once;

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use crate::ffi::HostLogger;

struct Bridge {
    logger: HostLogger,
}

/// Installs the bridge as the plugin's global subscriber (once per process; later calls do nothing).
pub(crate) fn install(logger: HostLogger) {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // A plugin that installed its own global subscriber first keeps it.
        let _ = tracing::subscriber::set_global_default(Bridge { logger });
    });
}

impl Subscriber for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        crate::ffi::level::code(metadata.level()) <= self.logger.max_level
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(crate::ffi::level::filter(self.logger.max_level))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        (self.logger.log)(
            crate::ffi::level::code(metadata.level()),
            RStr::from_str(metadata.target()),
            RStr::from_str(&fields.text()),
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// An event's message and its other fields, as text. The bridge sends [`text`](EventFields::text) to the host;
/// the test kit keeps the parts.
#[derive(Default)]
pub(crate) struct EventFields {
    pub(crate) message: String,
    pub(crate) fields: Vec<(&'static str, String)>,
}

impl EventFields {
    /// The event as the host records it: `message key=value key=value`.
    pub(crate) fn text(&self) -> String {
        render(&self.message, self.fields.iter().map(|(name, value)| (*name, value.as_str())))
    }
}

/// `message key=value key=value` (without a message: `key=value ...`).
pub(crate) fn render<'a>(message: &str, fields: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = message.to_owned();
    for (name, value) in fields {
        if !text.is_empty() {
            text.push(' ');
        }
        let _ = write!(text, "{name}={value}");
    }
    text
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.push((field.name(), format!("{value:?}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn text_is_the_message_then_the_fields() {
        let fields = [("queue", "mail"), ("batch", "10")];
        assert_eq!(render("ready", fields.into_iter()), "ready queue=mail batch=10");
        assert_eq!(render("", fields.into_iter()), "queue=mail batch=10");
        assert_eq!(render("ready", std::iter::empty()), "ready");
    }
}
