//! Start, status and stop of a whole host, one set of rows per worker count: each run starts a fresh host, asks
//! for its status a few times, and stops it with idle workers.

use std::time::Duration;

use anyhow::{Result, ensure};
use pmhost::status::Snapshot;

use crate::Bench;
use crate::clock::{mono_ns, ms};
use crate::config::RHYTHM;
use crate::markers;
use crate::report::{Check, Figure, Unit};
use crate::sandbox::{Mode, Sandbox, StartSpec};
use crate::wait::DirWatch;

/// The rows of this group, kept apart because the table interleaves them with other figures.
pub struct Lifecycle {
    pub start: Vec<Figure>,
    pub stop: Vec<Figure>,
    pub status: Vec<Figure>,
}

/// A target stated at 8 and 256 workers, read at `workers`: flat below 8, linear between and beyond.
fn target_at(workers: u32, at_8: f64, at_256: f64) -> f64 {
    if workers <= 8 { at_8 } else { at_8 + (at_256 - at_8) * f64::from(workers - 8) / 248.0 }
}

fn target_text(workers: u32, limit: f64, rule: &str) -> String {
    match workers {
        8 | 256 => format!("≤ {limit:.0} ms"),
        _ => format!("≤ {limit:.0} ms ({rule})"),
    }
}

/// "1 worker", "8 workers".
pub fn count(workers: u32) -> String {
    if workers == 1 { "1 worker".to_owned() } else { format!("{workers} workers") }
}

/// Runs every worker count of the config.
pub fn measure(bench: &Bench<'_>) -> Result<Lifecycle> {
    let mut rows = Lifecycle { start: Vec::new(), stop: Vec::new(), status: Vec::new() };
    for &workers in &bench.config.worker_counts {
        let (mut start, mut status, mut stop) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=bench.config.runs {
            bench.progress(&format!("start/status/stop, {}: run {run}/{}", count(workers), bench.config.runs));
            let sb = Sandbox::new(bench.artifacts, &format!("life{workers}"))?;
            // Kept until the host is gone: closing an inotify descriptor waits for the kernel's mark reaper
            // (milliseconds), which must not overlap the status and stop measurements.
            let watch = sb.watch()?;
            start.push(start_host(&sb, &watch, workers)?);
            for _ in 0..bench.config.status_calls {
                status.push(status_call(&sb, workers)?);
            }
            let (issued, gone) = sb.stop()?;
            stop.push(ms(gone - issued));
            drop(watch);
        }

        // The start target is linear in workers from 20 ms at 8 (the stated slope), so a superlinear start misses.
        let limit = 20.0 * (f64::from(workers) / 8.0).max(1.0);
        let start_rule = if workers < 8 { "as at 8 workers" } else { "linear: 20 ms × workers/8" };
        rows.start.push(
            Figure::new("start", &format!("start, {}", count(workers)), Unit::Ms, start)
                .target(target_text(workers, limit, start_rule), Check::MedianAtMost(limit))
                .method(
                    "`pmhost start -d` issued (bench clock) → the last worker's first `work` marker (plugin clock); \
                     a fresh host per run, `--execute-usleep 100ms`.",
                ),
        );
        let limit = target_at(workers, 20.0, 100.0);
        rows.stop.push(
            Figure::new("stop", &format!("stop, {} (idle)", count(workers)), Unit::Ms, stop)
                .target(
                    target_text(workers, limit, "interpolated: 20 ms at 8, 100 ms at 256"),
                    Check::MedianAtMost(limit),
                )
                .method(
                    "`pmhost stop` issued → the master, every worker and the CLI itself have exited (a pidfd per \
                     process, polled); workers idle in their 100 ms pause.",
                ),
        );
        let limit = target_at(workers, 10.0, 50.0);
        rows.status.push(
            Figure::new("status", &format!("`pmhost status --json`, {}", count(workers)), Unit::Ms, status)
                .target(
                    target_text(workers, limit, "interpolated: 10 ms at 8, 50 ms at 256"),
                    Check::MedianAtMost(limit),
                )
                .method(
                    "wall time of the whole `pmhost status --json` process (spawn → exit), a fresh snapshot each \
                     time, several calls per host.",
                ),
        );
    }
    Ok(rows)
}

/// Starts `workers` workers; returns the milliseconds from the command to every worker's first call.
pub(crate) fn start_host(sb: &Sandbox, watch: &DirWatch, workers: u32) -> Result<f64> {
    let issued = mono_ns();
    sb.start(&StartSpec::new(workers, RHYTHM, Mode::Marker { first_only: true }))?;
    let deadline = Duration::from_secs(30) + Duration::from_millis(100) * workers;
    let firsts = watch.wait_for("the first call of every worker", deadline, || {
        let firsts = markers::first_calls(&markers::read(&sb.marker_file()), 1);
        (firsts.len() == workers as usize).then_some(firsts)
    })?;
    let last = firsts.values().map(|m| m.ns).max().unwrap_or(issued);
    Ok(ms(last.saturating_sub(issued)))
}

/// One `pmhost status --json`; returns its wall time in milliseconds after checking it lists every worker.
pub(crate) fn status_call(sb: &Sandbox, workers: u32) -> Result<f64> {
    let issued = mono_ns();
    let out = sb.run(["status", "--name", &sb.name, "--json"])?;
    let took = ms(mono_ns() - issued);
    let snapshot: Snapshot = serde_json::from_slice(&out.stdout)?;
    let listed = snapshot.tasks.iter().map(|t| t.workers.len()).sum::<usize>();
    ensure!(listed == workers as usize, "status listed {listed} workers, expected {workers}");
    Ok(took)
}
