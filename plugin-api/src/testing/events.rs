//! The job's `tracing` events, kept for a test's assertions.

use std::sync::{Arc, Mutex, PoisonError};

use abi_stable::std_types::RStr;
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Metadata, Subscriber};

use crate::bridge::{EventFields, render};

/// One event the job logged with `tracing` during a call of the kit.
///
/// ```
/// use pmhost_plugin_api::testing::Worker;
/// use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext, tracing};
///
/// struct Mailer;
/// impl Job for Mailer {
///     fn init(_ctx: &InitContext<'_>) -> Result<Self, JobError> {
///         tracing::info!(queue = "mail", batch = 10, "ready");
///         Ok(Mailer)
///     }
///     fn work(&mut self, _ctx: &WorkContext<'_>) -> Outcome { Outcome::Continue }
/// }
///
/// let worker = Worker::builder().init::<Mailer>().unwrap();
/// let event = &worker.events()[0];
/// assert_eq!(event.level, tracing::Level::INFO);
/// assert_eq!(event.message, "ready");
/// assert_eq!(event.field("batch"), Some("10"));
/// assert_eq!(event.text(), "ready queue=mail batch=10"); // what the host writes into its run log
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event's level.
    pub level: Level,
    /// The event's target (the job's module path unless it named one).
    pub target: String,
    /// The message, without the fields.
    pub message: String,
    /// The other fields, in the order the event wrote them: name and value as the host prints them (a string
    /// as it is, `%value` with `Display`, anything else with `Debug`).
    pub fields: Vec<(String, String)>,
}

impl Event {
    /// The value of the field `name`, if the event has one.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(field, _)| field == name).map(|(_, value)| value.as_str())
    }

    /// The event as the host writes it into the run log after the header: `message key=value key=value`.
    pub fn text(&self) -> String {
        render(&self.message, self.fields.iter().map(|(name, value)| (name.as_str(), value.as_str())))
    }
}

/// The events of one worker, filled by the capturing subscriber.
type Log = Arc<Mutex<Vec<Event>>>;

/// The events a worker's job logs, readable while the worker lives and after: from
/// [`WorkerBuilder::event_log`](super::WorkerBuilder::event_log), it also shows what a failed `init` logged.
///
/// ```
/// use pmhost_plugin_api::testing::Worker;
/// use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext, tracing};
///
/// struct Picky;
/// impl Job for Picky {
///     fn init(_ctx: &InitContext<'_>) -> Result<Self, JobError> {
///         tracing::warn!(tried = 3, "no server answered");
///         Err(JobError::msg("giving up"))
///     }
///     fn work(&mut self, _ctx: &WorkContext<'_>) -> Outcome { Outcome::Continue }
/// }
///
/// let builder = Worker::builder();
/// let log = builder.event_log();
/// assert!(builder.init::<Picky>().is_err());
/// assert_eq!(log.events()[0].text(), "no server answered tried=3");
/// ```
#[derive(Clone, Debug, Default)]
pub struct EventLog(pub(crate) Log);

impl EventLog {
    /// The events logged so far, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The events logged so far, removed from the log: the next call returns only newer ones.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A subscriber that keeps every event (at every level) in a worker's log. The kit makes it the thread's
/// default for the length of each call into the job, so tests running in parallel keep their events apart.
pub(crate) struct Capture {
    pub(crate) log: Log,
}

impl Subscriber for Capture {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    // Spans are accepted but not kept, as in the host's bridge.
    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        let event = Event {
            level: *metadata.level(),
            target: metadata.target().to_owned(),
            message: fields.message,
            fields: fields.fields.into_iter().map(|(name, value)| (name.to_owned(), value)).collect(),
        };
        self.log.lock().unwrap_or_else(PoisonError::into_inner).push(event);
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// The host logger the kit hands to `init`. The bridge it installs as the process's global subscriber sees only
/// events from threads the kit is not calling the job on (a thread the job started itself); they cannot be
/// told apart between tests, so they go to stderr, which the test harness shows for a failing test.
pub(crate) extern "C" fn log_elsewhere(level: u8, target: RStr<'_>, message: RStr<'_>) {
    let level = crate::ffi::level::filter(level).into_level().map_or("OFF".to_owned(), |level| level.to_string());
    eprintln!("pmhost test kit: event outside a call of the kit: {level} {target}: {message}");
}
