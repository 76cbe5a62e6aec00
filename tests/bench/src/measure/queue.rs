//! The job pmhost is for: a PostgreSQL queue (examples/pg-queue) on a throwaway cluster. Jobs/s through four
//! pmhost workers against the same plugin build looped by four plain processes (what pmhost costs a real
//! consumer), and the stop of workers idle in `LISTEN` (what the stop descriptor is for).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pmhost_pg_cluster::{PgCluster, server_bin_dir};
use serde_json::json;

use crate::Bench;
use crate::artifacts::{self, QueueArtifacts};
use crate::clock::{check_interrupted, mono_ns, ms, sleep_window};
use crate::report::{Check, Figure, Unit, spread};
use crate::sandbox::{Mode, Sandbox, StartSpec};
use crate::wait::ExitWatch;

/// Consumers on each side of the comparison.
const CONSUMERS: u32 = 4;

/// Re-check interval of conditions only the database shows. Figures never depend on it: rates come from the
/// effects' own timestamps, stop times from pidfds.
const DB_RECHECK: Duration = Duration::from_millis(25);

/// The figures, or why they could not be measured on this machine (a note for the report).
pub fn measure(bench: &Bench<'_>) -> Result<Result<Vec<Figure>, String>> {
    let Some(bin) = server_bin_dir() else {
        return Ok(Err("PostgreSQL server binaries (initdb, pg_ctl, psql) not found: the queue figures were \
                       skipped (apt-get install postgresql, then run again)"
            .to_owned()));
    };
    let queue = artifacts::build_queue(bench.artifacts)?;
    let cluster = PgCluster::start(&bin).context("start a PostgreSQL cluster")?;
    let config = json!({"connection": cluster.connection(), "batch_size": 10, "idle_wait_ms": 600_000}).to_string();
    let (jobs, runs) = (bench.config.queue_jobs, bench.config.runs);

    let (mut host, mut plain) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        bench.progress(&format!("queue: {jobs} jobs through pmhost and through plain processes: run {run}/{runs}"));
        // Alternate which side goes first, so a drift of the machine (caches, other load) favours neither.
        if run % 2 == 1 {
            host.push(drain_with_host(bench, &queue, &cluster, &config, jobs)?);
            plain.push(drain_with_plain_processes(&queue, &cluster, &config, jobs)?);
        } else {
            plain.push(drain_with_plain_processes(&queue, &cluster, &config, jobs)?);
            host.push(drain_with_host(bench, &queue, &cluster, &config, jobs)?);
        }
    }
    let mut stops = Vec::new();
    for run in 1..=runs {
        bench.progress(&format!("queue: stop of workers idle in LISTEN: run {run}/{runs}"));
        let sb = Sandbox::new(bench.artifacts, "pgidle")?;
        sb.start_with(&host_spec(&config), &queue.plugin)?;
        wait_idle(&cluster)?;
        let (issued, gone) = sb.stop()?;
        stops.push(ms(gone - issued));
    }
    let floor = spread(&plain).0 * 0.95;
    Ok(Ok(vec![
        Figure::new("queue throughput", "queue: jobs/s through 4 pmhost workers (pg-queue)", Unit::JobsPerSec, host)
            .target(format!("≥ plain processes − 5 % = {floor:.0} jobs/s"), Check::MedianAtLeast(floor))
            .method(format!(
                "examples/pg-queue (batch 10) on a throwaway PostgreSQL cluster (unix socket, fsync off): {jobs} \
                 jobs inserted at once into an empty queue while the consumers wait in LISTEN; jobs / (last - \
                 first `done_at` of their effects); 4 pmhost workers (`--execute-usleep 0`) and 4 plain \
                 processes looping the same plugin build's `work` (tests/bench/src/plain_consumer.rs), one after \
                 the other in each run, which goes first alternating."
            )),
        Figure::new("queue throughput", "queue: same plugin looped by 4 plain processes", Unit::JobsPerSec, plain)
            .target("(reference)", Check::None),
        Figure::new("queue idle stop", "queue: stop, 4 workers idle in LISTEN", Unit::Ms, stops)
            .target("≤ 100 ms", Check::AllAtMost(100.0))
            .method(
                "`pmhost stop` issued → the master, every worker and the CLI gone; 4 pg-queue workers waiting in \
                 LISTEN on an empty queue (idle limit 10 min), woken by the stop descriptor; stop timeout 10 s.",
            ),
    ]))
}

fn host_spec(config: &str) -> StartSpec {
    let mut spec = StartSpec::new(CONSUMERS, "0", Mode::Empty);
    spec.task_config = Some(config.to_owned());
    spec
}

/// Drains `jobs` with a pmhost host of four workers; returns jobs/s.
fn drain_with_host(
    bench: &Bench<'_>,
    queue: &QueueArtifacts,
    cluster: &PgCluster,
    config: &str,
    jobs: u32,
) -> Result<f64> {
    let sb = Sandbox::new(bench.artifacts, "pgqueue")?;
    // `start -d` returns once every worker's init connected (the first one created the tables).
    sb.start_with(&host_spec(config), &queue.plugin)?;
    wait_idle(cluster)?;
    let rate = drain(cluster, jobs)?;
    sb.stop()?;
    Ok(rate)
}

/// Four plain consumer processes, killed when dropped.
struct PlainConsumers(Vec<Child>);

impl Drop for PlainConsumers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Drains `jobs` with four plain processes running the same plugin; returns jobs/s.
fn drain_with_plain_processes(queue: &QueueArtifacts, cluster: &PgCluster, config: &str, jobs: u32) -> Result<f64> {
    let mut consumers = PlainConsumers(Vec::new());
    for slot in 0..CONSUMERS {
        let mut cmd = Command::new(&queue.plain_consumer);
        cmd.arg(&queue.plugin).arg(config).arg(slot.to_string()).stdin(Stdio::null()).stdout(Stdio::null());
        consumers.0.push(cmd.spawn().with_context(|| format!("spawn {}", queue.plain_consumer.display()))?);
    }
    wait_idle(cluster)?;
    let rate = drain(cluster, jobs)?;
    let pids: Vec<i32> = consumers.0.iter().map(|child| child.id() as i32).collect();
    drop(consumers);
    ExitWatch::new(&pids).wait_all(Duration::from_secs(10))?;
    Ok(rate)
}

/// Waits until the four consumers are connected and idle (in LISTEN on the empty queue).
fn wait_idle(cluster: &PgCluster) -> Result<()> {
    wait_db("the consumers idle in LISTEN", Duration::from_secs(60), || {
        let idle = cluster.number(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pmhost %' AND state = 'idle'",
        )?;
        Ok(idle == i64::from(CONSUMERS))
    })
}

/// Inserts `jobs` into the empty queue and waits for their effects; returns jobs/s by the effects' timestamps.
fn drain(cluster: &PgCluster, jobs: u32) -> Result<f64> {
    // A fresh table each time: the deleted rows of the last drain would slow this one's claims until vacuumed.
    cluster.sql("TRUNCATE jobs, job_effects")?;
    cluster.sql(&format!("INSERT INTO jobs (payload) SELECT 'job number ' || n FROM generate_series(1, {jobs}) n"))?;
    wait_db("the queue drained", Duration::from_secs(600), || {
        Ok(cluster.number("SELECT count(*) FROM job_effects")? >= i64::from(jobs))
    })?;
    let seconds: f64 = cluster
        .sql("SELECT extract(epoch FROM max(done_at) - min(done_at)) FROM job_effects")?
        .parse()
        .context("parse the drain time")?;
    if seconds <= 0.0 {
        bail!("{jobs} jobs drained in one transaction: too few to time");
    }
    Ok(f64::from(jobs) / seconds)
}

/// Waits for a condition only the database shows, re-checking every [`DB_RECHECK`].
fn wait_db(what: &str, deadline: Duration, mut condition: impl FnMut() -> Result<bool>) -> Result<()> {
    let until = mono_ns() + deadline.as_nanos() as u64;
    loop {
        if condition()? {
            return Ok(());
        }
        check_interrupted()?;
        if mono_ns() >= until {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        sleep_window(DB_RECHECK)?;
    }
}
