//! Restart to a new build: how long the rollout takes, and whether the work rhythm pauses meanwhile (compared
//! with the longest pause of the same host in steady state just before).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::Bench;
use crate::clock::{mono_ns, ms, sleep_window};
use crate::config::RHYTHM;
use crate::markers::{self, Kind};
use crate::report::{Check, Figure, Unit, spread};
use crate::sandbox::{Mode, Sandbox, StartSpec};

/// Writes a "build" of the bench plugin to `path`: the same library with `build` appended, which the loader
/// ignores and the content hash does not. Written aside and renamed, as a build tool would.
fn write_build(source: &Path, path: &Path, build: u32) -> Result<()> {
    let mut bytes = std::fs::read(source).with_context(|| format!("read {}", source.display()))?;
    bytes.extend_from_slice(format!("pmhost-bench-build-{build}").as_bytes());
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, bytes).with_context(|| format!("write {}", aside.display()))?;
    std::fs::rename(&aside, path).with_context(|| format!("rename onto {}", path.display()))
}

/// One run's results.
pub(crate) struct Run {
    steady_gap_ms: f64,
    restart_gap_ms: f64,
    pub(crate) all_new_ms: f64,
    pub(crate) slowest_init_ms: f64,
    upgrade_gap_ms: f64,
}

/// One fresh host per run: steady state for a window, then `pmhost restart` to a new build.
pub fn measure(bench: &Bench<'_>) -> Result<Vec<Figure>> {
    let workers = bench.config.workers;
    let mut runs = Vec::new();
    for run in 1..=bench.config.runs {
        bench.progress(&format!("restart: run {run}/{}", bench.config.runs));
        runs.push(restart_once(bench, workers)?);
    }
    let steady: Vec<f64> = runs.iter().map(|r| r.steady_gap_ms).collect();
    let (steady_median, _, _) = spread(&steady);
    let slowest_init = runs.iter().map(|r| r.slowest_init_ms).fold(0.0, f64::max);
    let gap_limit = steady_median + 10.0;
    let all_new_limit = 50.0 + slowest_init;
    let window = bench.config.steady_window.as_secs_f64();
    Ok(vec![
        Figure::new("restart: longest work gap", "longest gap between `work` calls, steady state", Unit::Ms, steady)
            .target("(reference for the next row)", Check::None)
            .method(format!(
                "{workers} workers, `--execute-usleep {RHYTHM}`, a `work` marker per call: the longest time between \
                 two consecutive calls by any worker, over {window} s before the restart (steady state) and from \
                 the last call before `pmhost restart` to the first call after every slot runs the new build and \
                 the command returned (restart)."
            )),
        Figure::new(
            "restart: longest work gap",
            "longest gap between `work` calls, during restart",
            Unit::Ms,
            runs.iter().map(|r| r.restart_gap_ms).collect(),
        )
        .target(format!("≤ steady + 10 ms = {gap_limit:.1} ms"), Check::MedianAtMost(gap_limit)),
        Figure::new(
            "upgrade: longest gap between work calls",
            "upgrade: longest gap between `work` calls",
            Unit::Ms,
            runs.iter().map(|r| r.upgrade_gap_ms).collect(),
        )
        .target(format!("≤ steady + 10 ms = {gap_limit:.1} ms"), Check::MedianAtMost(gap_limit))
        .method(
            "after the restart, `pmhost upgrade --binary` the same pmhost: the master re-executes itself in place; \
             the longest time between two consecutive calls by any worker, from the last call before the command \
             to the first call after it returned."
                .to_owned(),
        ),
        Figure::new(
            "restart: every slot on the new build",
            "restart: command → every slot on the new generation",
            Unit::Ms,
            runs.iter().map(|r| r.all_new_ms).collect(),
        )
        .target(
            format!("≤ 50 ms + slowest init ({slowest_init:.2} ms) = {all_new_limit:.1} ms"),
            Check::MedianAtMost(all_new_limit),
        )
        .method(format!(
            "`pmhost restart` issued (bench clock) → the last slot's first `work` marker of the new generation \
             (plugin clock); {workers} workers, default surge (1); slowest init = the longest `init` of a new-\
             generation worker, from its own markers, over all runs."
        )),
    ])
}

pub(crate) fn restart_once(bench: &Bench<'_>, workers: u32) -> Result<Run> {
    let sb = Sandbox::new(bench.artifacts, "restart")?;
    let plugin = sb.path("libjob.so");
    write_build(&bench.artifacts.plugin, &plugin, 1)?;
    sb.start_with(&StartSpec::new(workers, RHYTHM, Mode::Marker { first_only: false }), &plugin)?;
    let watch = sb.watch()?;
    let deadline = Duration::from_secs(30);
    watch.wait_for("the first call of every worker", deadline, || {
        (markers::first_calls(&markers::read(&sb.marker_file()), 1).len() == workers as usize).then_some(())
    })?;
    sleep_window(bench.config.steady_window)?;
    write_build(&bench.artifacts.plugin, &plugin, 2)?;

    let issued = mono_ns();
    sb.run(["restart", "--name", &sb.name])?;
    let returned = mono_ns();
    // Two calls per new worker: the second shows the rhythm went on after the switch.
    let marks = watch.wait_for("two calls by every new-generation worker", deadline, || {
        let marks = markers::read(&sb.marker_file());
        let per_slot = |slot: u32| marks.iter().filter(|m| m.is_call() && m.generation == 2 && m.slot == slot).count();
        (0..workers).all(|slot| per_slot(slot) >= 2).then_some(marks)
    })?;

    let all_new = markers::first_calls(&marks, 2).values().map(|m| m.ns).max().unwrap_or(issued);
    let calls: Vec<u64> = marks.iter().filter(|m| m.is_call()).map(|m| m.ns).collect();
    let steady_from = issued.saturating_sub(bench.config.steady_window.as_nanos() as u64);
    let mut steady: Vec<u64> = calls.iter().copied().filter(|&t| t >= steady_from && t < issued).collect();
    let settled = all_new.max(returned);
    let from = calls.iter().copied().filter(|&t| t < issued).max().unwrap_or(issued);
    let to = calls.iter().copied().filter(|&t| t >= settled).min().unwrap_or(settled);
    let mut during: Vec<u64> = calls.iter().copied().filter(|&t| t >= from && t <= to).collect();
    let slowest_init = marks
        .iter()
        .filter(|m| m.generation == 2)
        .filter_map(|m| match m.kind {
            Kind::Init { start_ns } => Some(m.ns.saturating_sub(start_ns)),
            _ => None,
        })
        .max()
        .unwrap_or(0);

    // Then an upgrade of pmhost itself, in place: the workers must not notice.
    let pmhost = bench.artifacts.pmhost.to_str().context("utf-8 path")?.to_owned();
    let upgrade_issued = mono_ns();
    sb.run(["upgrade", "--name", &sb.name, "--binary", &pmhost])?;
    let upgrade_returned = mono_ns();
    let upgrade_marks = watch.wait_for("two calls by every worker after the upgrade", deadline, || {
        let marks = markers::read(&sb.marker_file());
        let after =
            |slot: u32| marks.iter().filter(|m| m.is_call() && m.slot == slot && m.ns > upgrade_returned).count();
        (0..workers).all(|slot| after(slot) >= 2).then_some(marks)
    })?;
    let upgrade_calls: Vec<u64> = upgrade_marks.iter().filter(|m| m.is_call()).map(|m| m.ns).collect();
    let before = upgrade_calls.iter().copied().filter(|&t| t < upgrade_issued).max().unwrap_or(upgrade_issued);
    let after = upgrade_calls.iter().copied().filter(|&t| t >= upgrade_returned).min().unwrap_or(upgrade_returned);
    let mut upgrade: Vec<u64> = upgrade_calls.iter().copied().filter(|&t| t >= before && t <= after).collect();

    Ok(Run {
        upgrade_gap_ms: ms(markers::longest_gap(&mut upgrade)),
        steady_gap_ms: ms(markers::longest_gap(&mut steady)),
        restart_gap_ms: ms(markers::longest_gap(&mut during)),
        all_new_ms: ms(all_new.saturating_sub(issued)),
        slowest_init_ms: ms(slowest_init),
    })
}
