//! examples/pg-queue against a real PostgreSQL server (a throwaway cluster per test, see `pg`): workers idle in
//! `LISTEN` are woken by a stop at once, and under crashes, kills, restarts, rollbacks, scaling, a frozen
//! worker, a killed master and a second host on the same queue, every job's effect exists exactly once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::{ProcessWaiter, SOON, Sandbox, describe, fixtures, signal};
use crate::pg::Pg;

/// A host's settings for examples/pg-queue.
struct Host<'a> {
    /// Config file name in the sandbox.
    file: &'a str,
    /// Master name. Master and task names contain the sandbox's name, so its cleanup finds every process.
    name: String,
    task: String,
    workers: u32,
    /// `execute_usleep`: paces each worker.
    usleep: &'a str,
    /// `job_delay_ms`: time each batch takes inside its transaction.
    job_delay_ms: u32,
}

/// Writes a host config running examples/pg-queue against `cluster`; returns its path.
fn write_config(sb: &Sandbox, host: &Host<'_>, cluster: &Pg) -> PathBuf {
    let Host { file, name: host, task, workers, usleep, job_delay_ms } = host;
    let text = format!(
        r#"[host]
name = "{host}"
stop_timeout = "30s"

[[task]]
name = "{task}"
plugin = "{plugin}"
workers = {workers}
execute_times = 0
execute_usleep = "{usleep}"
backoff_initial = "10ms"

[task.config]
connection = "{connection}"
batch_size = 5
idle_wait_ms = 120000
job_delay_ms = {job_delay_ms}
"#,
        plugin = fixtures().pg_queue.display(),
        connection = cluster.connection(),
    );
    let path = sb.path(file);
    std::fs::write(&path, text).expect("write config");
    path
}

/// `count` jobs with three-word payloads, in one statement (the insert trigger sends one NOTIFY).
fn enqueue(cluster: &Pg, count: u32) {
    cluster.sql(&format!("INSERT INTO jobs (payload) SELECT 'job number ' || n FROM generate_series(1, {count}) n"));
}

/// Lines of the run logs (what plugins log) that contain `needle`.
fn run_log_lines(sb: &Sandbox, needle: &str) -> usize {
    sb.log_text("run").lines().filter(|line| line.contains(needle)).count()
}

/// Waits until `workers` workers are ready and idle in their `LISTEN` wait: connected, no transaction open.
fn wait_listening(sb: &Sandbox, cluster: &Pg, workers: usize) -> Vec<i32> {
    sb.wait_for("workers idle in LISTEN", SOON, || {
        let pids: Vec<i32> = sb.ready_workers().into_values().collect();
        let idle = cluster
            .number("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pmhost %' AND state = 'idle'");
        (pids.len() == workers && idle == workers as i64).then_some(pids)
    })
}

/// `pmhost stop` issued → the last worker gone, with the workers idle in `LISTEN`.
fn timed_stop(sb: &Sandbox, workers: &[i32]) -> Duration {
    let waiters: Vec<ProcessWaiter> = workers.iter().map(|pid| ProcessWaiter::new(*pid)).collect();
    let started = Instant::now();
    let mut stop = sb.pmhost(["stop", "--name", &sb.name]).spawn().expect("spawn pmhost stop");
    for waiter in &waiters {
        assert!(waiter.wait(Duration::from_secs(60)), "a worker outlived the stop");
    }
    let took = started.elapsed();
    let status = stop.wait().expect("wait for pmhost stop");
    assert_eq!(status.code(), Some(0), "pmhost stop failed");
    took
}

#[test]
fn workers_idle_in_listen_stop_at_once_and_restart_fast() {
    let Some(cluster) = Pg::start() else { return };
    let sb = Sandbox::new("pg-idle");
    let host = Host {
        file: "pmhost.toml",
        name: sb.name.clone(),
        task: sb.name.clone(),
        workers: 4,
        usleep: "0",
        job_delay_ms: 0,
    };
    let config = write_config(&sb, &host, &cluster);
    let config = config.to_str().expect("utf-8 path");

    // As the README shows it: validate (init connects and creates the schema, in a probe), then start.
    let out = sb.run(["validate", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("init and shutdown succeeded"), "{}", describe(&out));
    assert_eq!(cluster.number("SELECT count(*) FROM pg_trigger WHERE tgname = 'pmhost_jobs_notify'"), 1);

    // The queue works: a job inserted while the workers wait in LISTEN is done (woken by NOTIFY, not a poll:
    // the idle wait is two minutes).
    let out = sb.run(["start", "-d", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    wait_listening(&sb, &cluster, 4);
    enqueue(&cluster, 3);
    sb.wait_for("the jobs done", SOON, || (cluster.number("SELECT count(*) FROM job_effects") == 3).then_some(()));

    // Stops: each worker is in a call waiting on LISTEN, with a 30 s grace. Woken by the stop descriptor, the
    // workers end in milliseconds; unwoken, they would hold the stop for the grace and be killed. Three stops,
    // the best one held to 100 ms (one slow stop on a loaded machine is scheduling, not the host) and every
    // one to well under the grace.
    let mut stops = Vec::new();
    for round in 0..3 {
        if round > 0 {
            let out = sb.run(["start", "-d", "--config", config]);
            assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        }
        let workers = wait_listening(&sb, &cluster, 4);
        stops.push(timed_stop(&sb, &workers));
    }
    eprintln!("stop of 4 LISTEN-idle workers (command issued → last worker gone): {stops:?}");
    let best = stops.iter().min().copied().unwrap_or_default();
    assert!(best < Duration::from_millis(100), "no stop within 100 ms: {stops:?}");
    assert!(stops.iter().all(|took| *took < Duration::from_secs(5)), "a stop waited for the grace: {stops:?}");
    assert_eq!(run_log_lines(&sb, "pg-queue done"), 12, "every worker ran its shutdown (none was killed)");

    // A restart with an empty queue: each old worker, idle in LISTEN, is stopped as soon as its replacement is
    // ready and leaves at once. Unwoken, it would linger for the 30 s grace and then be killed. Measured as
    // restart issued → every old worker gone, beside the same for hello (a plugin that never blocks).
    let restart_of = |sb: &Sandbox, old: &[i32]| {
        let waiters: Vec<ProcessWaiter> = old.iter().map(|pid| ProcessWaiter::new(*pid)).collect();
        let started = Instant::now();
        let out = sb.run(["restart", "--name", &sb.name]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        for (waiter, pid) in waiters.iter().zip(old) {
            assert!(waiter.wait(Duration::from_secs(60)), "old worker {pid} outlived the restart");
        }
        started.elapsed()
    };
    let out = sb.run(["start", "-d", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let old = wait_listening(&sb, &cluster, 4);
    let pg_restart = restart_of(&sb, &old);
    sb.stop();
    assert_eq!(run_log_lines(&sb, "pg-queue done"), 20, "the replaced workers ran their shutdown too");

    let hello_sb = Sandbox::new("pg-idle-hello");
    hello_sb.start_daemon(&fixtures().hello, &["--workers", "4", "--execute-times", "0", "--stop-timeout", "30s"]);
    let old: Vec<i32> = hello_sb.ready_workers().into_values().collect();
    let hello_restart = restart_of(&hello_sb, &old);
    hello_sb.stop();
    eprintln!(
        "restart of 4 workers with an empty queue, until the old ones are gone: pg-queue {pg_restart:?}, hello {hello_restart:?}"
    );
    // The figures differ by what new workers do (pg-queue's debug build is larger to stage and load, and its
    // init connects), not by waiting: an unwoken old worker alone would take the 30 s grace to go.
    assert!(pg_restart < Duration::from_secs(20), "restart took {pg_restart:?} (hello: {hello_restart:?})");
    sb.wait_for("no connection left", SOON, || (cluster.client_connections() == 0).then_some(()));
}

/// A small xorshift generator: which workers get killed differs per run; the seed is printed to replay one.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::env::var("PMHOST_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("chaos seed {seed} (PMHOST_CHAOS_SEED={seed} replays the choices)");
        Dice(seed | 1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        items[(self.0 % items.len() as u64) as usize]
    }
}

/// The chaos run: one queue, two hosts, every fault pmhost promises to survive, and exactly-once effects.
struct Chaos<'a> {
    sb: &'a Sandbox,
    cluster: &'a Pg,
    dice: Dice,
    kills: usize,
}

impl Chaos<'_> {
    fn run_ok(&self, args: &[&str]) {
        let out = self.sb.run(args);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }

    fn effects(&self) -> i64 {
        self.cluster.number("SELECT count(*) FROM job_effects")
    }

    fn queued(&self) -> i64 {
        self.cluster.number("SELECT count(*) FROM jobs")
    }

    /// Waits until host `name` has `count` ready workers, none of them in `gone`.
    fn wait_ready(&self, name: &str, count: usize, gone: &[i32]) -> Vec<i32> {
        self.sb.wait_for(&format!("{count} ready workers of {name}"), SOON, || {
            let pids: Vec<i32> = self.sb.ready_workers_of(name).into_values().collect();
            (pids.len() == count && pids.iter().all(|pid| !gone.contains(pid))).then_some(pids)
        })
    }

    /// kill -9 of a random ready worker of host `name` (which has `count`); waits for its replacement.
    fn kill_worker(&mut self, name: &str, count: usize) {
        let pids = self.wait_ready(name, count, &[]);
        let victim = self.dice.pick(&pids);
        eprintln!("chaos: kill -9 worker {victim} of {name}");
        signal(victim, Signal::SIGKILL);
        self.kills += 1;
        assert!(ProcessWaiter::new(victim).wait(SOON));
        self.wait_ready(name, count, &[victim]);
    }

    /// Waits until `more` further effects were recorded (the queue keeps draining).
    fn wait_progress(&self, more: i64, what: &str) {
        let target = self.effects() + more;
        self.sb.wait_for(what, SOON, || (self.effects() >= target).then_some(()));
    }
}

#[test]
fn every_job_is_done_exactly_once_through_crashes_restarts_and_a_second_host() {
    const JOBS: i64 = 20_000;
    let Some(cluster) = Pg::start() else { return };
    let sb = Sandbox::new("pg-chaos");
    let started = Instant::now();
    // Workers pace themselves so the queue outlives the chaos: a batch of 5 per call, which spends 40 ms inside
    // its transaction (so a kill -9 most likely lands mid-transaction), then 60 ms of pause. The last restart
    // lifts both to finish the drain at full speed.
    let (a_name, b_name) = (sb.name.clone(), format!("{}-b", sb.name));
    let a = Host { file: "a.toml", name: a_name.clone(), task: a_name, workers: 4, usleep: "60ms", job_delay_ms: 40 };
    let b = Host { file: "b.toml", name: b_name.clone(), task: b_name, workers: 2, usleep: "60ms", job_delay_ms: 40 };
    let a_config = write_config(&sb, &a, &cluster);
    let b_config = write_config(&sb, &b, &cluster);
    let a_text = std::fs::read_to_string(&a_config).expect("read config");
    let (a_path, b_path) = (a_config.to_str().expect("utf-8"), b_config.to_str().expect("utf-8"));
    let mut chaos = Chaos { sb: &sb, cluster: &cluster, dice: Dice::new(), kills: 0 };

    chaos.run_ok(&["start", "-d", "--config", a_path]);
    wait_listening(&sb, &cluster, 4);
    enqueue(&cluster, JOBS as u32);
    let (first, last) = (cluster.number("SELECT min(id) FROM jobs"), cluster.number("SELECT max(id) FROM jobs"));
    assert_eq!(last - first + 1, JOBS);
    // A second host (another machine of the fleet) on the same queue, for the whole run.
    chaos.run_ok(&["start", "-d", "--config", b_path]);
    chaos.wait_ready(&b.name, 2, &[]);

    // Rolling restart 1 of 3: the same build, fresh workers.
    chaos.run_ok(&["restart", "--name", &a.name]);
    chaos.kill_worker(&a.name, 4);
    chaos.kill_worker(&a.name, 4);
    chaos.run_ok(&["scale", "--name", &a.name, "8"]);

    // Rolling restart 2 of 3: a build whose init fails is rolled back; the old workers keep consuming.
    let before: Vec<i32> = chaos.wait_ready(&a.name, 8, &[]);
    let broken = format!(
        "[host]\nname = \"{}\"\n\n[[task]]\nname = \"{}\"\nplugin = \"{}\"\nworkers = 8\nexecute_times = 0\n\n\
         [task.config]\ninit = \"fail\"\nmessage = \"schema migration 42 missing\"\n",
        a.name,
        a.task,
        fixtures().faulty.display()
    );
    std::fs::write(&a_config, broken).expect("write the broken config");
    let out = sb.run(["restart", "--name", &a.name]);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("schema migration 42 missing"), "{}", describe(&out));
    std::fs::write(&a_config, &a_text).expect("restore the config");
    assert_eq!(chaos.wait_ready(&a.name, 8, &[]), before, "the rollback kept the old workers");
    chaos.wait_progress(50, "progress after the rollback");

    // A frozen worker (holding its claimed rows, perhaps mid-transaction) stalls nobody else.
    let frozen = chaos.dice.pick(&before);
    eprintln!("chaos: SIGSTOP worker {frozen}");
    signal(frozen, Signal::SIGSTOP);
    chaos.kill_worker(&b.name, 2);
    chaos.wait_progress(100, "progress while a worker is frozen");
    signal(frozen, Signal::SIGCONT);
    chaos.run_ok(&["scale", "--name", &a.name, "2"]);
    chaos.kill_worker(&a.name, 2);
    chaos.kill_worker(&a.name, 2);

    // kill -9 of the master: its workers end (parent-death signal), then a fresh start takes over.
    let master = sb.master_pid();
    eprintln!("chaos: kill -9 master {master}");
    signal(master, Signal::SIGKILL);
    assert!(ProcessWaiter::new(master).wait(SOON));
    chaos.run_ok(&["start", "-d", "--config", a_path]);
    chaos.wait_ready(&a.name, 4, &[]);
    let left = chaos.queued();
    eprintln!("chaos: done after {:?}, {left} jobs still queued", started.elapsed());
    assert!(left > 0, "the queue drained before the chaos ended: the test proved less than it claims");

    // Rolling restart 3 of 3: no pause between calls, to finish the drain.
    let fast = a_text
        .replace("execute_usleep = \"60ms\"", "execute_usleep = \"0\"")
        .replace("job_delay_ms = 40", "job_delay_ms = 0");
    assert_ne!(fast, a_text);
    std::fs::write(&a_config, fast).expect("write the config");
    chaos.run_ok(&["restart", "--name", &a.name]);
    sb.wait_for("the queue drained", Duration::from_secs(120), || (chaos.queued() == 0).then_some(()));
    chaos.run_ok(&["stop", "--name", &b.name]);
    sb.stop();
    assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
    sb.wait_for("no connection left", SOON, || (cluster.client_connections() == 0).then_some(()));

    let effects = chaos.effects();
    let distinct = cluster.number("SELECT count(DISTINCT job_id) FROM job_effects");
    let lost = cluster.number(&format!(
        "SELECT count(*) FROM generate_series({first}::bigint, {last}) id \
         WHERE NOT EXISTS (SELECT 1 FROM job_effects e WHERE e.job_id = id)"
    ));
    let strays =
        cluster.number(&format!("SELECT count(*) FROM job_effects WHERE job_id NOT BETWEEN {first} AND {last}"));
    let rollbacks = cluster.number("SELECT xact_rollback FROM pg_stat_database WHERE datname = 'postgres'");
    let by_b = cluster.number(&format!("SELECT count(*) FROM job_effects WHERE done_by LIKE '{}/%'", b.task));
    eprintln!(
        "chaos result: {JOBS} jobs, {effects} effects, {} duplicates, {lost} lost, {by_b} done by the second \
         host, {} kill -9 of workers, {rollbacks} transactions rolled back, {:?} in all",
        effects - distinct,
        chaos.kills,
        started.elapsed()
    );
    assert_eq!((effects, distinct, lost, strays), (JOBS, JOBS, 0, 0), "effects, distinct jobs, lost, strays");
    assert_eq!(chaos.queued(), 0);
    assert!(by_b > 0, "the second host did no job");
    assert_eq!(chaos.kills, 5);
}
