//! examples/pg-queue against a real PostgreSQL server (a throwaway cluster per test, see `pg`): workers idle in
//! `LISTEN` are woken by a stop at once, and under crashes, kills, restarts, rollbacks, scaling, a frozen
//! worker, a killed master and a second host on the same queue, every job's effect exists exactly once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::{ProcessWaiter, SOON, Sandbox, describe, fixtures};
use crate::pg::PgCluster;

/// A host config running examples/pg-queue against `cluster`. The task is named after the sandbox, so the
/// sandbox's cleanup finds the workers of every host of the test.
fn write_config(sb: &Sandbox, file: &str, host: &str, workers: u32, usleep: &str, cluster: &PgCluster) -> PathBuf {
    let text = format!(
        r#"[host]
name = "{host}"
stop_timeout = "30s"

[[task]]
name = "{task}"
plugin = "{plugin}"
workers = {workers}
execute_times = 0
execute_usleep = "{usleep}"
backoff_initial = "10ms"

[task.config]
connection = "{connection}"
batch_size = 10
idle_wait_ms = 120000
"#,
        task = sb.name,
        plugin = fixtures().pg_queue.display(),
        connection = cluster.connection(),
    );
    let path = sb.path(file);
    std::fs::write(&path, text).expect("write config");
    path
}

/// `count` jobs with three-word payloads, in one statement (the insert trigger sends one NOTIFY).
fn enqueue(cluster: &PgCluster, count: u32) {
    cluster.sql(&format!("INSERT INTO jobs (payload) SELECT 'job number ' || n FROM generate_series(1, {count}) n"));
}

/// Pids of the ready workers of a host, from its status file.
fn worker_pids(sb: &Sandbox) -> Vec<i32> {
    sb.ready_workers().into_values().collect()
}

/// Lines of the run logs (what plugins log) that contain `needle`.
fn run_log_lines(sb: &Sandbox, needle: &str) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(sb.path("log")).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("run") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            count += text.lines().filter(|line| line.contains(needle)).count();
        }
    }
    count
}

/// Waits until `workers` workers are ready and idle in their `LISTEN` wait: connected, no transaction open.
fn wait_listening(sb: &Sandbox, cluster: &PgCluster, workers: usize) -> Vec<i32> {
    sb.wait_for("workers idle in LISTEN", SOON, || {
        let pids = worker_pids(sb);
        let idle = cluster
            .number("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pmhost %' AND state = 'idle'");
        (pids.len() == workers && idle == workers as i64).then_some(pids)
    })
}

/// `pmhost stop` issued → the last worker gone, with the workers idle in `LISTEN`.
fn timed_stop(sb: &Sandbox, workers: &[i32]) -> Duration {
    let waiters: Vec<ProcessWaiter> = workers.iter().map(|pid| ProcessWaiter::new(*pid)).collect();
    let started = Instant::now();
    let mut stop = sb.pmhost(["stop", "--name", &sb.name]).spawn().expect("spawn pmhost stop");
    for waiter in &waiters {
        assert!(waiter.wait(Duration::from_secs(60)), "a worker outlived the stop");
    }
    let took = started.elapsed();
    let status = stop.wait().expect("wait for pmhost stop");
    assert_eq!(status.code(), Some(0), "pmhost stop failed");
    took
}

#[test]
fn workers_idle_in_listen_stop_at_once_and_restart_fast() {
    let Some(cluster) = PgCluster::start() else { return };
    let sb = Sandbox::new("pg-idle");
    let config = write_config(&sb, "pmhost.toml", &sb.name, 4, "0", &cluster);
    let config = config.to_str().expect("utf-8 path");

    // The queue works: a job inserted while the workers wait in LISTEN is done (woken by NOTIFY, not a poll:
    // the idle wait is two minutes).
    let out = sb.run(["start", "-d", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    wait_listening(&sb, &cluster, 4);
    enqueue(&cluster, 3);
    sb.wait_for("the jobs done", SOON, || (cluster.number("SELECT count(*) FROM job_effects") == 3).then_some(()));

    // Stops: each worker is in a call waiting on LISTEN, with a 30 s grace. Woken by the stop descriptor, the
    // workers end in milliseconds; unwoken, they would hold the stop for the grace and be killed. Three stops,
    // the best one held to 100 ms (one slow stop on a loaded machine is scheduling, not the host) and every
    // one to well under the grace.
    let mut stops = Vec::new();
    for round in 0..3 {
        if round > 0 {
            let out = sb.run(["start", "-d", "--config", config]);
            assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        }
        let workers = wait_listening(&sb, &cluster, 4);
        stops.push(timed_stop(&sb, &workers));
    }
    eprintln!("stop of 4 LISTEN-idle workers (command issued → last worker gone): {stops:?}");
    let best = stops.iter().min().copied().unwrap_or_default();
    assert!(best < Duration::from_millis(100), "no stop within 100 ms: {stops:?}");
    assert!(stops.iter().all(|took| *took < Duration::from_secs(5)), "a stop waited for the grace: {stops:?}");
    assert_eq!(run_log_lines(&sb, "pg-queue done"), 12, "every worker ran its shutdown (none was killed)");

    // A restart with an empty queue: the old workers, idle in LISTEN, leave as soon as their replacements are
    // ready, so the rollout takes about what it takes with a plugin that never blocks (hello, same settings).
    let restart_of = |sb: &Sandbox| {
        let started = Instant::now();
        let out = sb.run(["restart", "--name", &sb.name]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        started.elapsed()
    };
    let out = sb.run(["start", "-d", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let old = wait_listening(&sb, &cluster, 4);
    let pg_restart = restart_of(&sb);
    for pid in old {
        assert!(ProcessWaiter::new(pid).wait(Duration::from_secs(5)), "old worker {pid} lingered after the restart");
    }
    sb.stop();

    let hello_sb = Sandbox::new("pg-idle-hello");
    hello_sb.start_daemon(&fixtures().hello, &["--workers", "4", "--execute-times", "0", "--stop-timeout", "30s"]);
    let hello_restart = restart_of(&hello_sb);
    hello_sb.stop();
    eprintln!("restart of 4 workers with an empty queue: pg-queue {pg_restart:?}, hello {hello_restart:?}");
    assert!(
        pg_restart < hello_restart * 3 + Duration::from_millis(500),
        "restart took {pg_restart:?} against {hello_restart:?} with hello"
    );
    sb.wait_for("no connection left", SOON, || (cluster.client_connections() == 0).then_some(()));
}
