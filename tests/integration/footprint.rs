//! A zygote's footprint: the first warm worker learns the pages it runs and writes, the zygote makes them part
//! of every later clone, and nothing changes when learning fails or is cut short.

use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::{ProcessWaiter, SOON, Sandbox, fixtures, signal};
use crate::warm::{kill_until_a_spare, spares, stat_field, zygotes};

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
    // The zygote maps the footprint's code pages and few more: populating them mapped whole page-cache folios
    // around each, and it dropped what lies between; what it ran itself since, it mapped a page at a time while
    // its code was split (before, each first run of a page mapped the 64 KiB around it: ~150 pages more).
    let footprint = number("code_pages");
    let zygote = zygotes(&sb)[0];
    let mapped = code_pages_mapped(zygote);
    eprintln!("code pages mapped by the zygote: {mapped}");
    assert!(mapped <= footprint + 64, "the zygote maps {mapped} code pages ({applied})");
    // And its code is whole again (split, each clone copied thousands of mappings).
    let mappings = std::fs::read_to_string(format!("/proc/{zygote}/maps")).unwrap().lines().count();
    assert!(mappings < 200, "the zygote has {mappings} mappings after 200 workers ({applied})");
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
    // The learner: a spare (it learns from its clone on), or the worker it became.
    let learner = sb.wait_for("a learner", SOON, || {
        let waiting = spares(&sb).into_iter();
        waiting.chain(sb.ready_workers().into_values()).find(|pid| random_code_mappings(*pid) > 0)
    });
    let mappings = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().lines().count();
    let (learner_maps, zygote_maps) = (mappings(learner), mappings(zygotes(&sb)[0]));
    assert!(learner_maps > zygote_maps + 500, "learner: {learner_maps} mappings, its zygote: {zygote_maps}");
    sb.stop();
}

/// The learner once it serves as a ready worker. A spare claims the learning as it is cloned (see
/// `zygote::footprint`), so workers are killed, one at a time and the two slots in turn, until the learning
/// spare has taken a request.
fn learner_serving(sb: &Sandbox) -> i32 {
    let mut killed: Vec<i32> = Vec::new();
    sb.wait_for("the learner serving", SOON, || {
        let ready = sb.ready_workers();
        if let Some(pid) = ready.values().copied().find(|pid| random_code_mappings(*pid) > 0) {
            return Some(pid);
        }
        if ready.len() == 2 && ready.values().all(|pid| !killed.contains(pid)) {
            let pid = ready.values().copied().nth(killed.len() % 2)?;
            // It may have ended meanwhile: nothing to kill then.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
        }
        None
    })
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
    kill_until_a_spare(&sb, None);
    // The learner: the ready worker with its code mappings under MADV_RANDOM, once its child has exited.
    let learner = learner_serving(&sb);
    let learner = sb.wait_for("the learner's forked child exited", SOON, || {
        let run_log = sb.log_text("run.");
        run_log
            .lines()
            .any(|l| l.contains("forked child exited") && l.contains(&format!("pid={learner} ")))
            .then_some(learner)
    });
    // A request after the child's exit: the zygote looks for a footprint before it clones the next spare.
    let other = sb.ready_workers().values().copied().find(|pid| *pid != learner).unwrap();
    let before = spares(&sb);
    signal(other, Signal::SIGKILL);
    let next = sb.wait_for("the next spare", SOON, || spares(&sb).into_iter().find(|pid| !before.contains(pid)));
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
    // Warm replacements (the start's first workers may be cold): a spare claims the learning; it serves once it
    // has taken a request.
    kill_until_a_spare(&sb, None);
    let learner = learner_serving(&sb);
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

/// The learner maps the first page of each library destructor its zygote listed: a library the plugin loaded
/// as it was loaded (in the zygote) and its workers unload left addresses that are no longer mapped, and the
/// learner must skip them rather than crash at the end of its exit.
#[test]
fn a_learner_that_unloaded_a_library_its_zygote_loaded_records_without_crashing() {
    let sb = Sandbox::new("fpunload");
    let config = crate::harness::task_config(json!({"work": "unload"}));
    let faulty = fixtures().faulty.to_str().unwrap().to_owned();
    let mut cmd = sb.pmhost(["start", "-d", "--name", &sb.name, "--plugin", &faulty, "--log-level", "debug"]);
    cmd.args(["--workers", "2", "--execute-times", "1", "--execute-usleep", "0", "--task-config", &config]);
    // A library with ELF destructors that nothing else keeps loaded.
    cmd.env("FAULTY_LOAD_AT_START", &fixtures().not_a_plugin);
    eprintln!("$ {cmd:?}");
    let out = cmd.output().expect("run pmhost start");
    assert_eq!(out.status.code(), Some(0), "{}", crate::harness::describe(&out));
    sb.wait_for("the footprint applied", SOON, || {
        sb.log_text("process.").contains("applied its workers' footprint").then_some(())
    });
    sb.wait_for("the library unloaded", SOON, || {
        sb.log_text("run.").contains("unloaded the library loaded at start").then_some(())
    });
    let log = sb.log_text("process.");
    assert!(!log.contains("worker crashed"), "{log}");
    sb.stop();
}

/// A learning spare that ends without becoming a worker (here told to stop, as `kill` or a service manager
/// does) gives the claim back uncounted: it ran nothing of a worker's life, so it is not one of the three lost
/// learners after which a zygote stops handing the claim on. Four such spares in a row leave a fifth learning.
#[test]
fn a_learning_spare_that_ends_unread_hands_the_claim_on_uncounted() {
    let sb = Sandbox::new("footprint-spare");
    start_two_slots(&sb, "0", "50ms", &[]);
    kill_until_a_spare(&sb, None);
    let mut stopped: Vec<i32> = Vec::new();
    for round in 0..5 {
        let learner = sb.wait_for("a learning spare", SOON, || {
            spares(&sb).into_iter().find(|pid| !stopped.contains(pid) && random_code_mappings(*pid) > 0)
        });
        if round == 4 {
            break;
        }
        signal(learner, Signal::SIGTERM);
        assert!(ProcessWaiter::new(learner).wait(SOON), "the spare did not end");
        stopped.push(learner);
    }
    let process_log = sb.log_text("process.");
    assert!(!process_log.contains("learners ended before recording"), "{process_log}");
    sb.stop();
}

/// A zygote that split its code mappings to apply its footprint joins them once its warming time is over, even
/// when nothing wakes it: an idle zygote stayed split until its next spare round (hours, for long-lived workers),
/// and what it cloned directly on the burst of requests that woke it (slots whose workers retired together) kept
/// the ~2 000 mappings for life.
#[test]
fn an_idle_zygote_joins_its_code_mappings_once_it_has_warmed() {
    let sb = Sandbox::new("footprint-idle");
    // One slot whose workers live ~2 s: once the footprint is applied, the zygote waits that long for a request.
    let args = ["--workers", "1", "--execute-times", "20", "--execute-usleep", "100ms", "--log-level", "debug"];
    sb.start_daemon(&fixtures().hello, &args);
    let applied = sb.wait_for("the footprint applied", SOON, || {
        sb.log_text("process.").lines().find(|l| l.contains("applied its workers' footprint")).map(str::to_owned)
    });
    assert!(!applied.contains("split_pages: 0 "), "{applied}");
    let zygote = zygotes(&sb)[0];
    let mappings = || std::fs::read_to_string(format!("/proc/{zygote}/maps")).map_or(0, |maps| maps.lines().count());
    // Warming lasts 200 ms; the next request comes ~2 s after the footprint was applied.
    sb.wait_for("the idle zygote joined", std::time::Duration::from_millis(1_000), || (mappings() < 200).then_some(()));
    assert!(!sb.log_text("process.").contains("[Error]"));
    sb.stop();
}
