//! Respawn: `kill -9` of a worker → its replacement's first `work` call, many kills on one host.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Bench;
use crate::clock::{mono_ns, ms};
use crate::config::RHYTHM;
use crate::markers;
use crate::report::{Check, Figure, Unit};
use crate::sandbox::{Mode, Sandbox, StartSpec};

/// Kills one worker at a time, rotating over the slots.
pub fn measure(bench: &Bench<'_>) -> Result<Figure> {
    let workers = bench.config.workers;
    bench.progress(&format!("respawn: {} kills among {workers} workers", bench.config.kills));
    let sb = Sandbox::new(bench.artifacts, "respawn")?;
    let mut spec = StartSpec::new(workers, RHYTHM, Mode::Marker { first_only: true });
    // The crash backoff is a policy (100 ms by default, against crash loops), not the respawn path: switch it
    // off so the figure is the host's own latency.
    spec.extra = vec!["--backoff-initial".to_owned(), "0".to_owned()];
    sb.start(&spec)?;
    let watch = sb.watch()?;
    let deadline = Duration::from_secs(30);
    watch.wait_for("the first call of every worker", deadline, || {
        (markers::first_calls(&markers::read(&sb.marker_file()), 1).len() == workers as usize).then_some(())
    })?;
    let mut samples = Vec::new();
    for kill_number in 0..bench.config.kills {
        let slot = (kill_number % workers as usize) as u32;
        // The slot's current worker is the one whose (only) call marker is the newest.
        let victim = markers::read(&sb.marker_file())
            .into_iter()
            .filter(|m| m.slot == slot && m.is_call())
            .max_by_key(|m| m.ns)
            .context("a call marker of the slot")?
            .pid;
        let killed_at = mono_ns();
        kill(Pid::from_raw(victim), Signal::SIGKILL).with_context(|| format!("kill -9 {victim}"))?;
        let replacement =
            watch.wait_for(&format!("a replacement for worker {victim} in slot {slot}"), deadline, || {
                markers::read(&sb.marker_file())
                    .into_iter()
                    .find(|m| m.slot == slot && m.is_call() && m.pid != victim && m.ns > killed_at)
            })?;
        samples.push(ms(replacement.ns - killed_at));
    }
    Ok(Figure::new("respawn", "respawn: kill -9 → replacement's first `work`", Unit::Ms, samples)
        .target("median ≤ 2 ms, max ≤ 10 ms", Check::MedianAndMaxAtMost(2.0, 10.0))
        .method(format!(
            "`kill(SIGKILL)` of a ready worker (bench clock) → the first `work` marker of a new pid in its slot \
             (plugin clock); {workers} workers, one kill at a time, slots in turn, `--backoff-initial 0` (the \
             default 100 ms crash backoff is policy, not latency)."
        )))
}
