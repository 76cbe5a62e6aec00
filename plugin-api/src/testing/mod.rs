//! Unit tests for a job without a host (feature `testing`).
//!
//! A [`Worker`] runs your job in the test process as a worker of the host would: `init` with the task name,
//! slot, generation and config you give, `work` once, N times or until an outcome, a stop request now or after
//! a delay, `shutdown`. The calls go through the same export glue `export_job!` generates for the host, so a
//! config your settings type refuses, an `init` error and a panic come back as the host would report them
//! ([`Error`], worded as the host's log and `pmhost start` word them). What the job logs with `tracing` is
//! kept for assertions ([`Event`]).
//!
//! Enable the feature for tests only, so the plugin itself gets no new dependency:
//!
//! ```toml
//! [dependencies]
//! pmhost-plugin-api = "0.2"
//!
//! [dev-dependencies]
//! pmhost-plugin-api = { version = "0.2", features = ["testing"] }
//! ```
//!
//! A plugin crate is a `cdylib`, which integration tests (`tests/`) cannot link: write the tests as a
//! `#[cfg(test)] mod tests` in `src/lib.rs`, where `cargo test` runs them.
//!
//! ```
//! use pmhost_plugin_api::testing::{Error, Worker};
//! use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext, tracing};
//!
//! #[derive(serde::Deserialize)]
//! struct Settings { queue: String, batch: u32 }
//!
//! struct Mailer { settings: Settings, sent: u64 }
//!
//! impl Job for Mailer {
//!     fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
//!         let settings: Settings = ctx.config()?;
//!         tracing::info!(queue = %settings.queue, slot = ctx.slot(), "ready");
//!         Ok(Mailer { settings, sent: 0 })
//!     }
//!     fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
//!         for _ in 0..self.settings.batch {
//!             if ctx.stop_requested() {
//!                 break;
//!             }
//!             self.sent += 1;
//!         }
//!         if self.sent >= 25 { Outcome::Retire } else { Outcome::Continue }
//!     }
//!     fn shutdown(&mut self) {
//!         tracing::info!(sent = self.sent, "bye");
//!     }
//! }
//!
//! // Config as the TOML of [task.config] (or `.config(&value)`, or `.config_json(text)`).
//! let mut worker = Worker::builder().task("mailer").slot(2).config_toml("queue = 'mail'\nbatch = 10").init::<Mailer>()?;
//! let ready = &worker.events()[0];
//! assert_eq!((ready.message.as_str(), ready.field("queue"), ready.field("slot")), ("ready", Some("mail"), Some("2")));
//!
//! // The host's loop: calls until `Retire` (25 mails in batches of 10 take three calls).
//! let calls = worker.work_until(10, |outcome| *outcome == Outcome::Retire)?;
//! assert_eq!(calls.outcomes.len(), 3);
//! worker.shutdown()?;
//! assert_eq!(worker.events().last().unwrap().text(), "bye sent=30");
//!
//! // A config the settings type refuses fails `init` as the host reports it.
//! let error = Worker::builder().task("mailer").config_json(r#"{"queue": "mail"}"#).init::<Mailer>().unwrap_err();
//! assert!(matches!(error, Error::InitFailed(_)));
//! assert!(error.to_string().starts_with("plugin init failed: invalid [task.config] for task mailer: missing field `batch`"));
//! # Ok::<(), Error>(())
//! ```
//!
//! A stop request reaches the job exactly as under the host: the flag, the descriptor and the interruptible
//! sleep. Request it now ([`Worker::request_stop`]), after a delay ([`Worker::request_stop_after`]), or from
//! another thread ([`StopHandle`]):
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! use pmhost_plugin_api::testing::{LoopEnd, Worker};
//! use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext};
//!
//! /// Polls an empty queue, backing off for a minute between tries.
//! struct Poller;
//!
//! impl Job for Poller {
//!     fn init(_ctx: &InitContext<'_>) -> Result<Self, JobError> { Ok(Poller) }
//!     fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
//!         ctx.sleep(Duration::from_secs(60));
//!         Outcome::Continue
//!     }
//! }
//!
//! let mut worker = Worker::builder().init::<Poller>().unwrap();
//! let started = Instant::now();
//! worker.request_stop_after(Duration::from_millis(50));
//! let calls = worker.work_times(100).unwrap();
//! // The first call's back-off ended at the request, and the loop started no other call.
//! assert_eq!((calls.outcomes.len(), calls.end), (1, LoopEnd::Stopped));
//! assert!(started.elapsed() < Duration::from_secs(30));
//! ```
//!
//! Async jobs (features `testing` and `tokio`) start with `WorkerBuilder::init_async`; the rest is the same.

mod call;
mod error;
mod events;
mod stop;
mod worker;

pub use error::Error;
pub use events::{Event, EventLog};
pub use stop::StopHandle;
pub use worker::{Calls, LoopEnd, Worker, WorkerBuilder};

pub(crate) use call::{job_drop_panicked, passes_on_panics};

#[cfg(test)]
mod tests;
