//! Smoke test: the whole benchmark on the smallest configuration (one run, two workers, one-second windows)
//! produces every figure. Values are not judged here: a debug build on a busy machine proves nothing about them.

use pmhost_bench::{Config, artifacts};

#[test]
fn the_benchmark_produces_every_figure() {
    let artifacts = artifacts::build().expect("build pmhost and the bench plugin");
    let report = pmhost_bench::run(&Config::smoke(), &artifacts).unwrap_or_else(|e| panic!("benchmark failed: {e:#}"));
    let table = report.markdown();
    eprintln!("{table}");

    let names: Vec<&str> = report.figures.iter().map(|f| f.name.as_str()).collect();
    let expected = [
        "start, 2 workers",
        "respawn: kill -9",
        "stop, 2 workers (idle)",
        "stop with a `work` call in flight",
        "longest gap between `work` calls, steady state",
        "longest gap between `work` calls, during restart",
        "upgrade: longest gap between `work` calls",
        "restart: command → every slot on the new generation",
        "`pmhost status --json`, 2 workers",
        "master idle: CPU ticks",
        "master idle: wake-ups",
        "master idle, --watch on: wake-ups",
        "memory: master PSS",
        "memory: one worker PSS",
        "memory: master + 2 workers PSS",
        "host overhead per empty `work` call",
        "`work` = one 32-byte `write`",
        "plain Rust loop, same `write`",
        "spawn: request → first `work`, one slot turning over",
        "spawn: request → first `work`, one slot, p99",
        "spawn: request → first `work` during the",
        "spawn: slot turnover (worker",
        "spawn: slot turnover, p99",
        "churn: workers/s",
        "churn: master CPU per spawn",
        "respawn, default settings",
        "start, 4 workers",
        "`pmhost status --json`, 4 workers",
        "restart, 4 workers",
        "stop, 4 workers (idle)",
        "memory: master RSS, 4 workers",
        "memory: master PSS, 4 workers",
        "start, 2 tasks × 2 workers",
        "`pmhost status --json`, 2 tasks × 2 workers",
        "restart, 2 tasks × 2 workers",
        "stop, 2 tasks × 2 workers (idle)",
    ];
    // The queue figures need PostgreSQL; without it the report says they were skipped.
    let queue = [
        "queue: jobs/s through 4 pmhost workers",
        "queue: same plugin looped by 4 plain processes",
        "queue: stop, 4 workers idle in LISTEN",
    ];
    let expected: Vec<&str> = if pmhost_pg_cluster::server_bin_dir().is_some() {
        expected.iter().chain(&queue).copied().collect()
    } else {
        assert!(report.notes.iter().any(|note| note.contains("PostgreSQL")), "no skip note in:\n{table}");
        expected.to_vec()
    };
    for prefix in &expected {
        assert!(names.iter().any(|name| name.starts_with(*prefix)), "no figure {prefix:?} in:\n{table}");
    }
    assert_eq!(report.figures.len(), expected.len(), "unexpected figures in:\n{table}");
    for figure in &report.figures {
        assert_eq!(figure.samples.len(), 1, "{} should have one run:\n{table}", figure.name);
        assert!(figure.samples.iter().all(|s| s.is_finite() && *s >= 0.0), "{}: {:?}", figure.name, figure.samples);
        assert!(!figure.target.is_empty(), "{} has no target", figure.name);
    }
    for family in report.figures.iter().map(|f| &f.family) {
        let method = report.figures.iter().find(|f| &f.family == family).map(|f| f.method.as_str());
        assert!(method.is_some_and(|m| !m.is_empty()), "{family} has no method line");
    }
    let json = serde_json::to_value(&report).expect("the report serializes");
    assert_eq!(json["figures"].as_array().map(Vec::len), Some(expected.len()));
}
