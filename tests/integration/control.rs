//! The control plane: names, run directories, pid files, daemon mode, stop and titles (status: `status.rs`).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::{ProcessWaiter, SOON, Sandbox, describe, fixtures, is_ready, processes_mentioning, task_config};

/// `start -d` of the hello plugin with `workers` workers; asserts success.
pub(crate) fn start_daemon(sb: &Sandbox, workers: &str, extra: &[&str]) {
    let mut args = vec!["--workers", workers, "--execute-times", "0", "--execute-usleep", "50ms"];
    args.extend_from_slice(extra);
    sb.start_daemon(&fixtures().hello, &args);
}

#[test]
fn names_outside_the_allowed_alphabet_are_refused() {
    let sb = Sandbox::new("badname");
    let plugin = fixtures().hello.to_str().unwrap();
    for name in ["a/b", "..", "", "x y", &"n".repeat(65)] {
        let out = sb.run(["start", "--name", name, "--plugin", plugin]);
        assert_eq!(out.status.code(), Some(2), "{name:?}: {}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid name"), "{}", describe(&out));
    }
    assert!(!sb.pid_root().exists(), "a refused start created run directories");
}

#[test]
fn run_directories_open_to_others_or_owned_by_another_user_are_refused() {
    let sb = Sandbox::new("opendir");
    let plugin = fixtures().hello.to_str().unwrap();
    std::fs::create_dir_all(sb.pid_root()).unwrap();
    std::fs::set_permissions(sb.pid_root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = sb.run(["start", "--name", &sb.name, "--plugin", plugin]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("writable by group or others") && stderr.contains("chmod 700"), "{stderr}");

    std::fs::set_permissions(sb.pid_root(), std::fs::Permissions::from_mode(0o700)).unwrap();
    if nix::unistd::geteuid().is_root() {
        // Root can hand the directory to another user and must then be refused too.
        std::os::unix::fs::chown(sb.pid_root(), Some(65534), Some(65534)).unwrap();
        let out = sb.run(["start", "--name", &sb.name, "--plugin", plugin]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534"), "{}", describe(&out));
    }
    assert!(sb.live_processes().is_empty());
}

#[test]
fn a_second_start_is_refused_naming_the_running_pid() {
    let sb = Sandbox::new("twice");
    start_daemon(&sb, "1", &[]);
    let pid = sb.master_pid();
    let plugin = fixtures().hello.to_str().unwrap();
    let out = sb.run(["start", "-d", "--name", &sb.name, "--plugin", plugin]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("already running (pid {pid}")),
        "{}",
        describe(&out)
    );
    assert_eq!(sb.master_pid(), pid, "the refused start touched the pid file");
    sb.stop();
}

#[test]
fn concurrent_starts_exactly_one_wins() {
    let sb = Sandbox::new("race");
    let plugin = fixtures().hello.to_str().unwrap();
    let spawn = || {
        let mut cmd = sb.pmhost(["start", "-d", "--name", &sb.name, "--plugin", plugin, "--workers", "2"]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort();
    assert_eq!(codes, [Some(0), Some(4)], "{}\n{}", describe(&a), describe(&b));
    let masters: Vec<i32> = processes_mentioning(&format!("Master:{}", sb.name));
    assert_eq!(masters.len(), 1, "masters: {masters:?}");
    sb.stop();
}

/// Writes a pid file (in a private pid root) naming `pid`, as a stale or planted file would.
fn plant_pid_file(sb: &Sandbox, pid: u32) -> std::path::PathBuf {
    std::fs::create_dir_all(sb.pid_root()).unwrap();
    std::fs::set_permissions(sb.pid_root(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let pid_file = sb.pid_file();
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
    pid_file
}

#[test]
fn a_stale_pid_file_never_blocks_a_start_nor_misdirects_a_stop() {
    let sb = Sandbox::new("stale");
    let mut bystander = Command::new("sleep").arg("1000").spawn().unwrap();
    plant_pid_file(&sb, bystander.id());

    // Nothing holds the file: stop and status say so and signal nobody.
    let out = sb.run(["stop", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let out = sb.run(["status", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander was signalled");

    start_daemon(&sb, "1", &[]);
    assert_ne!(sb.master_pid(), bystander.id() as i32);
    sb.stop();
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander was signalled");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn a_pid_file_of_another_user_is_refused_at_start() {
    let sb = Sandbox::new("foreignpid");
    let pid_file = plant_pid_file(&sb, 999_999);
    std::os::unix::fs::chown(&pid_file, Some(65534), Some(65534)).unwrap();
    let hello = fixtures().hello.to_str().unwrap();
    let out = sb.run(["start", "-d", "--name", &sb.name, "--plugin", hello, "--workers", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&pid_file.display().to_string()) && stderr.contains("belongs to uid 65534"), "{stderr}");
    assert!(sb.live_processes().is_empty(), "a refused start left processes: {:?}", sb.live_processes());
}

#[test]
fn planted_symlinks_are_never_followed() {
    let sb = Sandbox::new("symlink");
    let victim = sb.path("victim");
    std::fs::write(&victim, "precious").unwrap();
    let status_dir = sb.host_status_dir();
    std::fs::create_dir_all(&status_dir).unwrap();
    for dir in [sb.status_root(), status_dir.clone()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::os::unix::fs::symlink(&victim, status_dir.join("status.json")).unwrap();
    start_daemon(&sb, "1", &[]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let meta = std::fs::symlink_metadata(status_dir.join("status.json")).unwrap();
    assert!(meta.file_type().is_file(), "status.json is still a symlink");
    sb.stop();

    // A symlink where the pid file goes: refused, victim untouched.
    std::os::unix::fs::symlink(&victim, sb.pid_file()).unwrap();
    let plugin = fixtures().hello.to_str().unwrap();
    let out = sb.run(["start", "-d", "--name", &sb.name, "--plugin", plugin]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pid file"), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(sb.live_processes().is_empty());
}

#[test]
fn daemon_start_returns_once_every_worker_is_ready() {
    let sb = Sandbox::new("daemon");
    // A slow init: the command must not return before it is done.
    let plugin = fixtures().faulty.to_str().unwrap();
    let config = task_config(json!({"init_ms": 700}));
    let out = sb.run([
        "start",
        "-d",
        "--name",
        &sb.name,
        "--plugin",
        plugin,
        "--workers",
        "3",
        "--execute-times",
        "0",
        "--task-config",
        &config,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("started"), "{}", describe(&out));
    let status = sb.snapshot().unwrap();
    let workers = &status.tasks[0].workers;
    assert_eq!(workers.len(), 3, "{status:#?}");
    assert!(workers.iter().all(is_ready), "{status:#?}");
    let check = sb.run(["status", "--name", &sb.name, "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    sb.stop();
}

#[test]
fn daemon_start_with_a_failing_init_reports_the_plugins_message() {
    let sb = Sandbox::new("daemonfail");
    let plugin = fixtures().faulty.to_str().unwrap();
    let config = task_config(json!({"init": "fail", "message": "queue credentials rejected"}));
    let out = sb.run(["start", "-d", "--name", &sb.name, "--plugin", plugin, "--task-config", &config]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue credentials rejected"), "{}", describe(&out));
    let waiter_deadline = std::time::Instant::now() + SOON;
    while !sb.live_processes().is_empty() && std::time::Instant::now() < waiter_deadline {
        for pid in sb.live_processes() {
            ProcessWaiter::new(pid).wait(Duration::from_secs(1));
        }
    }
    assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
}

#[test]
fn daemon_start_short_of_descriptors_reports_why() {
    // With few descriptors allowed, a start fails at some step, before or after it detached; each failure must
    // reach the command (a daemon's stderr is /dev/null), never "see its log".
    let sb = Sandbox::new("emfile");
    let hello = fixtures().hello.to_str().unwrap();
    let mut failures = 0;
    for limit in 3..64u64 {
        let mut cmd = sb.pmhost(["start", "-d", "--name", &sb.name, "--plugin", hello, "--workers", "1"]);
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                    .map_err(std::io::Error::from)
            });
        }
        eprintln!("$ (RLIMIT_NOFILE {limit}) {cmd:?}");
        let out = cmd.output().unwrap();
        eprintln!("{}", describe(&out));
        if out.status.code() == Some(0) {
            assert!(failures > 0, "even {limit} descriptors were enough: the test proves nothing");
            sb.stop();
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("error while loading shared libraries") {
            continue; // too few for the dynamic loader: pmhost never ran
        }
        failures += 1;
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(stderr.contains("Too many open files") && !stderr.contains("see its log"), "{limit}: {stderr}");
        sb.wait_for("the failed start to end", SOON, || sb.live_processes().is_empty().then_some(()));
    }
    panic!("no start succeeded with up to 63 descriptors");
}

#[test]
fn daemon_start_with_relative_paths() {
    let sb = Sandbox::new("relative");
    let plugin = sb.path("libjob.so");
    std::fs::copy(&fixtures().hello, &plugin).unwrap();
    let mut cmd = sb.pmhost([
        "start",
        "-d",
        "--name",
        &sb.name,
        "--plugin",
        "libjob.so",
        "--pid-root",
        "pid",
        "--status-root",
        "status",
        "--log-dir",
        "log",
        "--workers",
        "1",
        "--execute-times",
        "0",
    ]);
    cmd.current_dir(sb.dir.path()).env_remove("PMHOST_PID_ROOT").env_remove("PMHOST_STATUS_ROOT");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(sb.status_file().exists());
    assert!(sb.path("log").read_dir().unwrap().next().is_some(), "no log file in the relative log dir");
    sb.stop();
}

#[test]
fn stop_waits_for_everything_and_escalates_after_its_timeout() {
    let sb = Sandbox::new("escalate");
    let plugin = fixtures().faulty.to_str().unwrap();
    let marker = sb.path("marks");
    let config = task_config(json!({"work": "hang", "marker_file": marker}));
    let out = sb.run([
        "start",
        "-d",
        "--name",
        &sb.name,
        "--plugin",
        plugin,
        "--workers",
        "2",
        "--execute-times",
        "0",
        "--stop-timeout",
        "300s",
        "--task-config",
        &config,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sb.wait_for("both workers hung", SOON, || (crate::harness::read_markers(&marker).len() >= 2).then_some(()));
    let out = sb.run(["stop", "--name", &sb.name, "--timeout", "1s"]);
    // A stop that had to kill workers says so and exits 7, like a forced stop of a foreground master.
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("did not stop within") && stdout.contains("stopping at once"), "{stdout}");
    assert!(stdout.contains("forcibly"), "{stdout}");
    assert!(sb.live_processes().is_empty(), "left running: {:?}", sb.live_processes());
}

#[test]
fn stop_and_status_of_nothing_say_so() {
    let sb = Sandbox::new("nothing");
    for args in [
        vec!["stop", "--name", &sb.name],
        vec!["status", "--name", &sb.name],
        vec!["status", "--check", "--name", &sb.name],
    ] {
        let out = sb.run(&args);
        assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
        if !args.contains(&"--check") {
            assert!(String::from_utf8_lossy(&out.stderr).contains("is running"), "{}", describe(&out));
        }
    }
}

#[test]
fn ps_and_pgrep_see_the_titles() {
    let sb = Sandbox::new("ps");
    start_daemon(&sb, "2", &["--title-prefix", "jobs"]);
    let master = sb.master_pid();
    let ps = Command::new("ps").args(["-o", "args=", "-p", &master.to_string()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), format!("jobs:Master:{}", sb.name));
    let pgrep = Command::new("pgrep").args(["-f", &format!("jobs:Worker:{}", sb.name)]).output().unwrap();
    let workers = String::from_utf8_lossy(&pgrep.stdout).lines().count();
    assert_eq!(workers, 2, "pgrep found: {}", String::from_utf8_lossy(&pgrep.stdout));
    let comm = std::fs::read_to_string(format!("/proc/{master}/comm")).unwrap();
    assert!(comm.trim().starts_with("M:t"), "short name {comm:?}");
    sb.stop();
}

#[test]
fn a_pid_file_naming_another_process_is_never_signalled() {
    let sb = Sandbox::new("planted");
    let mut victim = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid_file = plant_pid_file(&sb, victim.id());
    // Someone holds the lock, but the pid it names is not the holder.
    let held = std::fs::File::open(&pid_file).unwrap();
    held.try_lock().unwrap();
    for args in
        [vec!["status", "--name", &sb.name], vec!["stop", "--name", &sb.name], vec!["scale", "--name", &sb.name, "2"]]
    {
        let out = sb.run(&args);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold it"), "{}", describe(&out));
    }
    assert!(victim.try_wait().unwrap().is_none(), "the victim was signalled");
    // A pid root others can write to is refused by every command, not only by start.
    std::fs::set_permissions(sb.pid_root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = sb.run(["status", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by group or others"), "{}", describe(&out));
    assert!(victim.try_wait().unwrap().is_none(), "the victim was signalled");
    drop(held);
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn two_stops_at_once_stay_graceful() {
    let sb = Sandbox::new("twostops");
    let shutdown = sb.path("shutdown");
    let faulty = fixtures().faulty.to_str().unwrap();
    let config = task_config(json!({"work_ms": 1500, "shutdown_file": shutdown}));
    sb.start_daemon(faulty, &["--workers", "2", "--execute-times", "0", "--task-config", &config]);
    let spawn =
        || sb.pmhost(["stop", "--name", &sb.name]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", describe(&a));
    assert!(matches!(b.status.code(), Some(0 | 3)), "{}", describe(&b));
    let lines = std::fs::read_to_string(&shutdown).unwrap_or_default();
    assert_eq!(lines.lines().count(), 2, "both workers finished their call and shut down: {lines:?}");
    assert!(sb.live_processes().is_empty());
}

#[test]
fn a_start_with_one_failing_slot_fails_whole() {
    let sb = Sandbox::new("partial");
    let faulty = fixtures().faulty.to_str().unwrap();
    let config = task_config(json!({"init": "fail", "only_slot": 1, "message": "slot 1 has no token"}));
    let out =
        sb.run(["start", "-d", "--name", &sb.name, "--plugin", faulty, "--workers", "3", "--task-config", &config]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("slot 1 has no token"), "{}", describe(&out));
    sb.wait_for("nothing left running", SOON, || sb.live_processes().is_empty().then_some(()));
}

#[test]
fn stop_now_kills_workers_in_the_middle_of_a_call() {
    let sb = Sandbox::new("stopnow");
    let shutdown = sb.path("shutdown");
    let faulty = fixtures().faulty.to_str().unwrap();
    let config = task_config(json!({"work_ms": 60000, "shutdown_file": shutdown}));
    sb.start_daemon(faulty, &["--workers", "2", "--execute-times", "0", "--task-config", &config]);
    let started = std::time::Instant::now();
    let out = sb.run(["stop", "--name", &sb.name, "--now"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(started.elapsed() < Duration::from_secs(10), "an immediate stop took {:?}", started.elapsed());
    assert!(!shutdown.exists(), "shutdown ran: the workers were not killed");
    assert!(sb.live_processes().is_empty());
}

/// A pids cgroup (v1 `pids` hierarchy or v2) limiting how many processes may exist in it; removed on drop.
struct PidsCgroup(std::path::PathBuf);

impl PidsCgroup {
    /// `None` when no pids controller is writable here (not root, no delegation): the caller skips.
    fn new(name: &str, max: u32) -> Option<PidsCgroup> {
        for base in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
            let dir = std::path::Path::new(base).join(name);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if std::fs::write(dir.join("pids.max"), max.to_string()).is_ok() {
                return Some(PidsCgroup(dir));
            }
            let _ = std::fs::remove_dir(&dir);
        }
        None
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // A cgroup with processes cannot be removed: end what a failed assertion left in it first.
        let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            ProcessWaiter::new(pid).wait(SOON);
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_daemon_start_whose_forks_fail_fails_whole() {
    let sb = Sandbox::new("forkfail");
    // The command, its short-lived middle child and the daemon fit; of 8 workers only a few can be forked.
    let Some(cgroup) = PidsCgroup::new(&sb.name, 5) else {
        eprintln!("skipped: no writable pids cgroup controller on this machine");
        return;
    };
    let procs = std::ffi::CString::new(cgroup.0.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
    let hello = fixtures().hello.to_str().unwrap();
    let mut cmd = sb.pmhost(["start", "-d", "--name", &sb.name, "--plugin", hello, "--workers", "8"]);
    // SAFETY: only async-signal-safe calls (open, write, close) on memory prepared before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // Writing "0" moves the writing process itself into the cgroup.
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    eprintln!("$ (pids.max 5) {cmd:?}");
    let out = cmd.output().unwrap();
    eprintln!("{}", describe(&out));
    assert_eq!(out.status.code(), Some(1), "a start with unforked workers must fail: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot fork a worker for slot"), "{stderr}");
    sb.wait_for("the failed start to end", SOON, || sb.live_processes().is_empty().then_some(()));
    assert_eq!(sb.run(["status", "--name", &sb.name]).status.code(), Some(3), "nothing is left running");
    drop(cgroup);
}
