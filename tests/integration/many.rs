//! The host at its documented ceiling: 1024 workers, as one task or as 64 tasks of 16 from a config file, start,
//! answer `status`, roll a restart and stop (bounded, not timed: the benchmark times them).

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{ProcessWaiter, Sandbox, describe, fixtures};

/// Generous: 1024 debug-build workers on a loaded 2-core machine.
const LONG: Duration = Duration::from_secs(120);

/// Runs `pmhost ARGS` to its end (at most [`LONG`]) with its stdout in a file (a 1024-worker status is larger
/// than a pipe holds); fails unless it exits 0. Returns what it printed.
fn run_bounded(sb: &Sandbox, args: &[&str]) -> Vec<u8> {
    let answer = sb.path("answer.out");
    let mut cmd = sb.pmhost(args);
    cmd.stdout(std::fs::File::create(&answer).expect("answer file")).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn pmhost");
    assert!(ProcessWaiter::new(child.id() as i32).wait(LONG), "pmhost {args:?} did not finish");
    let out = child.wait_with_output().expect("pmhost output");
    assert_eq!(out.status.code(), Some(0), "pmhost {args:?}: {}", describe(&out));
    std::fs::read(&answer).expect("answer")
}

#[test]
fn a_thousand_and_twenty_four_workers_start_report_and_stop() {
    let sb = Sandbox::new("w1024");
    let plugin = fixtures().faulty.to_str().expect("utf-8 path").to_owned();
    run_bounded(
        &sb,
        &[
            "start",
            "-d",
            "--name",
            &sb.name,
            "--plugin",
            &plugin,
            "--workers",
            "1024",
            "--execute-times",
            "0",
            "--execute-usleep",
            "1s",
            "--task-config",
            "{}",
        ],
    );
    let ready = sb.wait_for("1024 ready workers", LONG, || {
        let ready = sb.ready_workers();
        (ready.len() == 1024).then_some(ready)
    });
    assert_eq!(ready.keys().copied().collect::<Vec<_>>(), (0..1024).collect::<Vec<u64>>());
    let answer = run_bounded(&sb, &["status", "--name", &sb.name, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&answer).expect("status json");
    assert_eq!(status["tasks"][0]["workers"].as_array().map(Vec::len), Some(1024));
    run_bounded(&sb, &["stop", "--name", &sb.name]);
    assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
}

#[test]
fn sixty_four_tasks_of_sixteen_workers_start_report_restart_and_stop() {
    const TASKS: usize = 64;
    const WORKERS: usize = 16;
    let sb = Sandbox::new("t64x16");
    let plugin = fixtures().faulty.display().to_string();
    let mut text = format!("[host]\nname = \"{}\"\n", sb.name);
    for task in 0..TASKS {
        text.push_str(&format!(
            "\n[[task]]\nname = \"job{task:02}\"\nplugin = \"{plugin}\"\nworkers = {WORKERS}\nexecute_times = 0\n\
             execute_usleep = \"1s\"\n"
        ));
    }
    let config = sb.path("pmhost.toml");
    std::fs::write(&config, text).expect("write the config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    run_bounded(&sb, &["start", "-d", "--config", &config]);
    // Every task with its own sixteen slots, each served by one worker of the first generation.
    let served = |generation: u32| {
        let snapshot = sb.snapshot()?;
        let complete = snapshot.tasks.len() == TASKS
            && snapshot.tasks.iter().all(|t| {
                t.workers_wanted as usize == WORKERS
                    && t.served_slots() == WORKERS
                    && t.workers.iter().filter(|w| w.serves()).all(|w| w.generation == generation)
            });
        complete.then_some(snapshot)
    };
    sb.wait_for("64 tasks of 16 ready workers", LONG, || served(1));
    let answer = run_bounded(&sb, &["status", "--config", &config, "--json"]);
    let status: pmhost::status::Snapshot = serde_json::from_slice(&answer).expect("status json");
    let names: Vec<&str> = status.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, (0..TASKS).map(|t| format!("job{t:02}")).collect::<Vec<_>>());
    for task in &status.tasks {
        let mut slots: Vec<u32> = task.workers.iter().map(|w| w.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..WORKERS as u32).collect::<Vec<_>>(), "task {}", task.name);
    }
    // A rolling restart moves every slot of every task to the next generation.
    run_bounded(&sb, &["restart", "--config", &config]);
    let after = sb.wait_for("every slot of every task on generation 2", LONG, || served(2));
    assert_eq!(after.generation, 2);
    assert!(after.last_restart.as_ref().is_some_and(|r| r.ok && r.slots_done as usize == TASKS * WORKERS));
    run_bounded(&sb, &["stop", "--config", &config]);
    assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
}
