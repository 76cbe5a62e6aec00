//! The cost of the host per `work` call: call rates of one worker with no pause, read from the master's status
//! snapshots (`executions` over the master's own `written_at_mono_ns`), for empty calls and for calls that make
//! one 32-byte `write`, the latter against a plain Rust loop making the same writes in this process.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::Bench;
use crate::clock::{check_interrupted, mono_ns, sleep_window};
use crate::report::{Check, Figure, Unit, spread};
use crate::sandbox::{Mode, Sandbox, StartSpec};

/// The bench plugin's `write` payload, written by the plain loop too.
const PAYLOAD: &[u8; 32] = b"pmhost-bench 32-byte write call\n";

/// Nanoseconds per call of the host's only worker over `window`, from two fresh snapshots.
fn host_ns_per_call(sb: &Sandbox, window: Duration) -> Result<f64> {
    let calls = |snapshot: &pmhost::status::Snapshot| -> Result<(u64, u64)> {
        let worker = snapshot.tasks.first().and_then(|t| t.workers.first()).context("status lists no worker")?;
        Ok((worker.executions, snapshot.written_at_mono_ns))
    };
    let (calls_before, at_before) = calls(&sb.query_status()?)?;
    sleep_window(window)?;
    let (calls_after, at_after) = calls(&sb.query_status()?)?;
    ensure!(calls_after > calls_before, "the worker made no calls in {window:?}");
    Ok((at_after - at_before) as f64 / (calls_after - calls_before) as f64)
}

/// Nanoseconds per `write` of a plain loop over `window`.
fn plain_loop_ns_per_call(path: &Path, window: Duration) -> Result<f64> {
    let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let started = mono_ns();
    let until = started + window.as_nanos() as u64;
    let mut calls: u64 = 0;
    loop {
        // Read the clock once per batch, so the loop is the writes and nothing else (as in the worker).
        for _ in 0..1024 {
            let _ = file.write(PAYLOAD);
        }
        calls += 1024;
        if mono_ns() >= until {
            break;
        }
    }
    let took = mono_ns() - started;
    drop(file);
    let _ = std::fs::remove_file(path);
    check_interrupted()?;
    Ok(took as f64 / calls as f64)
}

/// Both overhead figures and the plain loop's reference.
pub fn measure(bench: &Bench<'_>) -> Result<Vec<Figure>> {
    let window = bench.config.rate_window;
    let runs = bench.config.runs;

    bench.progress(&format!("overhead of an empty call: {runs} windows of {window:?}"));
    let sb = Sandbox::new(bench.artifacts, "empty")?;
    sb.start(&StartSpec::new(1, "0", Mode::Empty))?;
    let mut empty = Vec::new();
    for _ in 0..runs {
        empty.push(host_ns_per_call(&sb, window)?);
    }
    drop(sb);

    let (mut host, mut plain) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        bench.progress(&format!("one 32-byte write per call, host and plain loop: run {run}/{runs}"));
        // A fresh host per run, gone before the plain loop runs, so neither competes with the other.
        let sb = Sandbox::new(bench.artifacts, "write")?;
        sb.start(&StartSpec::new(1, "0", Mode::Write))?;
        host.push(host_ns_per_call(&sb, window)?);
        sb.stop()?;
        let _ = std::fs::remove_file(sb.path("written"));
        plain.push(plain_loop_ns_per_call(&sb.path("plain-written"), window)?);
    }
    let limit = spread(&plain).0 * 1.10;
    let seconds = window.as_secs_f64();
    Ok(vec![
        Figure::new("host overhead", "host overhead per empty `work` call (1 worker)", Unit::NsPerCall, empty)
            .target("≤ 10 ns (≥ 100 M calls/s)", Check::MedianAtMost(10.0))
            .method(format!(
                "1 worker, `--execute-usleep 0`, empty `work`: the window between two `pmhost status --json` \
                 snapshots ({seconds} s apart; the master's `written_at_mono_ns`) divided by the `executions` \
                 gained in it; one host, consecutive windows."
            )),
        Figure::new("32-byte write per call", "`work` = one 32-byte `write` (1 worker)", Unit::NsPerCall, host)
            .target(format!("≤ plain loop + 10 % = {limit:.0} ns"), Check::MedianAtMost(limit))
            .method(format!(
                "as the host overhead, with one `write(2)` of 32 bytes to a file per call; the plain loop makes the \
                 same writes in this process for {seconds} s after each host run (no host running meanwhile)."
            )),
        Figure::new("32-byte write per call", "plain Rust loop, same `write`", Unit::NsPerCall, plain)
            .target("(reference)", Check::None),
    ])
}
