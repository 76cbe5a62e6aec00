//! Stop wake-up: a job blocked on the stop descriptor or in `ctx.sleep` is woken by `pmhost stop` at once,
//! instead of holding the stop until the grace period ends and the worker is killed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{SOON, Sandbox, describe, fixtures, read_markers, task_config};

/// Starts two workers whose first `work` call blocks in `mode`, stops them with a long grace period and checks
/// that the stop was prompt and graceful (each worker ran `shutdown`, none was killed).
fn stop_wakes(mode: &str) {
    let sb = Sandbox::new(mode);
    let (marker, shutdown) = (sb.path("marks"), sb.path("shutdown"));
    let config = task_config(json!({"work": mode, "marker_file": marker, "shutdown_file": shutdown}));
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(
        faulty,
        &["--workers", "2", "--execute-times", "0", "--stop-timeout", "60s", "--task-config", &config],
    );
    sb.wait_for("both workers blocked in their first call", SOON, || (read_markers(&marker).len() >= 2).then_some(()));
    let started = Instant::now();
    let out = sb.run(["stop", "--name", &sb.name]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    eprintln!("stop of two workers blocked in {mode}: {took:?}");
    // Unwoken workers would hold the stop for the whole 60 s grace; a loaded machine needs well under 10 s.
    assert!(took < Duration::from_secs(10), "stop took {took:?}: the blocked workers were not woken");
    let lines = std::fs::read_to_string(&shutdown).unwrap_or_default();
    assert_eq!(lines.lines().count(), 2, "both workers returned from the blocked call and shut down: {lines:?}");
    assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
}

#[test]
fn a_stop_wakes_a_job_waiting_on_the_stop_descriptor() {
    stop_wakes("block");
}

#[test]
fn a_stop_wakes_a_job_in_ctx_sleep() {
    stop_wakes("nap");
}
