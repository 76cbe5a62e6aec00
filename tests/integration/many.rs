//! The host at its documented ceiling: 1024 workers start, answer `status`, and stop (bounded, not timed: the
//! benchmark times them).

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{ProcessWaiter, Sandbox, describe, fixtures};

/// Generous: 1024 debug-build workers on a loaded 2-core machine.
const LONG: Duration = Duration::from_secs(120);

#[test]
fn a_thousand_and_twenty_four_workers_start_report_and_stop() {
    let sb = Sandbox::new("w1024");
    let plugin = fixtures().faulty.to_str().expect("utf-8 path").to_owned();
    let mut start = sb.pmhost(["start", "-d", "--name", &sb.name, "--plugin", &plugin]);
    start.args(["--workers", "1024", "--execute-times", "0", "--execute-usleep", "1s", "--task-config", "{}"]);
    let start = start.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pmhost start");
    assert!(ProcessWaiter::new(start.id() as i32).wait(LONG), "start did not finish");
    let out = start.wait_with_output().expect("start output");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let ready = sb.wait_for("1024 ready workers", LONG, || {
        let ready = sb.ready_workers();
        (ready.len() == 1024).then_some(ready)
    });
    assert_eq!(ready.keys().copied().collect::<Vec<_>>(), (0..1024).collect::<Vec<u64>>());
    // Its answer is larger than a pipe holds: read it from a file.
    let answer = sb.path("status.json");
    let mut cmd = sb.pmhost(["status", "--name", &sb.name, "--json"]);
    cmd.stdout(std::fs::File::create(&answer).expect("answer file")).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn pmhost status");
    assert!(ProcessWaiter::new(child.id() as i32).wait(LONG), "status did not finish");
    let out = child.wait_with_output().expect("status output");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&answer).expect("answer")).expect("status json");
    assert_eq!(status["tasks"][0]["workers"].as_array().map(Vec::len), Some(1024));
    let mut stop = sb.pmhost(["stop", "--name", &sb.name]);
    let stop = stop.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pmhost stop");
    assert!(ProcessWaiter::new(stop.id() as i32).wait(LONG), "stop did not finish");
    let out = stop.wait_with_output().expect("stop output");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
}
