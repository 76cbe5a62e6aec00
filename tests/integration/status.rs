//! `pmhost status`: the JSON schema with real pids, the table, `--check`, status requests during a start, and
//! concurrent callers.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::control::start_daemon;
use crate::harness::{ProcessWaiter, SOON, Sandbox, cmdline, describe, fixtures, task_config};

#[test]
fn status_json_follows_the_schema_with_real_pids() {
    let sb = Sandbox::new("schema");
    start_daemon(&sb, "2", &[]);
    // Once a worker made a call, the task has its spawn latency.
    let s: Value = sb.wait_for("a status with the spawn latency", SOON, || {
        let out = sb.run(["status", "--name", &sb.name, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        s["tasks"][0].get("spawn_latency").is_some().then_some(s)
    });
    // Every documented key, and no other.
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>().join(",");
    assert_eq!(
        keys(&s),
        "generation,last_restart,last_scale,last_upgrade,master,name,state,tasks,written_at,written_at_mono_ns"
    );
    assert_eq!(keys(&s["master"]), "pid,rss_bytes,started_at,stop_timeout_ms,title,uptime_s,version");
    assert_eq!(
        keys(&s["tasks"][0]),
        "backoff,executions_total,name,plugin,plugin_sha256,spawn_latency,workers,workers_wanted"
    );
    assert_eq!(keys(&s["tasks"][0]["spawn_latency"]), "median_ms,p99_ms,samples");
    assert_eq!(
        keys(&s["tasks"][0]["workers"][0]),
        "executions,generation,last_exit,pid,plugin_sha256,restarts,rss_bytes,slot,started_at,state,title"
    );
    assert_eq!(s["name"], sb.name.as_str());
    assert_eq!(s["state"], "running");
    assert_eq!(s["generation"], 1);
    let master = &s["master"];
    assert_eq!(master["pid"], sb.master_pid());
    assert_eq!(master["title"], format!("process_m:Master:{}", sb.name));
    assert_eq!(cmdline(sb.master_pid()), format!("process_m:Master:{}", sb.name));
    for key in ["rss_bytes", "started_at", "uptime_s"] {
        assert!(master[key].is_u64(), "master.{key}: {s}");
    }
    let task = &s["tasks"][0];
    assert_eq!(task["name"], sb.name.as_str());
    assert_eq!(task["workers_wanted"], 2);
    let workers = task["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let mut slots: Vec<u64> = workers.iter().map(|w| w["slot"].as_u64().unwrap()).collect();
    slots.sort();
    assert_eq!(slots, [0, 1]);
    for w in workers {
        let pid = w["pid"].as_i64().unwrap() as i32;
        assert_eq!(cmdline(pid), format!("process_m:Worker:{}", sb.name), "worker {pid}");
        assert_eq!(w["title"], format!("process_m:Worker:{}", sb.name));
        assert!(matches!(w["state"].as_str(), Some("idle" | "busy")), "{w}");
        assert_eq!(w["generation"], 1);
        assert_eq!(w["plugin_sha256"].as_str().unwrap().len(), 64);
        for key in ["executions", "rss_bytes", "started_at", "restarts"] {
            assert!(w[key].is_u64(), "worker.{key}: {w}");
        }
        assert!(w.get("last_exit").is_some(), "{w}");
    }
    sb.stop();
}

#[test]
fn status_table_shows_master_and_worker_sections() {
    let sb = Sandbox::new("table");
    start_daemon(&sb, "2", &[]);
    let out = sb.run(["status", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in ["memory(m)", "run(s)", "count", "work", "restarts", &format!("process_m:Master:{}", sb.name)] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
    assert_eq!(table.matches(&format!("process_m:Worker:{}", sb.name)).count(), 2, "{table}");
    sb.stop();
}

#[test]
fn status_check_fails_while_a_slot_has_no_ready_worker() {
    let mut sb = Sandbox::new("unhealthy");
    let plugin = fixtures().faulty.to_str().unwrap();
    let config = task_config(json!({"init_ms": 120000, "only_slot": 1}));
    let _fg =
        sb.start_foreground(["--plugin", plugin, "--workers", "2", "--execute-times", "0", "--task-config", &config]);
    sb.wait_for("slot 0 ready", SOON, || sb.ready_workers().contains_key(&0).then_some(()));
    let out = sb.run(["status", "--name", &sb.name, "--check"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn status_requests_during_a_start_do_not_disturb_it() {
    let sb = Sandbox::new("startrace");
    // A big plugin takes a moment to stage: the window in which the pid file already names the starting process.
    let plugin = sb.path("libbig.so");
    let mut bytes = std::fs::read(&fixtures().hello).unwrap();
    bytes.resize(bytes.len() + 64 * 1024 * 1024, 0);
    std::fs::write(&plugin, bytes).unwrap();
    let mut start = sb
        .pmhost([
            "start",
            "-d",
            "--name",
            &sb.name,
            "--plugin",
            plugin.to_str().unwrap(),
            "--workers",
            "2",
            "--execute-times",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + SOON;
    let mut asked = 0;
    while start.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        // Each status run takes a few milliseconds: this is the load, not a sleep.
        let _ = sb.pmhost(["status", "--name", &sb.name, "--timeout", "200ms"]).output().unwrap();
        asked += 1;
    }
    let out = start.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "after {asked} status requests: {}", describe(&out));
    let check = sb.run(["status", "--name", &sb.name, "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    sb.stop();
}

#[test]
fn the_default_limits_count_as_healthy() {
    let sb = Sandbox::new("defaults");
    let hello = fixtures().hello.to_str().unwrap();
    // execute_times = 1: every worker retires after one call and a fresh one takes its slot.
    sb.start_daemon(hello, &["--workers", "2"]);
    for _ in 0..5 {
        let check = sb.run(["status", "--name", &sb.name, "--check"]);
        assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    }
    let out = sb.run(["scale", "--name", &sb.name, "3", "--timeout", "15s"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sb.stop();
}

#[test]
fn concurrent_status_calls_each_get_their_answer_promptly() {
    let sb = Sandbox::new("statusburst");
    let hello = fixtures().hello.to_str().unwrap();
    sb.start_daemon(hello, &["--workers", "2", "--execute-times", "0"]);
    // Signals of one kind merge while pending: with one SIGUSR1 per caller, the callers whose signal merged
    // into another's waited out their whole timeout.
    for burst in 0..3 {
        let started = std::time::Instant::now();
        let calls: Vec<_> = (0..30)
            .map(|_| {
                sb.pmhost(["status", "--name", &sb.name, "--json", "--timeout", "20s"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for call in calls {
            let pid = call.id() as i32;
            assert!(ProcessWaiter::new(pid).wait(SOON + SOON), "status {pid} hangs");
            let out = call.wait_with_output().unwrap();
            let waited = started.elapsed();
            assert_eq!(out.status.code(), Some(0), "burst {burst}: {}", String::from_utf8_lossy(&out.stderr));
            // Well under the 20 s timeout even on a loaded machine; a merged request waited all of it.
            assert!(waited < Duration::from_secs(8), "burst {burst}: a status call took {waited:?}");
        }
    }
    sb.stop();
}
