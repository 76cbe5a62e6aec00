//! Attacks and faults on the run directories and the stop path: parents owned by someone else, directories
//! swapped for symlinks while workers respawn, special files where pmhost expects regular ones, a full disk, a
//! removed status directory, helpers that leave their worker's process group, descriptors a caller leaks.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::{
    ProcessWaiter, SOON, Sandbox, describe, fixtures, process_state, read_markers, signal, task_config,
};

/// Runs `pmhost ARGS`, which must finish within 10 s (a hang is the defect some tests look for).
fn run_bounded(sb: &Sandbox, args: &[&str]) -> Output {
    let mut cmd = sb.pmhost(args);
    eprintln!("$ {cmd:?}");
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pmhost");
    let waiter = ProcessWaiter::new(child.id() as i32);
    let finished = waiter.wait(Duration::from_secs(10));
    if !finished {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
    }
    let out = child.wait_with_output().expect("collect output");
    assert!(finished, "pmhost {args:?} hung\n{}", describe(&out));
    eprintln!("{}", describe(&out));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// Distinct pids that wrote a marker after `since` (a monotonic ns timestamp).
fn pids_marking_since(marker: &Path, since: u64) -> std::collections::BTreeSet<i32> {
    read_markers(marker).into_iter().filter(|m| m.mono_ns > since).map(|m| m.pid).collect()
}

fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// A file system of `size` of its own at `dir` (to fill it up), unmounted when the guard is dropped.
fn mount_tmpfs(dir: &Path, size: &str) -> impl Drop {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(mounted.success(), "cannot mount a tmpfs (the tests run as root)");
    Unmount(dir.to_owned())
}

#[test]
fn a_run_root_below_a_directory_another_user_owns_is_refused() {
    let sb = Sandbox::new("theirs");
    let theirs = sb.path("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let hello = fixtures().hello.to_str().unwrap();
    let inside = theirs.join("pm");
    for flag in ["--pid-root", "--status-root", "--log-dir"] {
        let root = inside.join(flag.trim_start_matches("--"));
        let out =
            run_bounded(&sb, &["start", "-d", "--name", &sb.name, "--plugin", hello, flag, root.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{flag}: {}", describe(&out));
        assert!(stderr(&out).contains("uid 65534") && stderr(&out).contains("theirs"), "{flag}: {}", describe(&out));
        assert!(sb.live_processes().is_empty());
        assert!(!root.exists(), "{flag}: created {} below a foreign directory", root.display());
    }
    // A directory that group or others may write, and is not sticky, is refused the same way.
    let open = sb.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let root = open.join("pid");
    let out =
        run_bounded(&sb, &["start", "-d", "--name", &sb.name, "--plugin", hello, "--pid-root", root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains("not sticky"), "{}", describe(&out));
}

#[test]
fn swapped_run_directories_are_never_followed_while_workers_respawn() {
    let sb = Sandbox::new("swap");
    let marker = sb.path("marks");
    let config = task_config(json!({"marker_file": marker}));
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(
        faulty,
        &["--workers", "2", "--execute-times", "3", "--execute-usleep", "20ms", "--task-config", &config],
    );
    let status_dir = sb.host_status_dir();
    // The attacker's directory: a status file of theirs and a plugin of theirs under every staged build's name.
    let evil = sb.path("evil");
    std::fs::create_dir_all(evil.join("plugins")).unwrap();
    for entry in std::fs::read_dir(status_dir.join("plugins")).unwrap().flatten() {
        std::fs::copy(&fixtures().hello, evil.join("plugins").join(entry.file_name())).unwrap();
    }
    let moved = sb.status_root().join("moved");
    std::fs::rename(&status_dir, &moved).unwrap();
    std::os::unix::fs::symlink(&evil, &status_dir).unwrap();
    let swapped_at = monotonic_ns();
    // Workers keep being replaced, and the replacements run the real build (the attacker's writes no markers).
    sb.wait_for("6 workers started after the swap, running the real build", SOON, || {
        (pids_marking_since(&marker, swapped_at).len() >= 6).then_some(())
    });
    assert!(!evil.join("status.json").exists(), "the master wrote into the swapped-in directory");
    // The CLI refuses the symlink instead of reading or writing through it.
    let out = run_bounded(&sb, &["status", "--name", &sb.name]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stderr(&out).contains("not a directory"), "{}", describe(&out));
    let out = run_bounded(&sb, &["scale", "--name", &sb.name, "3"]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!evil.join("requests").exists(), "a request was written into the swapped-in directory");

    // The pid root swapped for a symlink to a directory with a pid file of the attacker's: refused.
    let pid_root = sb.pid_root();
    let real_pids = sb.path("pid-real");
    std::fs::rename(&pid_root, &real_pids).unwrap();
    let evil_pids = sb.path("evil-pid");
    std::fs::create_dir(&evil_pids).unwrap();
    std::fs::write(evil_pids.join(format!("{}.pid", sb.name)), "1\n").unwrap();
    std::os::unix::fs::symlink(&evil_pids, &pid_root).unwrap();
    let out = run_bounded(&sb, &["stop", "--name", &sb.name]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stderr(&out).contains("not a directory"), "{}", describe(&out));

    std::fs::remove_file(&pid_root).unwrap();
    std::fs::rename(&real_pids, &pid_root).unwrap();
    std::fs::remove_file(&status_dir).unwrap();
    std::fs::rename(&moved, &status_dir).unwrap();
    sb.stop();
}

#[test]
fn stop_needs_no_disk_and_keeps_the_hosts_own_grace() {
    let sb = Sandbox::new("fulldisk");
    // The status root on a tiny file system of its own, filled up once the host runs.
    let status_root = sb.status_root();
    std::fs::create_dir(&status_root).unwrap();
    let _unmount = mount_tmpfs(&status_root, "128m");
    let shutdown = sb.path("shutdown");
    let config = task_config(json!({"work_ms": 300, "shutdown_file": shutdown}));
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(
        faulty,
        &["--workers", "2", "--execute-times", "0", "--stop-timeout", "60s", "--task-config", &config],
    );
    // No status file: the grace must come from the master itself. (Removed first: its page would make room.)
    std::fs::remove_file(sb.status_file()).unwrap();
    let fill = status_root.join("fill");
    let _ = std::fs::write(&fill, vec![0u8; 160 << 20]); // fails with ENOSPC once the file system is full
    assert!(std::fs::write(status_root.join("probe"), b"x").is_err(), "the file system is not full");
    let out = run_bounded(&sb, &["stop", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("60s to finish"), "the host's own stop timeout was not used: {stdout}");
    assert!(stdout.contains("stopped") && !stdout.contains("forcibly"), "{stdout}");
    let lines = std::fs::read_to_string(&shutdown).unwrap_or_default();
    assert_eq!(lines.lines().count(), 2, "both workers ran shutdown: {lines:?}");
    assert!(sb.live_processes().is_empty());
}

#[test]
fn a_removed_status_directory_is_recreated_and_the_host_keeps_working() {
    let sb = Sandbox::new("rmstatus");
    let marker = sb.path("marks");
    let config = task_config(json!({"marker_file": marker}));
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(
        faulty,
        &["--workers", "2", "--execute-times", "2", "--execute-usleep", "20ms", "--task-config", &config],
    );
    let status_dir = sb.host_status_dir();
    // The master may write a status file while the directory is being emptied (ENOTEMPTY): try again.
    sb.wait_for("the status directory removed", SOON, || std::fs::remove_dir_all(&status_dir).ok());
    let removed_at = monotonic_ns();
    sb.wait_for("4 workers started after the removal", SOON, || {
        (pids_marking_since(&marker, removed_at).len() >= 4).then_some(())
    });
    let out = run_bounded(&sb, &["status", "--name", &sb.name, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let staged: Vec<_> = std::fs::read_dir(status_dir.join("plugins")).unwrap().flatten().collect();
    assert_eq!(staged.len(), 1, "the build in use is staged again");
    let out = run_bounded(&sb, &["scale", "--name", &sb.name, "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sb.stop();
    // A stopped host leaves no status directory behind.
    assert!(!status_dir.exists(), "{} is left behind", status_dir.display());
}

#[test]
fn special_files_never_hang_a_command_or_the_master() {
    let sb = Sandbox::new("fifos");
    let hello = fixtures().hello.to_str().unwrap();
    // A FIFO as the plugin.
    let fifo_plugin = sb.path("libfifo.so");
    mkfifo(&fifo_plugin);
    for cmd in [vec!["validate", "--plugin"], vec!["start", "-d", "--name", &sb.name, "--plugin"]] {
        let mut args = cmd.clone();
        args.push(fifo_plugin.to_str().unwrap());
        let out = run_bounded(&sb, &args);
        assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&[out.stdout.clone(), out.stderr.clone()].concat()).contains("not a regular file")
        );
    }
    sb.start_daemon(hello, &["--workers", "1", "--execute-times", "0", "--execute-usleep", "50ms"]);
    let status_dir = sb.host_status_dir();
    // A FIFO and a 50 MB file among the requests: the master skips both, and answers the next request.
    let requests = status_dir.join("requests");
    std::fs::create_dir_all(&requests).unwrap();
    std::fs::set_permissions(&requests, std::fs::Permissions::from_mode(0o700)).unwrap();
    mkfifo(&requests.join("0-1.json"));
    std::fs::write(requests.join("0-2.json"), vec![b' '; 50 << 20]).unwrap();
    let out = run_bounded(&sb, &["scale", "--name", &sb.name, "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // A FIFO as status.json: list and status do not hang.
    let status_file = sb.status_file();
    std::fs::remove_file(&status_file).unwrap();
    mkfifo(&status_file);
    let out = run_bounded(&sb, &["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // A FIFO as another host's pid file: reported by list, refused by status, hanging neither.
    mkfifo(&sb.pid_root().join("other.pid"));
    let out = run_bounded(&sb, &["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused"), "{}", describe(&out));
    let out = run_bounded(&sb, &["status", "--name", "other"]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stderr(&out).contains("FIFO"), "{}", describe(&out));
    std::fs::remove_file(&status_file).unwrap();
    sb.stop();
}

#[test]
fn helpers_that_leave_the_process_group_end_with_their_worker() {
    let sb = Sandbox::new("setsid");
    let helper_pid = sb.path("helper.pid");
    let spawn = format!("setsid sh -c 'echo $$ > {0}.tmp && mv {0}.tmp {0}; exec sleep 1000' &", helper_pid.display());
    let config = task_config(json!({"work": "spawn", "spawn": spawn}));
    let faulty = fixtures().faulty.to_str().unwrap();
    sb.start_daemon(
        faulty,
        &["--workers", "1", "--execute-times", "0", "--execute-usleep", "50ms", "--task-config", &config],
    );
    let read_helper = || std::fs::read_to_string(&helper_pid).ok()?.trim().parse::<i32>().ok();
    let first = sb.wait_for("the first helper", SOON, read_helper);
    // Its worker is killed: the helper, in a session of its own, ends with it.
    std::fs::remove_file(&helper_pid).unwrap();
    let worker = *sb.wait_for("a ready worker", SOON, || sb.ready_workers().into_values().next().map(Box::new));
    signal(worker, nix::sys::signal::Signal::SIGKILL);
    assert!(ProcessWaiter::new(first).wait(SOON), "the helper of a killed worker survived it");
    // The replacement's helper ends with the host.
    let second = sb.wait_for("the replacement's helper", SOON, read_helper);
    sb.stop();
    assert!(ProcessWaiter::new(second).wait(SOON), "a helper survived the stop");
}

#[test]
fn a_daemon_and_its_workers_keep_no_descriptor_of_the_caller() {
    let sb = Sandbox::new("fds");
    let leaked = sb.path("leaked");
    let file = std::fs::File::create(&leaked).unwrap();
    let hello = fixtures().hello.to_str().unwrap();
    let mut cmd =
        sb.pmhost(["start", "-d", "--name", &sb.name, "--plugin", hello, "--workers", "2", "--execute-times", "0"]);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: dup2 in the child before exec, onto a descriptor number the child does not use; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    drop(file);
    let workers = sb.wait_for("2 ready workers", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == 2));
    let holders: Vec<i32> = std::iter::once(sb.master_pid())
        .chain(workers.values().copied())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == leaked)))
                .unwrap_or(false)
        })
        .collect();
    assert!(holders.is_empty(), "processes {holders:?} keep the caller's descriptor");
    sb.stop();
}

#[test]
fn a_refused_restart_leaves_no_staged_copy() {
    let sb = Sandbox::new("refusedstage");
    let hello = fixtures().hello.to_str().unwrap();
    sb.start_daemon(hello, &["--workers", "1", "--execute-times", "0"]);
    let plugins = sb.host_status_dir().join("plugins");
    let count = || std::fs::read_dir(&plugins).unwrap().flatten().count();
    assert_eq!(count(), 1);
    let not_a_plugin = fixtures().not_a_plugin.to_str().unwrap();
    let out = run_bounded(&sb, &["restart", "--name", &sb.name, "--plugin", not_a_plugin]);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert_eq!(count(), 1, "the refused build is staged");
    sb.stop();
}

#[test]
fn staging_on_a_full_disk_names_the_directory_it_could_not_write() {
    let sb = Sandbox::new("stagefull");
    let status_root = sb.status_root();
    std::fs::create_dir(&status_root).unwrap();
    let _unmount = mount_tmpfs(&status_root, "1m");
    // The directories exist; the plugin (much larger than 1 MiB in a test build) cannot be copied into them.
    let plugins = status_root.join(&sb.name).join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for dir in [status_root.join(&sb.name), plugins.clone()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let faulty = fixtures().faulty.to_str().unwrap();
    let out = run_bounded(&sb, &["start", "-d", "--name", &sb.name, "--plugin", faulty]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("in {}", plugins.display())) && err.contains("No space left"), "{err}");
    assert!(!err.contains(&format!("write {faulty}")), "the source plugin is named as the write target: {err}");
    assert!(sb.live_processes().is_empty());
}

#[test]
fn a_stop_that_had_to_kill_the_master_says_so_and_exits_7() {
    let sb = Sandbox::new("killmaster");
    let hello = fixtures().hello.to_str().unwrap();
    sb.start_daemon(hello, &["--workers", "1", "--execute-times", "0"]);
    let master = sb.master_pid();
    signal(master, nix::sys::signal::Signal::SIGSTOP);
    sb.wait_for("the master stopped", SOON, || (process_state(master) == Some('T')).then_some(()));
    // A stopped master answers nothing: the stop escalates to QUIT, then to SIGKILL.
    let mut cmd = sb.pmhost(["stop", "--name", &sb.name, "--timeout", "1s"]);
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    eprintln!("{}", describe(&out));
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("killed") && !stdout.contains("stopped t"), "{stdout}");
    sb.wait_for("the workers gone", SOON, || sb.live_processes().is_empty().then_some(()));
}
