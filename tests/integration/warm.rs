//! Warm spawns: workers forked by their build's zygote are the master's own children and behave like workers
//! the master forked itself; a zygote is a cache that can die or be replaced without costing a slot.

use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::{
    Foreground, ProcessWaiter, SOON, Sandbox, cmdline, fixtures, process_state, processes_mentioning, read_markers,
    signal, stderr_of,
};

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`.
pub(crate) fn stat_field(pid: i32, n: usize) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(n - 3).unwrap().parse().unwrap()
}

/// The pids of the workers the master logged as spawned warm (a log line's `pid=`).
fn warm_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter(|l| l.contains("worker spawned warm"))
        .filter_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

pub(crate) fn zygotes(sb: &Sandbox) -> Vec<i32> {
    processes_mentioning(&format!(":Zygote:{}", sb.name))
}

#[test]
fn a_warm_worker_is_the_masters_child_with_its_title_group_and_signals() {
    let mut sb = Sandbox::new("warm");
    let fg = sb.start_faulty(
        &json!({}),
        ["--workers", "2", "--execute-times", "0", "--execute-usleep", "50ms", "--log-level", "debug"],
    );
    let master = fg.child.id() as i32;
    // A build's zygote is started by its first spawn; until it has loaded its plugin, workers are forked cold.
    // Kill a worker at a time until a replacement comes back warm.
    let mut killed = Vec::new();
    let warm = sb.wait_for("a warm replacement", SOON, || {
        let ready = sb.ready_workers();
        let warm = warm_pids(&stderr_of(&fg));
        if let Some(pid) = warm.into_iter().find(|pid| ready.values().any(|r| r == pid)) {
            return Some(pid);
        }
        if let Some(pid) = ready.values().copied().find(|pid| !killed.contains(pid))
            && ready.len() == 2
        {
            signal(pid, Signal::SIGKILL);
            killed.push(pid);
        }
        None
    });
    assert_eq!(stat_field(warm, 4), i64::from(master), "parent");
    assert_eq!(stat_field(warm, 5), i64::from(warm), "process group");
    assert_eq!(cmdline(warm).trim_end_matches(['\0', ' ']), format!("process_m:Worker:{}", sb.name));
    let status = std::fs::read_to_string(format!("/proc/{warm}/status")).unwrap();
    let blocked = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap().trim();
    assert_eq!(u64::from_str_radix(blocked, 16).unwrap(), 0, "the master's signal mask leaked: {status}");
    // It stops like any worker: asked with TERM by the master, reaped by it.
    sb.stop();
    assert!(ProcessWaiter::new(warm).wait(SOON), "the warm worker outlived the stop");
}

#[test]
fn a_killed_zygote_costs_no_slot_and_is_started_again() {
    let mut sb = Sandbox::new("zygotekill");
    // Every worker makes one call: slots turn over all the time, so spawns keep coming.
    let fg = sb.start_faulty(&json!({}), ["--workers", "2", "--execute-times", "1", "--execute-usleep", "20ms"]);
    let zygote = sb.wait_for("a zygote", SOON, || zygotes(&sb).first().copied());
    signal(zygote, Signal::SIGKILL);
    assert!(ProcessWaiter::new(zygote).wait(SOON) || crate::harness::is_zombie(zygote), "the zygote lived on");
    let again = sb.wait_for("another zygote", SOON, || zygotes(&sb).into_iter().find(|pid| *pid != zygote));
    assert_ne!(again, zygote);
    // Both slots keep turning over, with no crash recorded.
    let before = sb.status().unwrap()["tasks"][0]["executions_total"].as_u64().unwrap();
    sb.wait_for("more workers done", SOON, || {
        let s = sb.status()?;
        let workers = s["tasks"][0]["workers"].as_array()?.len();
        (s["tasks"][0]["executions_total"].as_u64()? >= before + 10 && workers == 2).then_some(())
    });
    let log = stderr_of(&fg);
    assert!(!log.contains("worker crashed"), "{log}");
    sb.stop();
    assert!(zygotes(&sb).is_empty(), "a zygote outlived the stop");
}

#[test]
fn a_stopped_zygote_stalls_no_supervision_and_costs_no_slot() {
    let mut sb = Sandbox::new("zygotestop");
    // Every worker makes one call: slots turn over all the time, so the zygote is asked for workers constantly.
    let fg = sb.start_faulty(
        &json!({}),
        ["--workers", "2", "--execute-times", "1", "--execute-usleep", "20ms", "--log-level", "debug"],
    );
    let zygote = sb.wait_for("a zygote serving spawns", SOON, || {
        let zygote = zygotes(&sb).first().copied()?;
        stderr_of(&fg).contains("worker spawned warm").then_some(zygote)
    });
    signal(zygote, Signal::SIGSTOP);
    // The slots whose workers retire now wait for the stopped zygote...
    sb.wait_for("a slot waiting for the stopped zygote", SOON, || (sb.workers().len() < 2).then_some(()));
    // ...and the master goes on meanwhile: it answers a status request while the zygote is still stopped (it
    // gives up on a zygote only after a second; a master that waited for it would answer after the kill).
    sb.run(["status", "--name", &sb.name, "--json"]);
    assert_eq!(process_state(zygote), Some('T'), "the master answered only once the stopped zygote was gone");
    // The stopped zygote is given up on: killed, and a new one serves the slots.
    assert!(ProcessWaiter::new(zygote).wait(SOON) || crate::harness::is_zombie(zygote), "the stopped zygote lived on");
    sb.wait_for("another zygote", SOON, || zygotes(&sb).into_iter().find(|pid| *pid != zygote));
    // No slot was lost: both keep turning over, and nothing counts as a crash.
    let executions = |sb: &Sandbox| sb.snapshot().map_or(0, |s| s.tasks[0].executions_total);
    let before = executions(&sb);
    sb.wait_for("both slots turning over again", SOON, || {
        (executions(&sb) >= before + 10 && sb.workers().len() == 2).then_some(())
    });
    let log = stderr_of(&fg);
    assert!(log.contains("a zygote did not start a worker in time"), "{log}");
    assert!(!log.contains("worker crashed"), "{log}");
    sb.stop();
    assert!(zygotes(&sb).is_empty(), "a zygote outlived the stop");
}

/// Starts, in the foreground with debug logs, two tasks `a` and `b` of the faulty plugin (one staged build, so
/// one zygote), each with `workers` slots, its own marker file (`marks-a`, `marks-b`) and label.
fn start_two_tasks(sb: &mut Sandbox, workers: u32, execute_times: u32, execute_usleep: &str) -> Foreground {
    let task = |suffix: &str| {
        format!(
            "\n[[task]]\nname = \"{name}-{suffix}\"\nplugin = \"{plugin}\"\nworkers = {workers}\n\
             execute_times = {execute_times}\nexecute_usleep = \"{execute_usleep}\"\n[task.config]\n\
             marker_file = \"{marker}\"\nlabel = \"{suffix}\"\n",
            name = sb.name,
            plugin = fixtures().faulty.display(),
            marker = sb.path(&format!("marks-{suffix}")).display(),
        )
    };
    let config = sb.path("pmhost.toml");
    std::fs::write(&config, format!("[host]\nname = \"{}\"\n{}{}", sb.name, task("a"), task("b"))).unwrap();
    sb.start_foreground(["--config", config.to_str().unwrap(), "--log-level", "debug"])
}

#[test]
fn tasks_of_one_build_share_one_zygote_and_each_worker_runs_with_its_own_tasks_settings() {
    let mut sb = Sandbox::new("zygoteshare");
    // Two tasks of the same plugin file (one staged build): each its own marker file and label, and workers that
    // make one call each, so both keep asking for spawns.
    let fg = start_two_tasks(&mut sb, 2, 1, "20ms");
    let master = fg.child.id() as i64;
    // Wait until warm workers have run in both tasks: each must have written its own task's marker file with its
    // own task's label, and never the other task's.
    let (warm_a, warm_b) = sb.wait_for("warm workers in both tasks", SOON, || {
        let warm = warm_pids(&stderr_of(&fg));
        let of = |suffix: &str| -> Vec<crate::harness::Marker> {
            read_markers(&sb.path(&format!("marks-{suffix}"))).into_iter().filter(|m| warm.contains(&m.pid)).collect()
        };
        let (a, b) = (of("a"), of("b"));
        (!a.is_empty() && !b.is_empty()).then_some((a, b))
    });
    assert!(warm_a.iter().all(|m| m.label == "a"), "{warm_a:?}");
    assert!(warm_b.iter().all(|m| m.label == "b"), "{warm_b:?}");
    assert!(warm_a.iter().all(|a| warm_b.iter().all(|b| b.pid != a.pid)), "a worker ran in both tasks");
    // One zygote (the master's child) served both tasks.
    let parent = |pid: i32| crate::harness::proc_stat(pid).and_then(|f| f.get(1)?.parse::<i64>().ok());
    // A worker the zygote has just cloned shows the zygote's title until it sets its own (it is the master's
    // child too): wait for a moment when only the zygote does. Two zygotes would never leave such a moment.
    sb.wait_for("one zygote of this master", SOON, || {
        let ours: Vec<i32> = processes_mentioning(&format!(":Zygote:{}-", sb.name))
            .into_iter()
            .filter(|&p| parent(p) == Some(master))
            .collect();
        (ours.len() == 1).then_some(())
    });
    // Stopping leaves nothing of this host running, the zygote included.
    sb.stop();
}

/// A stop ends the zygotes as it begins; a worker one of them had already cloned still reports, and it is
/// stopped like the others: a graceful stop of a host whose workers turn over as fast as they can is graceful
/// (exit 0), every time. (Before, such a worker was killed and the stop said "forcibly", exit 7, about one stop
/// in twelve in a release build, most stops of eight in a debug one.)
#[test]
fn a_graceful_stop_of_a_churning_host_stays_graceful() {
    let sb = Sandbox::new("warmchurnstop");
    for round in 0..8 {
        sb.start_daemon(&fixtures().hello, &["--workers", "2", "--execute-times", "1", "--execute-usleep", "0"]);
        // Let workers turn over, warm, before the stop.
        sb.wait_for("workers spawned warm", SOON, || {
            let log = sb.log_text("process");
            (log.matches("worker exited: normal exit").count() > 40 * (round + 1)).then_some(())
        });
        let out = sb.run(["stop", "--name", &sb.name]);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", crate::harness::describe(&out));
        assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
    }
}

/// The spares a zygote keeps waiting (`zygote::SPARES`).
const SPARES: usize = 2;

pub(crate) fn spares(sb: &Sandbox) -> Vec<i32> {
    processes_mentioning(&format!(":Spare:{}", sb.name))
        .into_iter()
        .filter(|pid| !crate::harness::is_zombie(*pid))
        .collect()
}

/// Kills a worker at a time until a spare other than `not` exists: a replacement asked of a ready zygote leaves
/// one behind (workers that never retire ask for nothing else, so it then waits for good).
pub(crate) fn kill_until_a_spare(sb: &Sandbox, not: Option<i32>) -> i32 {
    let mut killed = Vec::new();
    sb.wait_for("a spare", SOON, || {
        let ready = sb.ready_workers();
        // Only once both slots have a ready worker that was not killed is no request left that a spare could
        // still be handed: the spare then waits for good.
        let settled = ready.len() == 2 && ready.values().all(|pid| !killed.contains(pid));
        if let Some(spare) = spares(sb).into_iter().find(|pid| Some(*pid) != not)
            && settled
            && ready.values().all(|pid| *pid != spare)
        {
            return Some(spare);
        }
        if let Some(pid) = ready.values().copied().find(|pid| !killed.contains(pid))
            && ready.len() == 2
        {
            // It may have ended meanwhile (a worker that retires): nothing to kill then.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
        }
        None
    })
}

/// A zygote keeps the next worker cloned ahead (a spare): a child of the master in its own process group,
/// titled as a spare (never counted as a worker), that ends with its zygote and with the host.
#[test]
fn a_spare_waits_as_the_masters_child_and_ends_with_its_zygote() {
    let sb = Sandbox::new("spare");
    sb.start_daemon(&fixtures().hello, &["--workers", "2", "--execute-times", "0", "--execute-usleep", "50ms"]);
    let master = sb.master_pid();
    let spare = kill_until_a_spare(&sb, None);
    assert_eq!(stat_field(spare, 4), i64::from(master), "parent");
    assert_eq!(stat_field(spare, 5), i64::from(spare), "process group");
    let workers = sb.wait_for("both slots served", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == 2));
    assert!(workers.values().all(|pid| *pid != spare), "a spare counted as a worker: {workers:?}");
    let zygote = sb.wait_for("the zygote", SOON, || zygotes(&sb).first().copied());
    signal(zygote, Signal::SIGKILL);
    assert!(ProcessWaiter::new(spare).wait(SOON) || crate::harness::is_zombie(spare), "the spare outlived its zygote");
    // It ended as a spare: no worker of that pid ever ran.
    assert!(!sb.log_text("run.").contains(&format!("pid={spare} ")), "{}", sb.log_text("run."));
    // The next zygote has a spare of its own, and the stop ends it.
    kill_until_a_spare(&sb, Some(spare));
    let out = sb.run(["stop", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::harness::describe(&out));
    sb.wait_for("no spare left", SOON, || spares(&sb).is_empty().then_some(()));
}

/// `status` reports how long a slot goes without a worker when one is replaced: from the master's request to
/// the new worker's first `work` call, over the task's recent workers (JSON, table and metrics).
#[test]
fn status_reports_the_spawn_latency_of_a_tasks_workers() {
    let sb = Sandbox::new("spawnlatency");
    sb.start_daemon(&fixtures().hello, &["--workers", "2", "--execute-times", "1", "--execute-usleep", "20ms"]);
    let latency = sb.wait_for("spawn latencies of 20 workers", SOON, || {
        sb.snapshot()?.tasks[0].spawn_latency.filter(|l| l.samples >= 20)
    });
    assert!(latency.median_ms > 0.0 && latency.median_ms <= latency.p99_ms, "{latency:?}");
    assert!(latency.p99_ms < 10_000.0, "{latency:?}");
    let out = sb.run(["status", "--name", &sb.name]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Spawn   request to first work call: median "), "{table}");
    let metrics = std::fs::read_to_string(sb.host_status_dir().join("metrics.prom")).unwrap();
    assert!(metrics.contains(&format!("pmhost_spawn_latency_median_seconds{{host=\"{0}\",task=\"{0}\"}} ", sb.name)));
    sb.stop();
}

/// A spare told to stop (SIGTERM, as `kill` or a service manager sends it) ends at once. It used to record the
/// request and wait on: the next request made it a worker that began stopped (`init`, no call, an exit the
/// master never asked for).
#[test]
fn a_spare_told_to_stop_ends_instead_of_becoming_a_stopped_worker() {
    let sb = Sandbox::new("sparestop");
    // One slot whose workers pause 2 s after their call: a spare waits about that long for its request, so the
    // signal below reaches it as a spare (not as the worker it may become a moment later).
    sb.start_daemon(&fixtures().hello, &["--workers", "1", "--execute-times", "1", "--execute-usleep", "2s"]);
    let spare = sb.wait_for("a spare", SOON, || spares(&sb).first().copied());
    signal(spare, Signal::SIGTERM);
    assert!(ProcessWaiter::new(spare).wait(SOON), "the spare did not end");
    // Had it become a worker, that worker's own log lines (`worker ready ... pid=SPARE`) would be written by now.
    let mentioned = format!("pid={spare} ");
    assert!(!sb.log_text("run.").contains(&mentioned), "the spare became a worker:\n{}", sb.log_text("run."));
    assert!(!sb.log_text("process.").contains(&mentioned), "the spare became a worker:\n{}", sb.log_text("process."));
    // The slots go on (the zygote notices the spare's end and clones another), with no warning.
    sb.wait_for("a spare again", SOON, || spares(&sb).into_iter().find(|pid| *pid != spare));
    let process_log = sb.log_text("process.");
    assert!(!process_log.contains("[Warn]") && !process_log.contains("[Error]"), "{process_log}");
    sb.stop();
}

/// A spare killed by hand is noticed at once (the master reaps it and tells its zygote) and replaced before the
/// next request comes; that request is served by the replacement, none waits for the zygote to be given up on.
#[test]
fn a_spare_killed_by_hand_is_replaced_and_no_request_is_lost() {
    let sb = Sandbox::new("sparekill");
    // One slot whose workers pause 5 s after their call: the spare below is killed and replaced while the
    // slot's worker still pauses, so no request is in flight meanwhile.
    sb.start_daemon(&fixtures().hello, &["--workers", "1", "--execute-times", "1", "--execute-usleep", "5s"]);
    // Its worker pauses as "retiring", not ready.
    let workers = |sb: &Sandbox| sb.workers().iter().map(|w| w.pid).collect::<Vec<_>>();
    let (spare, worker) = sb.wait_for("the spares beside the slot's worker", SOON, || {
        let waiting = spares(&sb);
        let worker = workers(&sb).into_iter().find(|pid| !waiting.contains(pid))?;
        (waiting.len() == SPARES).then(|| (waiting[0], worker))
    });
    signal(spare, Signal::SIGKILL);
    let next = sb.wait_for("a replacement spare", SOON, || {
        let waiting = spares(&sb);
        (waiting.len() == SPARES && !waiting.contains(&spare)).then_some(waiting)
    });
    assert_eq!(workers(&sb), [worker], "a request came meanwhile");
    // The worker's retirement asks for the next one: a spare takes that request and becomes it.
    sb.wait_for("a spare serving the slot", SOON, || workers(&sb).iter().any(|pid| next.contains(pid)).then_some(()));
    let process_log = sb.log_text("process.");
    assert!(!process_log.contains("[Warn]") && !process_log.contains("[Error]"), "{process_log}");
    sb.stop();
}

/// The ready worker of the task named `task`, if any.
fn ready_worker_of(sb: &Sandbox, task: &str) -> Option<i32> {
    use crate::harness::{SnapshotExt, is_ready};
    sb.snapshot()?.task_workers(task).iter().find(|w| is_ready(w)).map(|w| w.pid)
}

/// A spare holds the templates its zygote had when it was cloned. A task's first request to the zygote comes
/// with the task's template (on the zygote's control socket) and reaches the spare (on the request queue)
/// without it: the spare gives the request back and the zygote, which has the template by then, serves it,
/// with that task's settings.
#[test]
fn a_request_a_spare_has_no_template_for_is_given_back_and_served() {
    let mut sb = Sandbox::new("sparebounce");
    // Two tasks of one plugin (one zygote), a worker each that never retires: a zygote knows only the task it
    // was started for until another task asks it for a worker.
    let fg = start_two_tasks(&mut sb, 1, 0, "50ms");
    let task_name = |suffix: &str| format!("{}-{suffix}", sb.name);
    let (own, other) = ("a", "b");
    // Whichever task's spawn started the first zygote, and whatever templates it was given since: once it is
    // killed, the next spawn (task a's, below) starts one that knows only task a, as b's worker never retires.
    let first = sb.wait_for("a zygote", SOON, || zygotes(&sb).first().copied());
    sb.wait_for("both tasks' workers", SOON, || {
        (ready_worker_of(&sb, &task_name(own)).is_some() && ready_worker_of(&sb, &task_name(other)).is_some())
            .then_some(())
    });
    signal(first, Signal::SIGKILL);
    assert!(ProcessWaiter::new(first).wait(SOON) || crate::harness::is_zombie(first), "the zygote lived on");
    // Kill task a's worker until its replacement comes warm from the new zygote and leaves spares behind.
    let mut killed = Vec::new();
    let waiting = sb.wait_for("task a's spares", SOON, || {
        let worker = ready_worker_of(&sb, &task_name(own))?;
        let waiting: Vec<i32> = processes_mentioning(&format!(":Spare:{}", task_name(own)))
            .into_iter()
            .filter(|pid| !crate::harness::is_zombie(*pid) && *pid != worker)
            .collect();
        if waiting.len() == SPARES && !killed.contains(&worker) {
            return Some(waiting);
        }
        if !killed.contains(&worker) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL);
            killed.push(worker);
        }
        None
    });
    // Task b's first request to the new zygote: its worker is replaced.
    let cold = ready_worker_of(&sb, &task_name(other)).expect("task b's worker");
    signal(cold, Signal::SIGKILL);
    let warm = sb.wait_for("task b's worker replaced, warm, with its own settings", SOON, || {
        let warm = warm_pids(&stderr_of(&fg));
        read_markers(&sb.path(&format!("marks-{other}"))).into_iter().find(|m| m.pid != cold && warm.contains(&m.pid))
    });
    assert_eq!(warm.label, other, "{warm:?}");
    assert!(!waiting.contains(&warm.pid), "a spare served a task it had no template of: {warm:?}");
    let log = stderr_of(&fg);
    assert!(log.contains("a spare gave back a request"), "{log}");
    // The spare that took it ended: it gives a request back only to end.
    sb.wait_for("the spare that gave the request back gone", SOON, || {
        waiting.iter().any(|pid| matches!(crate::harness::process_state(*pid), None | Some('Z'))).then_some(())
    });
    sb.stop();
}
