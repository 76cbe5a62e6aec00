//! Warm spawns: workers forked by their build's zygote are the master's own children and behave like workers
//! the master forked itself; a zygote is a cache that can die or be replaced without costing a slot.

use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::{
    ProcessWaiter, SOON, Sandbox, cmdline, fixtures, process_state, processes_mentioning, read_markers, signal,
    stderr_of,
};

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`.
fn stat_field(pid: i32, n: usize) -> i64 {
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

fn zygotes(sb: &Sandbox) -> Vec<i32> {
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

#[test]
fn tasks_of_one_build_share_one_zygote_and_each_worker_runs_with_its_own_tasks_settings() {
    let mut sb = Sandbox::new("zygoteshare");
    // Two tasks of the same plugin file (one staged build): each its own marker file and label, and workers that
    // make one call each, so both keep asking for spawns.
    let task = |suffix: &str| {
        format!(
            "\n[[task]]\nname = \"{name}-{suffix}\"\nplugin = \"{plugin}\"\nworkers = 2\nexecute_times = 1\n\
             execute_usleep = \"20ms\"\n[task.config]\nmarker_file = \"{marker}\"\nlabel = \"{suffix}\"\n",
            name = sb.name,
            plugin = fixtures().faulty.display(),
            marker = sb.path(&format!("marks-{suffix}")).display(),
        )
    };
    let config = sb.path("pmhost.toml");
    std::fs::write(&config, format!("[host]\nname = \"{}\"\n{}{}", sb.name, task("a"), task("b"))).unwrap();
    let fg = sb.start_foreground(["--config", config.to_str().unwrap(), "--log-level", "debug"]);
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

fn spares(sb: &Sandbox) -> Vec<i32> {
    processes_mentioning(&format!(":Spare:{}", sb.name))
        .into_iter()
        .filter(|pid| !crate::harness::is_zombie(*pid))
        .collect()
}

/// Kills a worker at a time until a spare other than `not` exists: a replacement asked of a ready zygote leaves
/// one behind (workers that never retire ask for nothing else, so it then waits for good).
fn kill_until_a_spare(sb: &Sandbox, not: Option<i32>) -> i32 {
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

/// Starts `sb` with two slots of the hello plugin, debug logs (the zygote's footprint lines), and `more`.
fn start_two_slots(sb: &Sandbox, execute_times: &str, execute_usleep: &str, more: &[&str]) {
    let mut args = vec!["--workers", "2", "--execute-times", execute_times, "--execute-usleep", execute_usleep];
    args.extend_from_slice(&["--log-level", "debug"]);
    args.extend_from_slice(more);
    sb.start_daemon(&fixtures().hello, &args);
}

/// Page faults the master's reaped children (its workers) took in all, and how many workers exited normally.
fn faults_and_exits(sb: &Sandbox, master: i32) -> (i64, usize) {
    let exits = sb.log_text("process.").matches("worker exited: normal exit").count();
    (stat_field(master, 11), exits)
}

/// Once a warm worker has lived its whole life, its zygote makes that worker's footprint (the code it ran, the
/// pages it wrote) part of every later clone (`footprint`): the workers that follow take a fraction of the page
/// faults and run exactly as before.
#[test]
fn workers_cloned_after_the_footprint_is_learned_take_few_page_faults() {
    let sb = Sandbox::new("footprint");
    start_two_slots(&sb, "1", "0", &[]);
    let master = sb.master_pid();
    let applied = sb.wait_for("the footprint applied", SOON, || {
        sb.log_text("process.").lines().find(|l| l.contains("applied its workers' footprint")).map(str::to_owned)
    });
    let number = |field: &str| -> u64 {
        let at = applied.find(&format!("{field}: ")).unwrap_or_else(|| panic!("no {field} in {applied}"));
        applied[at + field.len() + 2..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    assert!(number("code_pages") > 50 && number("code_mappings") >= 2, "{applied}");
    // Over the next 200 workers (the master reaps each, adding its faults to its own cminflt).
    let (faults, exits) = faults_and_exits(&sb, master);
    let (faults_after, exits_after) = sb
        .wait_for("200 more workers", SOON, || Some(faults_and_exits(&sb, master)).filter(|(_, e)| *e >= exits + 200));
    let per_worker = (faults_after - faults) as f64 / (exits_after - exits) as f64;
    eprintln!("{applied}\npage faults per worker: {per_worker:.1}");
    assert!(per_worker < 30.0, "page faults per worker: {per_worker:.1} ({applied})");
    // The zygote maps the footprint's code pages and few more (what it ran itself since): populating them mapped
    // whole page-cache folios around each, and it dropped what lies between.
    let footprint = number("code_pages");
    let mapped = code_pages_mapped(zygotes(&sb)[0]);
    eprintln!("code pages mapped by the zygote: {mapped}");
    assert!(mapped <= footprint + footprint / 4 + 64, "the zygote maps {mapped} code pages ({applied})");
    let process_log = sb.log_text("process.");
    assert!(!process_log.contains("[Warn]") && !process_log.contains("[Error]"), "{process_log}");
    sb.stop();
}

/// The file pages of `pid`'s read-only file mappings (its code) that are in its page tables (not the private
/// copies: a relocated `RELRO`, the page the zygote rewrote in each code mapping).
fn code_pages_mapped(pid: i32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let kib = |value: &str| value.trim().trim_end_matches("kB").trim().parse::<i64>().unwrap();
    let mut code = false;
    let mut total = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        if let Some(rss) = line.strip_prefix("Rss:") {
            total += if code { kib(rss) } else { 0 };
        } else if let Some(anonymous) = line.strip_prefix("Anonymous:") {
            total -= if code { kib(anonymous) } else { 0 };
        } else if let (Some(range), Some(perms)) = (fields.next(), fields.next())
            && range.contains('-')
            && perms.len() == 4
        {
            code = perms.as_bytes()[1] == b'-' && fields.nth(3).is_some_and(|path| path.starts_with('/'));
        }
    }
    total.max(0) as u64 / 4
}

/// The learner maps its code one page per mapping while it runs, so that each page it runs is mapped alone (a
/// fault maps the whole page-cache folio around the page it needs, up to the mapping's edge) and its footprint
/// names the pages it ran, not the folios around them.
#[test]
fn a_learner_maps_its_code_a_page_per_mapping() {
    let sb = Sandbox::new("footprint-split");
    start_two_slots(&sb, "0", "50ms", &[]);
    kill_until_a_spare(&sb, None);
    let learner = sb.wait_for("a learner", SOON, || {
        sb.ready_workers().values().copied().find(|pid| random_code_mappings(*pid) > 0)
    });
    let mappings = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().lines().count();
    let (learner_maps, zygote_maps) = (mappings(learner), mappings(zygotes(&sb)[0]));
    assert!(learner_maps > zygote_maps + 500, "learner: {learner_maps} mappings, its zygote: {zygote_maps}");
    sb.stop();
}

/// The zygote's code mappings given `MADV_RANDOM` (`rr` in their smaps `VmFlags`).
fn random_code_mappings(pid: i32) -> usize {
    // A process gone meanwhile has none.
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut code = false;
    let mut count = 0;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            count += usize::from(code && flags.split_whitespace().any(|f| f == "rr"));
        } else if line.split_whitespace().nth(1).is_some_and(|perms| perms.contains('x')) {
            code = true;
        } else if line.split_whitespace().nth(1).is_some_and(|perms| perms.len() == 4 && perms.contains('-')) {
            code = false;
        }
    }
    count
}

/// A learner that cannot read its footprint at exit (here its `rlimit_as` leaves no room for the memory it reads
/// its smaps into) records none; the zygote then changes nothing. Applying the empty footprint dropped the
/// zygote's code page table entries and gave every later clone `MADV_RANDOM` for nothing (a debug build measured
/// 188 page faults per worker with it, 195 without: the fault count is not what this test checks).
#[test]
fn a_footprint_the_learner_could_not_record_changes_nothing() {
    let sb = Sandbox::new("footprint-as");
    // The zygote's address space, measured first: its workers get room to run, not room for 4 MiB more.
    sb.start_daemon(&fixtures().hello, &["--workers", "1", "--execute-times", "0", "--execute-usleep", "1s"]);
    let zygote = sb.wait_for("a zygote", SOON, || zygotes(&sb).first().copied());
    let status = std::fs::read_to_string(format!("/proc/{zygote}/status")).unwrap();
    let vm_size: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmSize:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    sb.stop();
    let limit = format!("{}KiB", vm_size + 2560);
    sb.start_daemon(
        &fixtures().hello,
        &[
            "--workers",
            "2",
            "--execute-times",
            "1",
            "--execute-usleep",
            "0",
            "--rlimit-as",
            &limit,
            "--log-level",
            "debug",
        ],
    );
    let master = sb.master_pid();
    let settled = sb.wait_for("the learner's footprint settled", SOON, || {
        sb.log_text("process.")
            .lines()
            .find(|l| l.contains("its workers' footprint") || l.contains("recorded no footprint"))
            .map(str::to_owned)
    });
    assert!(settled.contains("recorded no footprint"), "{settled}");
    let zygote = sb.wait_for("the zygote", SOON, || zygotes(&sb).first().copied());
    assert_eq!(random_code_mappings(zygote), 0, "the zygote's code mappings were given MADV_RANDOM");
    let (faults, exits) = faults_and_exits(&sb, master);
    let (faults_after, exits_after) = sb
        .wait_for("200 more workers", SOON, || Some(faults_and_exits(&sb, master)).filter(|(_, e)| *e >= exits + 200));
    eprintln!("page faults per worker: {:.1}", (faults_after - faults) as f64 / (exits_after - exits) as f64);
    let process_log = sb.log_text("process.");
    assert!(!process_log.contains("[Warn]") && !process_log.contains("[Error]"), "{process_log}");
    sb.stop();
}

/// A child a learner's plugin forks inherits the learner's mark; when it calls `exit` it must not record its own
/// footprint as the worker's. Before, it did and marked the footprint ready: the zygote applied a footprint of
/// a worker still running (whose own record, at its exit, would then rewrite the ranges the zygote reads).
#[test]
fn a_child_forked_by_the_learner_records_no_footprint() {
    let sb = Sandbox::new("footprint-fork");
    let retire = sb.path("retire");
    let config = json!({ "work": "fork", "retire_file": retire }).to_string();
    let plugin = fixtures().faulty.to_str().unwrap().to_owned();
    sb.start_daemon(
        &plugin,
        &[
            "--task-config",
            &config,
            "--workers",
            "2",
            "--execute-times",
            "0",
            "--execute-usleep",
            "50ms",
            "--log-level",
            "debug",
        ],
    );
    let applied = || sb.log_text("process.").lines().any(|l| l.contains("applied its workers' footprint"));
    let spare = kill_until_a_spare(&sb, None);
    // The learner: the ready worker with its code mappings under MADV_RANDOM, once its child has exited.
    let learner = sb.wait_for("the learner's forked child exited", SOON, || {
        let ready = sb.ready_workers();
        let learner = ready.values().copied().find(|pid| random_code_mappings(*pid) > 0)?;
        let run_log = sb.log_text("run.");
        run_log
            .lines()
            .any(|l| l.contains("forked child exited") && l.contains(&format!("pid={learner} ")))
            .then_some(learner)
    });
    // A request after the child's exit: the zygote looks for a footprint before it clones the next spare.
    let other = sb.ready_workers().values().copied().find(|pid| *pid != learner).unwrap();
    signal(other, Signal::SIGKILL);
    let next = sb.wait_for("the next spare", SOON, || spares(&sb).into_iter().find(|pid| *pid != spare));
    assert!(!applied(), "a footprint applied while its learner {learner} runs (spare {next})");
    // The learner's own exit is what the zygote learns from: a retirement (one told to stop records nothing).
    std::fs::write(&retire, "").unwrap();
    let exited = format!("worker exited: normal exit task={} slot=", sb.name);
    sb.wait_for("the learner's retirement", SOON, || {
        let log = sb.log_text("process.");
        log.lines().any(|l| l.contains(&exited) && l.contains(&format!("pid={learner} "))).then_some(())
    });
    // The retiring workers' replacements give the zygote its next idle moment.
    sb.wait_for("the footprint applied", SOON, || applied().then_some(()));
    sb.stop();
}

/// A learner told to stop records nothing (its zygote is most likely going too, and reading its smaps and
/// pagemap at exit would only delay the stop); a zygote that stays hands the claim to a later worker.
#[test]
fn a_learner_told_to_stop_leaves_the_learning_to_a_later_worker() {
    let sb = Sandbox::new("footprint-stop");
    start_two_slots(&sb, "0", "50ms", &[]);
    // Warm replacements (the start's first workers may be cold), one of which claims the learning.
    kill_until_a_spare(&sb, None);
    let learner = sb.wait_for("a learner", SOON, || {
        sb.ready_workers().values().copied().find(|pid| random_code_mappings(*pid) > 0)
    });
    signal(learner, Signal::SIGTERM);
    assert!(ProcessWaiter::new(learner).wait(SOON), "the learner did not stop");
    // Replace a worker at a time until one of them has the claim.
    let mut killed = vec![learner];
    let next = sb.wait_for("a later learner", SOON, || {
        let ready = sb.ready_workers();
        if let Some(pid) = ready.values().copied().find(|pid| !killed.contains(pid) && random_code_mappings(*pid) > 0) {
            return Some(pid);
        }
        if let Some(pid) = ready.values().copied().find(|pid| !killed.contains(pid))
            && ready.len() == 2
            && ready.values().all(|pid| !killed.contains(pid))
        {
            signal(pid, Signal::SIGKILL);
            killed.push(pid);
        }
        None
    });
    assert_ne!(next, learner);
    let process_log = sb.log_text("process.");
    assert!(!process_log.contains("applied its workers' footprint"), "a stopped learner recorded:\n{process_log}");
    sb.stop();
}

/// A learner killed before it records hands the claim to a later worker, but only a few times: each learner's
/// start costs it ~3 ms, so a task whose workers are all killed stops paying it after three.
#[test]
fn a_zygote_whose_learners_are_killed_stops_handing_the_claim_on_after_three() {
    let sb = Sandbox::new("footprint-killed");
    // Every worker is killed: no crash backoff, or the replacements would wait seconds.
    start_two_slots(&sb, "0", "50ms", &["--backoff-initial", "0"]);
    let gave_up = || sb.log_text("process.").contains("learners ended before recording, 3 times");
    // Replace a worker at a time (a learner first, when there is one) until the zygote gives up.
    let mut killed = Vec::new();
    let mut learners = 0;
    sb.wait_for("the zygote giving up on learning", SOON, || {
        if gave_up() {
            return Some(());
        }
        let ready = sb.ready_workers();
        if ready.len() == 2 && ready.values().all(|pid| !killed.contains(pid)) {
            let learner = ready.values().copied().find(|pid| random_code_mappings(*pid) > 0);
            let pid = learner.or_else(|| ready.values().copied().next())?;
            learners += usize::from(learner.is_some());
            signal(pid, Signal::SIGKILL);
            killed.push(pid);
        }
        None
    });
    assert!(learners >= 3, "the zygote gave up after {learners} learners killed");
    // From now on no worker learns: ten more replacements, none with its code under MADV_RANDOM.
    let mut replaced = 0;
    sb.wait_for("ten more replacements", SOON, || {
        let ready = sb.ready_workers();
        if let Some(pid) = ready.values().copied().find(|pid| random_code_mappings(*pid) > 0) {
            panic!("worker {pid} learns after the zygote gave up");
        }
        if replaced == 10 {
            return Some(());
        }
        if ready.len() == 2 && ready.values().all(|pid| !killed.contains(pid)) {
            let pid = *ready.values().next().unwrap();
            signal(pid, Signal::SIGKILL);
            killed.push(pid);
            replaced += 1;
        }
        None
    });
    assert!(!sb.log_text("process.").contains("applied its workers' footprint"));
    sb.stop();
}

/// A spare killed by hand is noticed at once (its zygote watches it through a pidfd) and replaced before the
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
    let task = |suffix: &str| {
        format!(
            "\n[[task]]\nname = \"{name}-{suffix}\"\nplugin = \"{plugin}\"\nworkers = 1\nexecute_times = 0\n\
             execute_usleep = \"50ms\"\n[task.config]\nmarker_file = \"{marker}\"\nlabel = \"{suffix}\"\n",
            name = sb.name,
            plugin = fixtures().faulty.display(),
            marker = sb.path(&format!("marks-{suffix}")).display(),
        )
    };
    let config = sb.path("pmhost.toml");
    std::fs::write(&config, format!("[host]\nname = \"{}\"\n{}{}", sb.name, task("a"), task("b"))).unwrap();
    let fg = sb.start_foreground(["--config", config.to_str().unwrap(), "--log-level", "debug"]);
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
