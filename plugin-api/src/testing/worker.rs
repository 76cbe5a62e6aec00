//! A worker without a host: the job's `init`, `work` and `shutdown` called through the same export glue and
//! contexts the host's worker uses.

use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::RSome;
use serde::Serialize;
use tracing::Dispatch;

use super::call::{self, in_call};
use super::error::Error;
use super::events::{self, Capture, Event, EventLog};
use super::stop::{StopHandle, StopSignal};
use crate::context::{InitContext, WorkContext};
use crate::ffi::{HostLogger, JobBox, WorkResult};
use crate::{Job, Outcome};

/// Sets up a [`Worker`]: the task name, slot, generation and config its `init` sees. Made by
/// [`Worker::builder`].
pub struct WorkerBuilder {
    task: String,
    slot: u32,
    generation: u32,
    config: Result<String, Error>,
    stop: StopHandle,
    log: EventLog,
}

impl WorkerBuilder {
    /// The task's name (default `test`), as `ctx.task()` returns it.
    pub fn task(mut self, name: impl Into<String>) -> Self {
        self.task = name.into();
        self
    }

    /// The worker slot (default 0).
    pub fn slot(mut self, slot: u32) -> Self {
        self.slot = slot;
        self
    }

    /// The rollout generation (default 1, as on a fresh start).
    pub fn generation(mut self, generation: u32) -> Self {
        self.generation = generation;
        self
    }

    /// The task's config from a value of your own: anything that serializes to a table (a struct, a map,
    /// `serde_json::json!({...})`). Without a config, `init` sees an empty table, as under the host.
    pub fn config<T: Serialize + ?Sized>(mut self, config: &T) -> Self {
        self.config = match serde_json::to_value(config) {
            Ok(value @ serde_json::Value::Object(_)) => Ok(value.to_string()),
            Ok(other) => Err(not_a_table(&other)),
            Err(e) => Err(Error::Config(format!("cannot serialize it: {e}"))),
        };
        self
    }

    /// The task's config as JSON text, as `pmhost start --task-config` takes it: a JSON object.
    pub fn config_json(mut self, text: &str) -> Self {
        self.config = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(_)) => Ok(text.to_owned()),
            Ok(other) => Err(not_a_table(&other)),
            Err(e) => Err(Error::Config(format!("not valid JSON: {e}"))),
        };
        self
    }

    /// The task's config as TOML text: the body of its `[task.config]` table in `pmhost.toml`. The job receives
    /// it as the host hands it over (converted to JSON the same way).
    pub fn config_toml(mut self, text: &str) -> Self {
        self.config = match text.parse::<toml::Table>() {
            Ok(table) => serde_json::to_string(&table).map_err(|e| Error::Config(format!("cannot convert it: {e}"))),
            Err(e) => {
                let at = e.span().map(|span| line_column(text, span.start));
                let at = at.map(|(line, column)| format!(" at line {line}, column {column}")).unwrap_or_default();
                Err(Error::Config(format!("not valid TOML{at}: {}", e.message())))
            }
        };
        self
    }

    /// A handle to request the stop before or during `init` (a slow `init` may give up on it); the worker's
    /// [`Worker::stop_handle`] is the same.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The log the worker's events go to, from `init` on: a handle that stays readable if `init` fails (the
    /// worker's [`Worker::events`] reads the same log).
    pub fn event_log(&self) -> EventLog {
        self.log.clone()
    }

    /// Runs the job's `init` as a worker of the host does, and returns the worker ready for `work` calls.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the config given is not a table; [`Error::InitFailed`] if `init` returned an
    /// error (one that [`InitContext::config`] returned included); [`Error::InitPanicked`] if it panicked.
    pub fn init<J: Job>(self) -> Result<Worker, Error> {
        let config = self.config?;
        call::mark_in_use();
        let log = self.log;
        let dispatch = Dispatch::new(Capture { log: Arc::clone(&log.0) });
        // Every level: a test filters by level in its assertions, where the host would filter by its log level.
        let logger = HostLogger { max_level: 5, log: events::log_elsewhere };
        let signal = &self.stop.0;
        let pid = std::process::id() as i32;
        let ctx =
            InitContext::new(&self.task, &config, self.slot, self.generation, pid, &signal.flag, signal.fd(), logger);
        let module = crate::export::root_module::<J>();
        let job = in_call(&dispatch, || (module.init())(&ctx)).into_result().map_err(Error::from_init)?;
        Ok(Worker {
            job: Some(job),
            ended: None,
            slot: self.slot,
            generation: self.generation,
            executions: 0,
            log,
            dispatch,
            stop: self.stop,
        })
    }

    /// Runs an async job's `init` as a worker of the host does (feature `tokio`): on the tokio runtime the
    /// job's [`runtime`](crate::AsyncJob::runtime) builds, which stays the worker's for every later call.
    /// Call it from a plain `#[test]`, not from `#[tokio::test]`: the job's runtime is its own, as in a worker,
    /// and tokio refuses to start a runtime inside another (`init` would fail with that panic).
    ///
    /// # Errors
    ///
    /// As [`init`](WorkerBuilder::init); a runtime that cannot be built is an [`Error::InitFailed`], as under
    /// the host.
    #[cfg(feature = "tokio")]
    pub fn init_async<J: crate::AsyncJob>(self) -> Result<Worker, Error> {
        self.init::<crate::asynchronous::OnRuntime<J>>()
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

fn not_a_table(value: &serde_json::Value) -> Error {
    let kind = match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "a table",
    };
    Error::Config(format!(
        "it is {kind}, not a table (write it as the body of [task.config], or a JSON object like {{\"queue\": \"mail\"}})"
    ))
}

/// Why a worker takes no more calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    ShutDown,
    Panicked,
}

/// A job in a worker without a host: built by [`Worker::builder`], it calls the job as the host's worker does
/// (through the plugin's export glue, so panics and errors come back as the host would report them) and keeps
/// what the job logs.
///
/// A job's events are kept when they are logged on the thread the kit calls it on: its `init`, `work` and
/// `shutdown`, and for an async job everything on its runtime's own thread (every task of the default
/// current-thread runtime). Events of threads the job starts itself cannot be told apart between tests: they
/// are printed to stderr.
pub struct Worker {
    // Dropped first: the job may still hold the stop descriptor, which the stop handle owns.
    job: Option<JobBox>,
    ended: Option<Ended>,
    slot: u32,
    generation: u32,
    executions: u64,
    log: EventLog,
    dispatch: Dispatch,
    stop: StopHandle,
}

/// How a loop of `work` calls ([`Worker::work_times`], [`Worker::work_until`]) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopEnd {
    /// It made the number of calls it was given.
    Limit,
    /// A call returned the outcome sought ([`Worker::work_until`]).
    Matched,
    /// A call returned [`Outcome::Retire`]: the host would shut the worker down.
    Retired,
    /// A stop was requested: the host starts no call after that.
    Stopped,
}

/// The outcomes of a loop of `work` calls and why it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calls {
    /// Each call's outcome, in order.
    pub outcomes: Vec<Outcome>,
    /// Why the loop ended.
    pub end: LoopEnd,
}

impl Worker {
    /// A worker for task `test`, slot 0, generation 1, with an empty config; set them, then call
    /// [`init`](WorkerBuilder::init).
    ///
    /// # Panics
    ///
    /// If the process cannot open an eventfd for the stop descriptor (out of descriptors).
    pub fn builder() -> WorkerBuilder {
        let signal = StopSignal::new().unwrap_or_else(|e| panic!("cannot open the stop descriptor (an eventfd): {e}"));
        WorkerBuilder {
            task: "test".to_owned(),
            slot: 0,
            generation: 1,
            config: Ok("{}".to_owned()),
            stop: StopHandle(Arc::new(signal)),
            log: EventLog::default(),
        }
    }

    /// Calls `work` once, as call number [`executions`](Worker::executions)` + 1`. It calls even after a stop
    /// request (the host would not start a call then; [`work_times`](Worker::work_times) follows the host's loop).
    ///
    /// # Errors
    ///
    /// [`Error::WorkPanicked`] if the call panicked; the host would end the worker there, so the worker takes no
    /// more calls.
    ///
    /// # Panics
    ///
    /// If called after [`shutdown`](Worker::shutdown) or after a call panicked: the host never does that.
    pub fn work(&mut self) -> Result<Outcome, Error> {
        self.executions += 1;
        let signal = &self.stop.0;
        let mut ctx = WorkContext::new(self.slot, self.generation, &signal.flag, signal.fd());
        ctx.set_execution(self.executions);
        let job = live(&mut self.job, self.ended, "work");
        let result = in_call(&self.dispatch, || job.work(&ctx));
        match result {
            WorkResult::Continue => Ok(Outcome::Continue),
            WorkResult::Retire => Ok(Outcome::Retire),
            WorkResult::Failed(message) => Ok(Outcome::Failed(message.into())),
            WorkResult::Panicked(message) => {
                self.ended = Some(Ended::Panicked);
                Err(Error::WorkPanicked(message.into()))
            }
        }
    }

    /// Calls `work` as the host's loop does with `execute_times = calls` (but no pause between calls): up to
    /// `calls` calls, fewer if one returns [`Outcome::Retire`] or a stop is requested before the next.
    /// `Outcome::Failed` is counted and the loop goes on, as under the host.
    ///
    /// # Errors
    ///
    /// [`Error::WorkPanicked`], as [`work`](Worker::work).
    pub fn work_times(&mut self, calls: u64) -> Result<Calls, Error> {
        self.work_loop(calls, |_| false)
    }

    /// Calls `work` as [`work_times`](Worker::work_times) does, until `sought` is true of a call's outcome, at
    /// most `max_calls` times: the end says whether it was found ([`LoopEnd::Matched`]).
    ///
    /// # Errors
    ///
    /// [`Error::WorkPanicked`], as [`work`](Worker::work).
    pub fn work_until(&mut self, max_calls: u64, sought: impl FnMut(&Outcome) -> bool) -> Result<Calls, Error> {
        self.work_loop(max_calls, sought)
    }

    fn work_loop(&mut self, max_calls: u64, mut sought: impl FnMut(&Outcome) -> bool) -> Result<Calls, Error> {
        let mut outcomes = Vec::new();
        let end = loop {
            if outcomes.len() as u64 >= max_calls {
                break LoopEnd::Limit;
            }
            if self.stop.is_requested() {
                break LoopEnd::Stopped;
            }
            let outcome = self.work()?;
            let (found, retired) = (sought(&outcome), outcome == Outcome::Retire);
            outcomes.push(outcome);
            if found {
                break LoopEnd::Matched;
            }
            if retired {
                break LoopEnd::Retired;
            }
        };
        Ok(Calls { outcomes, end })
    }

    /// Runs the job's `shutdown`, as the host does when a worker ends normally. The worker takes no more calls.
    ///
    /// # Errors
    ///
    /// [`Error::ShutdownPanicked`] if it panicked.
    ///
    /// # Panics
    ///
    /// If called twice, or after a call panicked: the host never does that.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        let job = live(&mut self.job, self.ended, "shutdown");
        let panicked = in_call(&self.dispatch, || job.shutdown());
        if let RSome(message) = panicked {
            self.ended = Some(Ended::Panicked);
            return Err(Error::ShutdownPanicked(message.into()));
        }
        self.ended = Some(Ended::ShutDown);
        Ok(())
    }

    /// The number of `work` calls made so far (what `ctx.execution()` said in the last one).
    pub fn executions(&self) -> u64 {
        self.executions
    }

    /// A handle to request the stop, from this thread, another one, or after a delay.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Requests the stop now, as `pmhost stop` does: `ctx.stop_requested()` turns true, `ctx.stop_fd()` readable,
    /// `ctx.sleep()` returns `false` at once, and an async job's `ctx.stopped()` resolves.
    pub fn request_stop(&self) {
        self.stop.request();
    }

    /// Requests the stop `delay` from now (from a timer thread), for a call that waits for it.
    ///
    /// # Panics
    ///
    /// If the process cannot start a thread.
    pub fn request_stop_after(&self, delay: Duration) {
        self.stop.request_after(delay);
    }

    /// Whether the stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_requested()
    }

    /// The events the job logged so far, oldest first (those of `init` included).
    pub fn events(&self) -> Vec<Event> {
        self.log.events()
    }

    /// The events the job logged so far, removed from the worker: the next call returns only newer ones.
    pub fn take_events(&self) -> Vec<Event> {
        self.log.take_events()
    }

    /// A handle to the worker's events, readable after the worker is gone.
    pub fn event_log(&self) -> EventLog {
        self.log.clone()
    }
}

/// The job, if the host would still call it.
fn live<'a>(job: &'a mut Option<JobBox>, ended: Option<Ended>, call: &str) -> &'a mut JobBox {
    match (ended, job) {
        (None, Some(job)) => job,
        (Some(Ended::Panicked), _) => {
            panic!("{call} called after the job panicked: the host ends a worker whose job panicked")
        }
        (Some(Ended::ShutDown), _) | (None, None) => {
            panic!("{call} called after shutdown: the host never calls a job that has shut down")
        }
    }
}

impl Drop for Worker {
    /// Drops the job, with its events kept as in a call. (The host never drops a job: its worker exits.) A panic
    /// in the job's own `Drop` fails the test with its message, unless the test is failing already.
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            in_call(&self.dispatch, || drop(job));
            if let Some(message) = call::take_drop_panic()
                && !std::thread::panicking()
            {
                panic!("the job panicked when dropped: {message}");
            }
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("slot", &self.slot)
            .field("generation", &self.generation)
            .field("executions", &self.executions)
            .field("ended", &self.ended)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}
