//! `{status_root}/{name}/metrics.prom`: the status in Prometheus text format, for node_exporter's textfile
//! collector. Written atomically with every status snapshot (so at least every check tick).

use std::fmt::Write as _;

use crate::status::Snapshot;

/// Renders the metrics of a snapshot. `exits` holds, per task, worker exits counted by reason.
pub fn render(snapshot: &Snapshot, exits: &[(String, Vec<(&'static str, u64)>)]) -> String {
    let host = escape(&snapshot.name);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family("pmhost_up", "gauge", "1 while the master runs.");
    family("pmhost_master_rss_bytes", "gauge", "Resident memory of the master.");
    family("pmhost_generation", "gauge", "Newest generation every slot was moved to.");
    family("pmhost_last_restart_ok", "gauge", "1 if the last restart succeeded, 0 if it was rolled back.");
    family("pmhost_workers_wanted", "gauge", "Worker slots per task.");
    family("pmhost_workers_up", "gauge", "Wanted slots served by a worker (in its work loop, or retiring normally).");
    family("pmhost_slots_in_backoff", "gauge", "Slots waiting out a crash backoff.");
    family("pmhost_executions_total", "counter", "Finished work calls per task.");
    family(
        "pmhost_worker_exits_total",
        "counter",
        "Worker exits per task and reason (normal, crash, stopped, killed).",
    );
    family(
        "pmhost_spawn_latency_median_seconds",
        "gauge",
        "From the master's request for a worker to its first work call: median over the task's recent workers.",
    );
    family("pmhost_spawn_latency_p99_seconds", "gauge", "The same spawn latency's 99th percentile.");
    family("pmhost_worker_rss_bytes", "gauge", "Resident memory per worker, as of the last snapshot request or tick.");
    let _ = writeln!(out, "pmhost_up{{host=\"{host}\"}} 1");
    if let Some(rss) = snapshot.master.rss_bytes {
        let _ = writeln!(out, "pmhost_master_rss_bytes{{host=\"{host}\"}} {rss}");
    }
    let _ = writeln!(out, "pmhost_generation{{host=\"{host}\"}} {}", snapshot.generation);
    if let Some(restart) = snapshot.last_restart.as_ref().filter(|r| !r.in_progress) {
        let _ = writeln!(out, "pmhost_last_restart_ok{{host=\"{host}\"}} {}", u8::from(restart.ok));
    }
    for task in &snapshot.tasks {
        let t = escape(&task.name);
        let up = task.served_slots();
        let _ = writeln!(out, "pmhost_workers_wanted{{host=\"{host}\",task=\"{t}\"}} {}", task.workers_wanted);
        let _ = writeln!(out, "pmhost_workers_up{{host=\"{host}\",task=\"{t}\"}} {up}");
        let _ = writeln!(out, "pmhost_slots_in_backoff{{host=\"{host}\",task=\"{t}\"}} {}", task.backoff.len());
        let _ = writeln!(out, "pmhost_executions_total{{host=\"{host}\",task=\"{t}\"}} {}", task.executions_total);
        if let Some((_, counts)) = exits.iter().find(|(name, _)| *name == task.name) {
            for (reason, count) in counts {
                let _ = writeln!(
                    out,
                    "pmhost_worker_exits_total{{host=\"{host}\",task=\"{t}\",reason=\"{reason}\"}} {count}"
                );
            }
        }
        if let Some(spawn) = &task.spawn_latency {
            let _ = writeln!(
                out,
                "pmhost_spawn_latency_median_seconds{{host=\"{host}\",task=\"{t}\"}} {}",
                spawn.median_ms / 1000.0
            );
            let _ = writeln!(
                out,
                "pmhost_spawn_latency_p99_seconds{{host=\"{host}\",task=\"{t}\"}} {}",
                spawn.p99_ms / 1000.0
            );
        }
        for w in &task.workers {
            if let Some(rss) = w.rss_bytes {
                let _ =
                    writeln!(out, "pmhost_worker_rss_bytes{{host=\"{host}\",task=\"{t}\",slot=\"{}\"}} {rss}", w.slot);
            }
        }
    }
    out
}

/// Escapes a label value (names are restricted already; this keeps the format valid whatever they hold).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
