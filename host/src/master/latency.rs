//! Spawn latency: from the master's request for a worker (a zygote's request sent, or its own fork) to the
//! start of that worker's first `work` call — how long a slot serves nothing when a worker is replaced.
//!
//! The master writes the request's time into the worker's scoreboard cell, the worker the start of its first
//! call (one clock read each, no syscall: `CLOCK_MONOTONIC` is read in the vDSO). The master takes the
//! sample when it reaps the worker and keeps the last [`KEPT`] per task; a snapshot adds the live workers' and
//! reports median and p99 (`pmhost status`, `status.json`, `metrics.prom`). The samples are not handed over by
//! an upgrade: the new image starts counting again.

use std::time::Duration;

use crate::status::SpawnLatency;

/// Samples kept per task (4 KiB once full; a task whose workers never end keeps few).
pub(super) const KEPT: usize = 1024;

/// The last [`KEPT`] spawn latencies of a task, in microseconds (a ring once full).
#[derive(Debug, Default)]
pub(super) struct SpawnLatencies {
    micros: Vec<u32>,
    next: usize,
}

impl SpawnLatencies {
    pub(super) fn record(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if self.micros.len() < KEPT {
            self.micros.push(micros);
        } else {
            self.micros[self.next] = micros;
            self.next = (self.next + 1) % KEPT;
        }
    }

    /// Median and p99 of the kept samples and `live` ones (workers still running); `None` without any.
    pub(super) fn summary(&self, live: impl Iterator<Item = Duration>) -> Option<SpawnLatency> {
        let mut all = self.micros.clone();
        all.extend(live.map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX)));
        if all.is_empty() {
            return None;
        }
        all.sort_unstable();
        // Nearest rank.
        let rank = |p: f64| all[((p / 100.0 * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1];
        let ms = |micros: u32| f64::from(micros) / 1000.0;
        Some(SpawnLatency { samples: all.len() as u32, median_ms: ms(rank(50.0)), p99_ms: ms(rank(99.0)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_samples_and_reports_median_and_p99() {
        let mut kept = SpawnLatencies::default();
        assert_eq!(kept.summary(std::iter::empty()), None);
        // 2 000 samples of 1..=2000 µs: only the last 1 024 (977..=2000) are kept.
        for micros in 1..=2000u64 {
            kept.record(Duration::from_micros(micros));
        }
        let summary = kept.summary(std::iter::empty()).unwrap();
        assert_eq!(summary.samples, 1024);
        assert_eq!(summary.median_ms, 1.488);
        assert_eq!(summary.p99_ms, 1.99);
        let with_live = kept.summary([Duration::from_millis(5)].into_iter()).unwrap();
        assert_eq!(with_live.samples, 1025);
        assert_eq!(with_live.p99_ms, 1.991);
    }
}
