//! The spawn path: how fast a slot turns over from one worker to the next, how many workers two slots get
//! through a second (and what each costs the master), how soon the first `kill -9` of a healthy worker is
//! replaced with default settings, a host of 1024 workers, and a host of 64 tasks of 16 workers.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Bench;
use crate::clock::{mono_ns, ms, sleep_window};
use crate::config::RHYTHM;
use crate::markers;
use crate::procfs;
use crate::report::{Check, Figure, Unit};
use crate::sandbox::{Mode, Sandbox, StartSpec};

/// Slots of the churn figures (the target is stated for 2).
const CHURN_SLOTS: u32 = 2;

/// One churn run: slot turnovers (ms), workers per second, master CPU per spawn (µs), and the spawn latency
/// pmhost measured (median, p99; ms).
struct Churn {
    turnovers: Vec<f64>,
    workers_per_s: f64,
    master_us_per_spawn: f64,
    spawn_latency: (f64, f64),
}

/// Every figure of the group.
pub fn measure(bench: &Bench<'_>) -> Result<Vec<Figure>> {
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for run in 1..=bench.config.runs {
        bench.progress(&format!("spawn: one slot turning over, run {run}/{}", bench.config.runs));
        one.push(churn(bench, 1)?);
        bench.progress(&format!("spawn: churn of {CHURN_SLOTS} slots, run {run}/{}", bench.config.runs));
        two.push(churn(bench, CHURN_SLOTS)?);
    }
    let window = bench.config.rate_window.as_millis();
    let latency_method = format!(
        "one slot, `--execute-times 1 --execute-usleep 0` (every worker makes one call, so the slot asks for a \
         new worker as soon as the last one ends), over a {window} ms window per run: pmhost's own measure of each \
         spawn (`spawn_latency` in `pmhost status --json`: the master writes the time of its request into the \
         worker's scoreboard cell, the worker the start of its first `work` call; `CLOCK_MONOTONIC`), median and \
         p99 over the last 1 024 workers as the window ends; one sample per run. The same measure during the \
         {CHURN_SLOTS}-slot churn is the next row: there two slots' workers, their zygote and the master share the \
         two cores, so a request often waits for a core."
    );
    let churn_method = format!(
        "{CHURN_SLOTS} slots, `--execute-times 1 --execute-usleep 0`, the bench plugin writing one marker per worker \
         (its only call); over a {window} ms window per run: a slot's turnover = one worker's `work` marker → the \
         next worker's in the same slot (plugin clock: the old worker's return, exit and reaping, then the spawn \
         above), one sample per run (median, p99 of that run); workers/s = new workers' markers in the window / \
         window; master CPU = utime+stime of the master over the window (10 ms ticks) / workers started in it."
    );
    let mut figures = vec![
        Figure::new(
            "spawn: latency",
            "spawn: request → first `work`, one slot turning over, median",
            Unit::Ms,
            one.iter().map(|r| r.spawn_latency.0).collect(),
        )
        .target("≤ 0.3 ms", Check::MedianAtMost(0.3))
        .method(latency_method),
        Figure::new(
            "spawn: latency",
            "spawn: request → first `work`, one slot, p99",
            Unit::Ms,
            one.iter().map(|r| r.spawn_latency.1).collect(),
        ),
        Figure::new(
            "spawn: latency",
            &format!("spawn: request → first `work` during the {CHURN_SLOTS}-slot churn, median"),
            Unit::Ms,
            two.iter().map(|r| r.spawn_latency.0).collect(),
        ),
        Figure::new(
            "spawn: churn",
            "spawn: slot turnover (worker → next worker's first `work`), median",
            Unit::Ms,
            two.iter().map(|r| percentile(&r.turnovers, 50.0)).collect(),
        )
        .method(churn_method),
        Figure::new(
            "spawn: churn",
            "spawn: slot turnover, p99",
            Unit::Ms,
            two.iter().map(|r| percentile(&r.turnovers, 99.0)).collect(),
        ),
        Figure::new(
            "spawn: churn",
            &format!("churn: workers/s, {CHURN_SLOTS} slots"),
            Unit::PerSecond,
            two.iter().map(|r| r.workers_per_s).collect(),
        )
        .target("≥ 5000 /s", Check::MedianAtLeast(5000.0)),
        Figure::new(
            "spawn: churn",
            "churn: master CPU per spawn",
            Unit::Us,
            two.iter().map(|r| r.master_us_per_spawn).collect(),
        ),
    ];
    figures.push(respawn_default(bench)?);
    figures.extend(many(bench)?);
    figures.extend(many_tasks(bench)?);
    Ok(figures)
}

/// The `p`th percentile (nearest rank) of `samples`; NaN for none.
fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn churn(bench: &Bench<'_>, slots: u32) -> Result<Churn> {
    let sb = Sandbox::new(bench.artifacts, "churn")?;
    let mut spec = StartSpec::new(slots, "0", Mode::Marker { first_only: true });
    spec.execute_times = 1;
    sb.start(&spec)?;
    let master = sb.master_pid()?;
    // Settle, then count over the window.
    sleep_window(Duration::from_millis(300))?;
    let (from, ticks_before) = (mono_ns(), procfs::cpu_ticks(master)?);
    sleep_window(bench.config.rate_window)?;
    let (to, ticks_after) = (mono_ns(), procfs::cpu_ticks(master)?);
    let latency = sb.query_status()?.tasks.first().and_then(|t| t.spawn_latency);
    let marks: Vec<markers::Mark> = markers::read(&sb.marker_file()).into_iter().filter(|m| m.is_call()).collect();
    let mut turnovers = Vec::new();
    for slot in 0..slots {
        let mut times: Vec<u64> = marks.iter().filter(|m| m.slot == slot).map(|m| m.ns).collect();
        times.sort_unstable();
        turnovers.extend(times.windows(2).filter(|w| w[0] >= from && w[1] <= to).map(|w| ms(w[1] - w[0])));
    }
    let started = marks.iter().filter(|m| m.ns >= from && m.ns <= to).count().max(1);
    let window_s = (to - from) as f64 / 1e9;
    let tick_us = 1e6 / procfs::ticks_per_second() as f64;
    // Workers come and go: stop through the CLI alone (`Sandbox::stop` watches a fixed set of pids).
    sb.run(["stop", "--name", &sb.name])?;
    Ok(Churn {
        turnovers,
        workers_per_s: started as f64 / window_s,
        master_us_per_spawn: (ticks_after - ticks_before) as f64 * tick_us / started as f64,
        spawn_latency: latency.map_or((f64::NAN, f64::NAN), |l| (l.median_ms, l.p99_ms)),
    })
}

/// `kill -9` of each worker once (the first crash of a healthy slot), with no backoff flag.
fn respawn_default(bench: &Bench<'_>) -> Result<Figure> {
    let workers = bench.config.kills as u32;
    bench.progress(&format!("spawn: first kill -9 of each of {workers} workers, default settings"));
    let sb = Sandbox::new(bench.artifacts, "firstkill")?;
    sb.start(&StartSpec::new(workers, RHYTHM, Mode::Marker { first_only: true }))?;
    let watch = sb.watch()?;
    let deadline = Duration::from_secs(30);
    let firsts = watch.wait_for("the first call of every worker", deadline, || {
        let firsts = markers::first_calls(&markers::read(&sb.marker_file()), 1);
        (firsts.len() == workers as usize).then_some(firsts)
    })?;
    let mut samples = Vec::new();
    for (slot, first) in firsts {
        let killed_at = mono_ns();
        kill(Pid::from_raw(first.pid), Signal::SIGKILL).with_context(|| format!("kill -9 {}", first.pid))?;
        let replacement = watch.wait_for(&format!("a replacement in slot {slot}"), deadline, || {
            markers::read(&sb.marker_file())
                .into_iter()
                .find(|m| m.slot == slot && m.is_call() && m.pid != first.pid && m.ns > killed_at)
        })?;
        samples.push(ms(replacement.ns - killed_at));
    }
    sb.stop()?;
    Ok(Figure::new(
        "respawn: default settings",
        "respawn, default settings: first kill -9 → replacement's first `work`",
        Unit::Ms,
        samples,
    )
    .target("median ≤ 2 ms", Check::MedianAtMost(2.0))
    .method(format!(
        "as **respawn**, but with the default crash backoff and each of {workers} workers killed once (the first \
             crash of a healthy slot, which is replaced at once; backoff starts at the second crash in a row)."
    )))
}

/// A host of `many_workers` (1024) workers: start, `status`, master memory, restart, stop.
fn many(bench: &Bench<'_>) -> Result<Vec<Figure>> {
    let many = bench.config.many_workers;
    bench.progress(&format!("spawn: a host of {many} workers"));
    let sb = Sandbox::new(bench.artifacts, "many")?;
    let watch = sb.watch()?;
    let start = super::lifecycle::start_host(&sb, &watch, many)?;
    let mut status = Vec::new();
    for _ in 0..bench.config.status_calls {
        status.push(super::lifecycle::status_call(&sb, many)?);
    }
    let master = sb.master_pid()?;
    let rss = procfs::rss_bytes(master)? as f64 / (1024.0 * 1024.0);
    let pss = procfs::pss_bytes(master)? as f64 / (1024.0 * 1024.0);
    let (issued, gone) = sb.stop()?;
    drop(watch);
    bench.progress(&format!("spawn: a rolling restart of {many} workers"));
    let restart = super::restart::restart_once(bench, many)?;
    let restart_limit = 1500.0 + restart.slowest_init_ms;
    let method = format!(
        "one host of {many} workers (`--execute-usleep 100ms`): start and status as **start** and **status**; master \
         memory from /proc/PID/status (VmRSS) and smaps_rollup (Pss) after the status calls; stop as **stop**; \
         restart as **restart: every slot on the new build**, on its own host of {many} workers."
    );
    Ok(vec![
        Figure::new("many workers", &format!("start, {many} workers"), Unit::Ms, vec![start])
            .target("≤ 400 ms", Check::MedianAtMost(400.0))
            .method(method),
        Figure::new("many workers", &format!("`pmhost status --json`, {many} workers"), Unit::Ms, status)
            .target("≤ 20 ms", Check::MedianAtMost(20.0)),
        Figure::new(
            "many workers",
            &format!("restart, {many} workers: every slot on the new generation"),
            Unit::Ms,
            vec![restart.all_new_ms],
        )
        .target(format!("≤ 1.5 s + slowest init = {restart_limit:.0} ms"), Check::MedianAtMost(restart_limit)),
        Figure::new("many workers", &format!("stop, {many} workers (idle)"), Unit::Ms, vec![ms(gone - issued)])
            .target("≤ 300 ms", Check::MedianAtMost(300.0)),
        Figure::new("many workers", &format!("memory: master RSS, {many} workers"), Unit::MiB, vec![rss]),
        Figure::new("many workers", &format!("memory: master PSS, {many} workers"), Unit::MiB, vec![pss])
            .target("≤ 2 MiB", Check::MedianAtMost(2.0)),
    ])
}

/// Writes the config of a host of `tasks` tasks of `per_task` workers of the bench plugin, each task writing its
/// markers to its own file (`marks-NN`: slots repeat across tasks); returns its path.
fn write_many_tasks_config(sb: &Sandbox, plugin: &std::path::Path, tasks: u32, per_task: u32) -> Result<String> {
    let mut text = format!("[host]\nname = \"{}\"\n\n[log]\nenabled = false\nlevel = \"warn\"\n", sb.name);
    for task in 0..tasks {
        let marks = sb.path(&format!("marks-{task:02}"));
        text.push_str(&format!(
            "\n[[task]]\nname = \"job{task:02}\"\nplugin = \"{}\"\nworkers = {per_task}\nexecute_times = 0\n\
             execute_usleep = \"{RHYTHM}\"\n[task.config]\nmode = \"marker\"\nmarker_file = \"{}\"\n\
             first_only = true\n",
            plugin.display(),
            marks.display()
        ));
    }
    let path = sb.path("pmhost.toml");
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path.to_str().context("utf-8 path")?.to_owned())
}

/// The first `work` marker of each (task, slot) of `generation`, over every task's marker file; `None` until
/// every slot has one.
fn first_calls_of_tasks(sb: &Sandbox, tasks: u32, per_task: u32, generation: u32) -> Option<Vec<u64>> {
    let mut firsts = Vec::new();
    for task in 0..tasks {
        let marks = markers::read(&sb.path(&format!("marks-{task:02}")));
        let calls = markers::first_calls(&marks, generation);
        if calls.len() != per_task as usize {
            return None;
        }
        firsts.extend(calls.values().map(|m| m.ns));
    }
    Some(firsts)
}

/// A host of 64 tasks of 16 workers from a config file: start, `status`, a rolling restart of every task, stop.
fn many_tasks(bench: &Bench<'_>) -> Result<Vec<Figure>> {
    let (tasks, per_task) = (bench.config.many_tasks, bench.config.many_task_workers);
    bench.progress(&format!("spawn: a host of {tasks} tasks of {per_task} workers"));
    let sb = Sandbox::new(bench.artifacts, "tasks")?;
    let plugin = sb.path("libjob.so");
    std::fs::copy(&bench.artifacts.plugin, &plugin).context("copy the bench plugin")?;
    let config = write_many_tasks_config(&sb, &plugin, tasks, per_task)?;
    let watch = sb.watch()?;
    let deadline = Duration::from_secs(60) + Duration::from_millis(100) * tasks * per_task;
    let issued = mono_ns();
    sb.run(["start", "-d", "--config", &config])?;
    let firsts = watch.wait_for("the first call of every worker of every task", deadline, || {
        first_calls_of_tasks(&sb, tasks, per_task, 1)
    })?;
    let start = ms(firsts.iter().copied().max().unwrap_or(issued).saturating_sub(issued));
    let mut status = Vec::new();
    for _ in 0..bench.config.status_calls {
        status.push(super::lifecycle::status_call(&sb, tasks * per_task)?);
    }
    // The same build again, re-read from the file: every slot of every task moves to generation 2.
    let issued = mono_ns();
    sb.run(["restart", "--name", &sb.name])?;
    let firsts = watch.wait_for("the first call of every new-generation worker", deadline, || {
        first_calls_of_tasks(&sb, tasks, per_task, 2)
    })?;
    let restart = ms(firsts.iter().copied().max().unwrap_or(issued).saturating_sub(issued));
    let (stop_issued, gone) = sb.stop()?;
    drop(watch);
    let workers = tasks * per_task;
    let method = format!(
        "one host of {tasks} `[[task]]`s of {per_task} workers each from a config file (`--execute-usleep 100ms`, \
         each task its own marker file): start as **start** (to the last first call of any task), status as \
         **status**, restart as **restart: every slot on the new build** (`pmhost restart` re-reads the file: every \
         slot of every task moves to the next generation, default surge), stop as **stop**."
    );
    Ok(vec![
        Figure::new("many tasks", &format!("start, {tasks} tasks × {per_task} workers"), Unit::Ms, vec![start])
            .target("≤ 400 ms (as 1024 workers)", Check::MedianAtMost(400.0))
            .method(method),
        Figure::new(
            "many tasks",
            &format!("`pmhost status --json`, {tasks} tasks × {per_task} workers"),
            Unit::Ms,
            status,
        )
        .target("≤ 20 ms (as 1024 workers)", Check::MedianAtMost(20.0)),
        Figure::new(
            "many tasks",
            &format!("restart, {tasks} tasks × {per_task} workers: every slot on the new generation"),
            Unit::Ms,
            vec![restart],
        )
        .target(format!("≤ 1.5 s ({workers} slots, as 1024 workers)"), Check::MedianAtMost(1500.0)),
        Figure::new(
            "many tasks",
            &format!("stop, {tasks} tasks × {per_task} workers (idle)"),
            Unit::Ms,
            vec![ms(gone - stop_issued)],
        )
        .target("≤ 300 ms (as 1024 workers)", Check::MedianAtMost(300.0)),
    ])
}
