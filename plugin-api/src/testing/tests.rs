//! The kit's own tests: stop requests (now, later, from another thread; flag, descriptor and sleep), config
//! errors, panics in every call, shutdown, event capture and async jobs.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::*;
use crate::{InitContext, Job, JobError, Outcome, WorkContext};

/// Longest a test waits for something that should happen at once, on a loaded machine.
const SOON: Duration = Duration::from_secs(20);

/// What a call saw of the stop request, through each of the three ways a job can look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StopView {
    flag: bool,
    fd_readable: bool,
    /// `ctx.sleep(SOON)` returned false (interrupted) rather than true after the full pause.
    sleep_interrupted: bool,
}

fn fd_readable(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut entry = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, alive for the call.
    unsafe { libc::poll(&mut entry, 1, timeout_ms) > 0 && entry.revents & libc::POLLIN != 0 }
}

/// Behaves as its config says, and logs what it saw.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Script {
    init: Option<String>,
    work: Option<String>,
    shutdown: Option<String>,
    /// How long "look" sleeps (default: SOON, which only a stop request cuts short).
    sleep_ms: Option<u64>,
}

struct Scripted {
    script: Script,
    last_stop_view: Option<StopView>,
}

impl Scripted {
    /// Keeps and logs what a call saw of the stop request.
    fn look(&mut self, view: StopView) -> Outcome {
        self.last_stop_view = Some(view);
        crate::tracing::warn!(flag = view.flag, fd = view.fd_readable, sleep = view.sleep_interrupted, "looked");
        Outcome::Continue
    }
}

impl Job for Scripted {
    fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
        let script: Script = ctx.config()?;
        crate::tracing::info!(task = ctx.task(), slot = ctx.slot(), generation = ctx.generation(), "init");
        match script.init.as_deref() {
            Some("fail") => return Err(JobError::msg("cannot reach db.example:5432")),
            Some("panic") => panic!("init exploded"),
            Some("wait-for-stop") if ctx.sleep(SOON) => return Err(JobError::msg("init was not stopped")),
            _ => {}
        }
        Ok(Scripted { script, last_stop_view: None })
    }

    fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
        crate::tracing::debug!(call = ctx.execution(), "work");
        match self.script.work.as_deref() {
            Some("panic") => panic!("work exploded in call {}", ctx.execution()),
            Some("fail-odd") if ctx.execution() % 2 == 1 => Outcome::failed(format!("call {} failed", ctx.execution())),
            Some("retire-at-3") if ctx.execution() == 3 => Outcome::Retire,
            Some("block-on-fd") => {
                // Blocks until the stop descriptor becomes readable, as a consumer waiting in poll does; then
                // looks at the flag, and at a sleep that should end at once.
                let woken = fd_readable(ctx.stop_fd(), SOON.as_millis() as i32);
                self.look(StopView {
                    flag: ctx.stop_requested(),
                    fd_readable: woken,
                    sleep_interrupted: !ctx.sleep(SOON),
                })
            }
            Some("look") => {
                let flag = ctx.stop_requested();
                let fd_readable = fd_readable(ctx.stop_fd(), 0);
                let sleep_interrupted = !ctx.sleep(self.script.sleep_ms.map_or(SOON, Duration::from_millis));
                self.look(StopView { flag, fd_readable, sleep_interrupted })
            }
            _ => Outcome::Continue,
        }
    }

    fn shutdown(&mut self) {
        if self.script.shutdown.as_deref() == Some("panic") {
            panic!("shutdown exploded");
        }
        crate::tracing::info!(saw_stop = self.last_stop_view.is_some_and(|view| view.flag), "shutdown");
    }
}

fn scripted(config: serde_json::Value) -> Worker {
    Worker::builder().task("script").config(&config).init::<Scripted>().expect("init")
}

fn last_view(worker: &Worker) -> StopView {
    let looked = worker.events().into_iter().rev().find(|event| event.message == "looked").expect("a look");
    let flag = |name| looked.field(name) == Some("true");
    StopView { flag: flag("flag"), fd_readable: flag("fd"), sleep_interrupted: flag("sleep") }
}

#[test]
fn without_a_stop_request_the_job_sees_none() {
    let mut worker = scripted(serde_json::json!({"work": "look", "sleep_ms": 10}));
    let started = Instant::now();
    assert_eq!(worker.work_times(2).unwrap().end, LoopEnd::Limit);
    assert!(started.elapsed() >= Duration::from_millis(20), "the sleeps were cut short");
    assert_eq!(last_view(&worker), StopView { flag: false, fd_readable: false, sleep_interrupted: false });
    assert!(!worker.stop_requested());
}

#[test]
fn an_immediate_request_sets_flag_descriptor_and_sleep() {
    let mut worker = scripted(serde_json::json!({"work": "look"}));
    worker.request_stop();
    let started = Instant::now();
    worker.work().unwrap();
    assert!(started.elapsed() < SOON, "sleep was not interrupted");
    assert_eq!(last_view(&worker), StopView { flag: true, fd_readable: true, sleep_interrupted: true });
    // The request stays: a second look sees it again (nothing consumed the descriptor's readiness).
    worker.work().unwrap();
    assert_eq!(last_view(&worker), StopView { flag: true, fd_readable: true, sleep_interrupted: true });
}

#[test]
fn a_delayed_request_wakes_a_call_blocked_on_the_descriptor() {
    let mut worker = scripted(serde_json::json!({"work": "block-on-fd"}));
    let handle = worker.stop_handle();
    let started = Instant::now();
    worker.request_stop_after(Duration::from_millis(100));
    assert!(!handle.is_requested(), "requested before its delay");
    let calls = worker.work_times(5).unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(100), "woken before the request: {waited:?}");
    assert!(waited < SOON, "not woken by the request: {waited:?}");
    // One call, woken by the request through the descriptor, then seeing the flag and a sleep ending at once;
    // the loop then starts no other call.
    assert_eq!(calls, Calls { outcomes: vec![Outcome::Continue], end: LoopEnd::Stopped });
    assert_eq!(last_view(&worker), StopView { flag: true, fd_readable: true, sleep_interrupted: true });
    worker.shutdown().unwrap();
    assert_eq!(worker.events().last().unwrap().text(), "shutdown saw_stop=true");
}

#[test]
fn a_delayed_request_interrupts_a_sleep_in_progress() {
    let mut worker = scripted(serde_json::json!({"work": "look"}));
    let started = Instant::now();
    worker.request_stop_after(Duration::from_millis(100));
    worker.work().unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(100) && waited < SOON, "{waited:?}");
    // The call's only wait is its 20 s sleep: it ended on the request, not before (the time) nor after it.
    assert!(last_view(&worker).sleep_interrupted);
    assert!(worker.stop_requested());
}

#[test]
fn a_request_from_another_thread_interrupts_sleep() {
    let mut worker = scripted(serde_json::json!({"work": "look"}));
    let handle = worker.stop_handle();
    let started = Instant::now();
    std::thread::scope(|scope| {
        // Whether the request lands before the call's sleep or during it, the 20 s sleep ends at once.
        scope.spawn(move || handle.request());
        worker.work().unwrap();
    });
    assert!(started.elapsed() < SOON);
    assert!(last_view(&worker).sleep_interrupted);
}

#[test]
fn a_request_before_init_reaches_init() {
    let builder = Worker::builder().config(&serde_json::json!({"init": "wait-for-stop"}));
    builder.stop_handle().request_after(Duration::from_millis(20));
    let started = Instant::now();
    let worker = builder.init::<Scripted>().expect("init returned once stopped");
    assert!(started.elapsed() < SOON);
    assert!(worker.stop_requested());
}

#[test]
fn init_sees_task_slot_generation_and_config() {
    let worker = Worker::builder().task("mailer").slot(3).generation(7).config_toml("").init::<Scripted>().unwrap();
    let events = worker.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].text(), "init task=mailer slot=3 generation=7");
    assert_eq!(events[0].level, tracing::Level::INFO);
    assert_eq!(events[0].target, module_path!());
}

#[test]
fn configs_that_are_not_tables_are_refused_before_init() {
    let cases = [
        (Worker::builder().config_json("[1, 2]"), "it is an array, not a table"),
        (Worker::builder().config_json("{\"queue\": "), "not valid JSON"),
        (Worker::builder().config_toml("queue = "), "not valid TOML"),
        (Worker::builder().config(&3), "it is a number, not a table"),
        (Worker::builder().config("mail"), "it is a string, not a table"),
    ];
    for (builder, expected) in cases {
        match builder.init::<Scripted>() {
            Err(error @ Error::Config(_)) => {
                assert!(error.message().starts_with(expected), "{expected:?} does not start {error:?}");
                assert!(error.to_string().starts_with("invalid task config: "), "{error}");
            }
            other => panic!("expected a config error with {expected:?}, got {other:?}"),
        }
    }
}

#[test]
fn a_toml_config_with_a_mistake_says_where() {
    let error = Worker::builder().config_toml("queue = 'mail'\nbatch = ").init::<Scripted>().unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert!(error.message().starts_with("not valid TOML at line 2, column 9: "), "{error}");
}

#[test]
fn a_config_the_job_refuses_fails_init_in_the_hosts_words() {
    let error = Worker::builder().task("mailer").config_toml("init = 3").init::<Scripted>().unwrap_err();
    assert!(matches!(error, Error::InitFailed(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.starts_with("plugin init failed: invalid [task.config] for task mailer: invalid type"), "{text}");
}

#[test]
fn a_config_error_points_at_no_line_of_text_the_user_never_wrote() {
    // The host hands the job its [task.config] converted to one line of JSON: a line and column in that text
    // would send the user to the wrong line of pmhost.toml.
    let error = Worker::builder().config_toml("# the queue\n\ninit = 3").init::<Scripted>().unwrap_err();
    assert_eq!(error.message(), "invalid [task.config] for task test: invalid type: integer `3`, expected a string");
}

#[test]
fn toml_json_and_typed_configs_reach_the_job_alike() {
    #[derive(serde::Serialize)]
    struct Typed {
        work: &'static str,
    }
    for builder in [
        Worker::builder().config_toml("work = 'retire-at-3'"),
        Worker::builder().config_json(r#"{"work": "retire-at-3"}"#),
        Worker::builder().config(&Typed { work: "retire-at-3" }),
    ] {
        let mut worker = builder.init::<Scripted>().unwrap();
        let calls = worker.work_times(10).unwrap();
        assert_eq!(calls.end, LoopEnd::Retired);
        assert_eq!(calls.outcomes.len(), 3);
    }
}

#[test]
fn init_errors_and_panics_are_reported_as_the_host_reports_them() {
    let error = scripted_init(serde_json::json!({"init": "fail"}));
    assert_eq!(error, Error::InitFailed("cannot reach db.example:5432".to_owned()));
    assert_eq!(error.to_string(), "plugin init failed: cannot reach db.example:5432");

    let error = scripted_init(serde_json::json!({"init": "panic"}));
    let Error::InitPanicked(message) = &error else { panic!("expected a panic, got {error:?}") };
    assert!(message.starts_with("init exploded (at "), "{message}");
    assert!(message.contains("tests.rs:"), "the location is missing: {message}");
    assert!(error.to_string().starts_with("plugin init panicked: init exploded (at "), "{error}");
}

fn scripted_init(config: serde_json::Value) -> Error {
    Worker::builder().config(&config).init::<Scripted>().unwrap_err()
}

#[test]
fn a_panic_in_work_is_a_crash_with_the_message_and_location() {
    let mut worker = scripted(serde_json::json!({"work": "panic"}));
    let error = worker.work_times(3).unwrap_err();
    let Error::WorkPanicked(message) = &error else { panic!("expected a panic, got {error:?}") };
    assert!(message.starts_with("work exploded in call 1 (at "), "{message}");
    assert!(error.to_string().starts_with("plugin panicked in work: work exploded in call 1"), "{error}");
    assert_eq!(worker.executions(), 1);
}

#[test]
#[should_panic(expected = "work called after the job panicked")]
fn a_worker_whose_job_panicked_takes_no_more_calls() {
    let mut worker = scripted(serde_json::json!({"work": "panic"}));
    let _ = worker.work();
    let _ = worker.work();
}

#[test]
fn a_panic_in_shutdown_is_reported() {
    let mut worker = scripted(serde_json::json!({"shutdown": "panic"}));
    let error = worker.shutdown().unwrap_err();
    assert!(error.to_string().starts_with("plugin panicked in shutdown: shutdown exploded (at "), "{error}");
}

#[test]
#[should_panic(expected = "work called after shutdown")]
fn a_worker_that_shut_down_takes_no_more_calls() {
    let mut worker = scripted(serde_json::json!({}));
    worker.shutdown().unwrap();
    let _ = worker.work();
}

/// A job whose own `drop` panics (say, an `unwrap` on a final flush). The host never drops a job, the kit does.
struct PanicsOnDrop;

impl Job for PanicsOnDrop {
    fn init(_ctx: &InitContext<'_>) -> Result<Self, JobError> {
        Ok(PanicsOnDrop)
    }
    fn work(&mut self, _ctx: &WorkContext<'_>) -> Outcome {
        Outcome::Continue
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("flush on drop failed");
    }
}

#[test]
fn a_panic_in_the_jobs_drop_fails_the_test_with_its_message() {
    let mut worker = Worker::builder().init::<PanicsOnDrop>().unwrap();
    worker.work().unwrap();
    worker.shutdown().unwrap();
    // Not an abort of the whole test process: a panic of the test, with the job's message and location.
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(worker))).unwrap_err();
    let message = payload.downcast_ref::<String>().expect("a message");
    assert!(message.starts_with("the job panicked when dropped: flush on drop failed (at "), "{message}");
}

#[test]
fn failed_calls_are_counted_and_the_loop_goes_on() {
    let mut worker = scripted(serde_json::json!({"work": "fail-odd"}));
    let calls = worker.work_times(4).unwrap();
    assert_eq!(calls.end, LoopEnd::Limit);
    let expected = vec![
        Outcome::Failed("call 1 failed".to_owned()),
        Outcome::Continue,
        Outcome::Failed("call 3 failed".to_owned()),
        Outcome::Continue,
    ];
    assert_eq!(calls.outcomes, expected);
    assert_eq!(worker.executions(), 4);
    // work_until: the outcome sought, or the bound.
    let calls = worker.work_until(10, |outcome| matches!(outcome, Outcome::Failed(_))).unwrap();
    assert_eq!((calls.outcomes.len(), calls.end), (1, LoopEnd::Matched));
    let calls = worker.work_until(3, |outcome| *outcome == Outcome::Retire).unwrap();
    assert_eq!((calls.outcomes.len(), calls.end), (3, LoopEnd::Limit));
    assert_eq!(worker.executions(), 8);
}

#[test]
fn events_keep_level_message_and_fields_per_worker() {
    // Two workers on two threads at once: each keeps only its own job's events.
    let workers: Vec<Vec<Event>> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2u32)
            .map(|slot| {
                scope.spawn(move || {
                    let mut worker = Worker::builder().slot(slot).init::<Scripted>().unwrap();
                    worker.work_times(3).unwrap();
                    worker.shutdown().unwrap();
                    worker.events()
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for (slot, events) in workers.iter().enumerate() {
        let texts: Vec<String> = events.iter().map(Event::text).collect();
        let init = format!("init task=test slot={slot} generation=1");
        assert_eq!(texts, [init.as_str(), "work call=1", "work call=2", "work call=3", "shutdown saw_stop=false"]);
        assert_eq!(events[1].level, tracing::Level::DEBUG);
        assert_eq!(events[1].field("call"), Some("1"));
        assert_eq!(events[1].message, "work");
    }
}

#[test]
fn events_of_a_failed_init_and_of_a_dropped_worker_stay_readable() {
    let builder = Worker::builder().config(&serde_json::json!({"init": "fail"}));
    let log = builder.event_log();
    assert!(matches!(builder.init::<Scripted>(), Err(Error::InitFailed(_))));
    assert_eq!(log.events().iter().map(Event::text).collect::<Vec<_>>(), ["init task=test slot=0 generation=1"]);

    let mut worker = scripted(serde_json::json!({}));
    let log = worker.event_log();
    worker.work().unwrap();
    drop(worker);
    assert_eq!(log.take_events().len(), 2);
    assert!(log.events().is_empty());
}

#[test]
fn take_events_returns_only_newer_events() {
    let mut worker = scripted(serde_json::json!({}));
    assert_eq!(worker.take_events().len(), 1);
    worker.work().unwrap();
    let events = worker.take_events();
    assert_eq!(events.iter().map(Event::text).collect::<Vec<_>>(), ["work call=1"]);
    assert!(worker.events().is_empty());
}

#[test]
fn panics_outside_the_kits_calls_are_passed_on() {
    let _worker = scripted(serde_json::json!({}));
    assert!(passes_on_panics(), "a panic of the test itself would be swallowed");
    let inside = call::InCall::enter();
    assert!(!passes_on_panics(), "a job's panic would be printed instead of reported");
    drop(inside);
    assert!(passes_on_panics());
    // And a failing assertion in a test is still a failing test with its message.
    let caught = std::panic::catch_unwind(|| panic!("the test's own panic"));
    let payload = caught.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"the test's own panic"));
}

#[cfg(feature = "tokio")]
mod asynchronous {
    use super::*;
    use crate::AsyncJob;

    struct Consumer {
        handled: u64,
        explode: bool,
    }

    impl AsyncJob for Consumer {
        async fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
            let explode = ctx.config_json().contains("explode");
            crate::tracing::info!(slot = ctx.slot(), "async init");
            Ok(Consumer { handled: 0, explode })
        }

        async fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
            if self.explode {
                panic!("async work exploded");
            }
            tokio::select! {
                () = ctx.stopped() => {
                    crate::tracing::info!(handled = self.handled, "woken by the stop request");
                    Outcome::Continue
                }
                () = tokio::time::sleep(Duration::from_millis(1)) => {
                    self.handled += 1;
                    Outcome::Continue
                }
            }
        }

        async fn shutdown(&mut self) {
            // A task spawned on the current-thread runtime runs on the kit's thread: its events are kept.
            let handled = self.handled;
            let _ = tokio::spawn(async move { crate::tracing::info!(handled, "async shutdown") }).await;
        }
    }

    #[test]
    fn an_async_job_runs_on_its_runtime_and_stopped_resolves_on_a_delayed_request() {
        let mut worker = Worker::builder().slot(1).init_async::<Consumer>().unwrap();
        worker.work_times(3).unwrap();
        worker.request_stop_after(Duration::from_millis(50));
        // Calls until the request: work_until never sees the outcome sought, the stop ends the loop.
        let calls = worker.work_until(u64::MAX, |_| false).unwrap();
        assert_eq!(calls.end, LoopEnd::Stopped);
        // The call in flight when the request came was woken by `stopped()` (or finished its 1 ms first).
        worker.shutdown().unwrap();
        let texts: Vec<String> = worker.events().iter().map(Event::text).collect();
        assert_eq!(texts.first().map(String::as_str), Some("async init slot=1"));
        let handled = 3 + calls.outcomes.len();
        assert!(texts.last().unwrap().starts_with("async shutdown handled="), "{texts:?}");
        let counted: usize = texts.last().unwrap().rsplit('=').next().unwrap().parse().unwrap();
        assert!(counted == handled || counted + 1 == handled, "{counted} of {handled}: {texts:?}");
    }

    #[test]
    fn an_immediate_request_resolves_stopped_at_once() {
        let mut worker = Worker::builder().init_async::<Consumer>().unwrap();
        worker.request_stop();
        worker.work().unwrap();
        let events = worker.events();
        assert_eq!(events.last().unwrap().text(), "woken by the stop request handled=0");
    }

    #[test]
    fn an_async_panic_is_reported_as_the_host_reports_it() {
        let mut worker = Worker::builder().config_json(r#"{"explode": true}"#).init_async::<Consumer>().unwrap();
        let error = worker.work().unwrap_err();
        assert!(error.to_string().starts_with("plugin panicked in work: async work exploded (at "), "{error}");
    }
}
