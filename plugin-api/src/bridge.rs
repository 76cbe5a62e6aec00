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
        let mut text = MessageText::default();
        event.record(&mut text);
        let metadata = event.metadata();
        (self.logger.log)(
            crate::ffi::level::code(metadata.level()),
            RStr::from_str(metadata.target()),
            RStr::from_str(&text.finish()),
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Formats an event as `message key=value key=value`.
#[derive(Default)]
struct MessageText {
    message: String,
    fields: String,
}

impl MessageText {
    fn finish(mut self) -> String {
        if self.message.is_empty() {
            self.fields.trim_start().to_owned()
        } else {
            self.message.push_str(&self.fields);
            self.message
        }
    }
}

impl Visit for MessageText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}
