//! Stop with work in flight: every `work` call that had begun when the stop arrived must finish.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;

use crate::Bench;
use crate::markers::{self, Kind};
use crate::report::{Check, Figure};
use crate::sandbox::{Mode, Sandbox, StartSpec};

/// One fresh host per run, every worker inside a long call when `pmhost stop` is issued.
pub fn measure(bench: &Bench<'_>) -> Result<Figure> {
    let workers = bench.config.workers;
    let work_ms = bench.config.slow_call.as_millis() as u64;
    let mut pairs = Vec::new();
    for run in 1..=bench.config.runs {
        bench.progress(&format!("stop with work in flight: run {run}/{}", bench.config.runs));
        let sb = Sandbox::new(bench.artifacts, "inflight")?;
        // No pause between calls: a worker is always inside a call, so the stop always finds calls in flight.
        sb.start(&StartSpec::new(workers, "0", Mode::Slow { work_ms }))?;
        let watch = sb.watch()?;
        watch.wait_for("every worker inside a call", Duration::from_secs(30), || {
            let busy: BTreeSet<u32> = markers::read(&sb.marker_file())
                .iter()
                .filter(|m| matches!(m.kind, Kind::Begin { .. }))
                .map(|m| m.slot)
                .collect();
            (busy.len() == workers as usize).then_some(())
        })?;
        let (issued, _gone) = sb.stop()?;
        let marks = markers::read(&sb.marker_file());
        let ended_at =
            |pid: i32, call: u64| marks.iter().find(|m| m.pid == pid && m.kind == Kind::End { call }).map(|m| m.ns);
        // In flight: begun and not ended when the stop was issued (including calls a worker began between the
        // command and the signal's arrival: the host must let those finish too).
        let (mut in_flight, mut finished) = (0, 0);
        for mark in &marks {
            let Kind::Begin { call } = mark.kind else { continue };
            match ended_at(mark.pid, call) {
                Some(end) if end < issued => {}
                Some(_) => {
                    in_flight += 1;
                    finished += 1;
                }
                None => in_flight += 1,
            }
        }
        pairs.push((finished, in_flight));
    }
    Ok(Figure::ratio("stop with work in flight", "stop with a `work` call in flight: finished/in flight", pairs)
        .target("every in-flight call finishes", Check::AllOfThem)
        .method(format!(
            "{workers} workers in {work_ms} ms calls that ignore stop requests, no pause; `pmhost stop` issued once \
             every worker is in a call; in flight = `begin` markers without an `end` before the command, finished \
             = those with an `end` marker once every process exited."
        )))
}
