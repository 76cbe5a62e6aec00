//! The test harness: a private sandbox per test (pid, status and log roots inside a temp dir), the real `pmhost`
//! binary, fixture plugins built once per run, event-driven waits with deadlines, and cleanup that kills every
//! process the test started, even when the test fails.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use pmhost::status::{Snapshot, WorkerStatus};
use serde_json::Value;

mod snapshot;
pub use snapshot::{SnapshotExt, is_ready, parse_snapshot};

/// Generous deadline for anything that should happen "soon" on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(20);

/// The fixture plugins, built once per test run with the same profile as the `pmhost` binary.
pub struct Fixtures {
    pub hello: PathBuf,
    pub faulty: PathBuf,
    pub not_a_plugin: PathBuf,
    /// A library whose constructor misbehaves as a test patches it to (see plugins/constructor).
    pub constructor: PathBuf,
    pub old_api: PathBuf,
    /// The stand-alone plugin template (examples/plugin-template), built as a user would.
    pub template: PathBuf,
    /// An async job (plugin-api's `tokio` feature) that misbehaves on request.
    pub async_job: PathBuf,
    /// The PostgreSQL queue consumer (examples/pg-queue), built as a user would.
    pub pg_queue: PathBuf,
}

fn pmhost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pmhost"))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is inside the workspace").to_owned()
}

/// The target directory shared by the plugin crates that have a workspace of their own (fixtures, examples,
/// crates made by `pmhost new`): one build of their common dependencies serves them all.
pub fn standalone_target_dir() -> PathBuf {
    let bin = pmhost_bin();
    bin.parent().and_then(Path::parent).expect("the binary is in target/PROFILE/").join("fixtures")
}

/// The cargo profile the `pmhost` binary under test was built with (fixtures are built with it too).
pub fn cargo_profile() -> String {
    match pmhost_bin().parent().and_then(Path::file_name).and_then(OsStr::to_str) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    }
}

/// Builds the fixture plugins (cargo does nothing when they are fresh) and returns their paths.
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let bin = pmhost_bin();
        let profile_dir = bin.parent().expect("binary has a directory");
        let target_dir = profile_dir.parent().expect("profile dir has a parent");
        let profile = cargo_profile();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let build = |args: &[&str], target: &Path| {
            let mut cmd = Command::new(&cargo);
            cmd.arg("build").args(args).arg("--profile").arg(&profile).arg("--target-dir").arg(target);
            cmd.current_dir(workspace_root());
            eprintln!("$ {cmd:?}");
            let out = cmd.output().expect("run cargo");
            assert!(out.status.success(), "building fixtures failed:\n{}", String::from_utf8_lossy(&out.stderr));
        };
        build(&["-p", "hello", "-p", "faulty", "-p", "not-a-plugin", "-p", "constructor"], target_dir);
        // Crates with a workspace of their own share one target directory, so they share abi_stable's build.
        let own_target = standalone_target_dir();
        let manifests = [
            "plugins/old-api/Cargo.toml",
            "examples/plugin-template/Cargo.toml",
            "plugins/async-job/Cargo.toml",
            "examples/pg-queue/Cargo.toml",
        ];
        for manifest in manifests {
            let manifest = workspace_root().join(manifest);
            build(&["--manifest-path", manifest.to_str().expect("utf-8 path")], &own_target);
        }
        let own_profile_dir = own_target.join(profile_dir.file_name().expect("profile dir name"));
        Fixtures {
            hello: profile_dir.join("libhello.so"),
            faulty: profile_dir.join("libfaulty.so"),
            not_a_plugin: profile_dir.join("libnot_a_plugin.so"),
            constructor: profile_dir.join("libconstructor.so"),
            old_api: own_profile_dir.join("libold_api_plugin.so"),
            template: own_profile_dir.join("libjob.so"),
            async_job: own_profile_dir.join("libasync_job.so"),
            pg_queue: own_profile_dir.join("libpg_queue.so"),
        }
    })
}

/// One test's sandbox and everything it started.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// A name unique to this test run: masters are started under it, and cleanup finds processes by it.
    pub name: String,
    /// Foreground masters started (their stderr files are numbered by it).
    masters_started: usize,
}

/// A foreground master started by a test.
pub struct Foreground {
    pub child: Child,
    pub stderr_path: PathBuf,
}

impl Sandbox {
    /// A fresh sandbox; `label` makes the unique name readable in `ps`.
    pub fn new(label: &str) -> Sandbox {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::Builder::new().prefix("pmhost-test-").tempdir().expect("temp dir");
        let name = format!("t{}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), label);
        Sandbox { dir, name, masters_started: 0 }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pid_root(&self) -> PathBuf {
        self.path("pid")
    }

    pub fn status_root(&self) -> PathBuf {
        self.path("status")
    }

    /// The host's own directory under the status root (status file, metrics, staged plugins, requests).
    pub fn host_status_dir(&self) -> PathBuf {
        self.status_root().join(&self.name)
    }

    pub fn status_file(&self) -> PathBuf {
        self.host_status_dir().join("status.json")
    }

    /// The host's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.pid_root().join(format!("{}.pid", self.name))
    }

    /// `pmhost ARGS` with this sandbox's roots in the environment.
    pub fn pmhost<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(pmhost_bin());
        cmd.args(args)
            .env("PMHOST_PID_ROOT", self.pid_root())
            .env("PMHOST_STATUS_ROOT", self.status_root())
            .env("PMHOST_LOG_DIR", self.path("log"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `pmhost ARGS` to completion (killed after [`SOON`]) and returns its output.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.pmhost(args);
        eprintln!("$ {cmd:?}");
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pmhost");
        let waiter = ProcessWaiter::new(child.id() as i32);
        if !waiter.wait(SOON) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!("pmhost did not finish within {SOON:?}\n{}", describe(&out));
        }
        let out = child.wait_with_output().expect("collect output");
        eprintln!("{}", describe(&out));
        out
    }

    /// Starts a master in the foreground: `pmhost start --name NAME ARGS`, stderr captured to a file.
    pub fn start_foreground<I, S>(&mut self, args: I) -> Foreground
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let stderr_path = self.path(&format!("master-{}.stderr", self.masters_started));
        self.masters_started += 1;
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut cmd = self.pmhost(["start", "--name", &self.name]);
        cmd.args(args).stdout(Stdio::null()).stderr(stderr);
        eprintln!("$ {cmd:?}");
        let child = cmd.spawn().expect("spawn pmhost start");
        Foreground { child, stderr_path }
    }

    /// The pid the master wrote into its pid file.
    pub fn master_pid(&self) -> i32 {
        let path = self.pid_file();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim().parse().unwrap_or_else(|e| panic!("{}: {e}: {text:?}", path.display()))
    }

    /// `pmhost start -d --name NAME --plugin PLUGIN ARGS`, which must succeed.
    pub fn start_daemon(&self, plugin: impl AsRef<Path>, args: &[&str]) {
        let plugin = plugin.as_ref().to_str().expect("utf-8 path");
        let mut all = vec!["start", "-d", "--name", &self.name, "--plugin", plugin];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }

    /// `pmhost stop --name NAME`, which must succeed and leave nothing of this sandbox running.
    pub fn stop(&self) {
        let out = self.run(["stop", "--name", &self.name]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(self.live_processes().is_empty(), "left running: {:?}", self.live_processes());
    }

    /// Starts the faulty fixture in the foreground with `config` (its `--task-config`) and `args`.
    pub fn start_faulty<const N: usize>(&mut self, config: &Value, args: [&str; N]) -> Foreground {
        let plugin = fixtures().faulty.to_str().expect("utf-8 path").to_owned();
        let config = config.to_string();
        let mut all = vec!["--plugin", &plugin, "--task-config", &config];
        all.extend_from_slice(&args);
        self.start_foreground(all)
    }

    /// The status file the master keeps, typed, if it is there and complete. A file that is complete JSON but
    /// not a [`Snapshot`] is a schema mismatch, not a file still being written: that panics.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot_of(&self.name)
    }

    /// The status file of the master named `name` (in this sandbox's status root), as [`Sandbox::snapshot`].
    pub fn snapshot_of(&self, name: &str) -> Option<Snapshot> {
        let text = std::fs::read_to_string(self.status_root().join(name).join("status.json")).ok()?;
        parse_snapshot(text.as_bytes())
    }

    /// The status file as untyped JSON, for tests of the JSON schema itself; every other test reads
    /// [`Sandbox::snapshot`]. No test uses it now (the schema test reads `pmhost status --json`); it stays for
    /// branches written against it.
    #[allow(dead_code, reason = "kept for tests of the JSON schema itself")]
    pub fn status(&self) -> Option<Value> {
        self.status_of(&self.name)
    }

    /// The status file of the master named `name` as untyped JSON, for tests of the JSON schema itself; every
    /// other test reads [`Sandbox::snapshot_of`].
    pub fn status_of(&self, name: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.status_root().join(name).join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The first task's workers from the status file (none when there is no file yet).
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.snapshot().map(|s| s.workers().to_vec()).unwrap_or_default()
    }

    /// Worker pids by slot from the status file (ready workers only).
    pub fn ready_workers(&self) -> BTreeMap<u64, i32> {
        self.ready_workers_of(&self.name)
    }

    /// Worker pids by slot from the status file of the master named `name` (ready workers only).
    pub fn ready_workers_of(&self, name: &str) -> BTreeMap<u64, i32> {
        let mut out = BTreeMap::new();
        if let Some(status) = self.snapshot_of(name) {
            for w in status.tasks.iter().flat_map(|t| &t.workers).filter(|w| is_ready(w)) {
                out.insert(u64::from(w.slot), w.pid);
            }
        }
        out
    }

    /// The text of the log files (in the sandbox's log directory) whose names start with `prefix` (`run.`,
    /// `process.`), in name order; empty when there are none.
    pub fn log_text(&self, prefix: &str) -> String {
        let dir = self.path("log");
        file_names(&dir)
            .iter()
            .filter(|name| name.starts_with(prefix))
            .map(|name| std::fs::read_to_string(dir.join(name)).unwrap_or_default())
            .collect()
    }

    /// Waits until `condition` holds, re-checking whenever a file in the sandbox changes (and at least every
    /// 100 ms, for conditions no file reflects). Panics with `what` at the deadline.
    pub fn wait_for<T>(&self, what: &str, deadline: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
        let watch = SandboxWatch::new(self.dir.path());
        let until = Instant::now() + deadline;
        loop {
            if let Some(value) = condition() {
                return value;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out after {deadline:?} waiting for {what}\n{}", self.debug_dump());
            }
            watch.wait(left.min(Duration::from_millis(100)));
        }
    }

    /// Everything useful to see when a test fails: status file and master logs.
    pub fn debug_dump(&self) -> String {
        let mut out =
            format!("--- status.json:\n{}\n", std::fs::read_to_string(self.status_file()).unwrap_or_default());
        for index in 0..self.masters_started {
            let path = self.path(&format!("master-{index}.stderr"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            out.push_str(&format!("--- {} (last lines):\n", path.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Pids of processes whose command line mentions this sandbox's unique name (masters, workers, CLIs).
    pub fn live_processes(&self) -> Vec<i32> {
        processes_mentioning(&self.name)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Kill everything that mentions our name, and the process groups of those (plugin helpers).
        for _ in 0..3 {
            let pids = processes_mentioning(&self.name);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                ProcessWaiter::new(pid).wait(Duration::from_secs(2));
            }
        }
    }
}

/// Pids whose `/proc/PID/cmdline` contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
            && !is_zombie(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, pgrp... (`proc_stat(pid)[0]` is field 3
/// of proc(5)).
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The process's state letter (`R`, `S`, `T`, `Z`...), from `/proc/PID/stat`.
pub fn process_state(pid: i32) -> Option<char> {
    proc_stat(pid)?.first()?.chars().next()
}

/// The process's state letter is Z.
pub fn is_zombie(pid: i32) -> bool {
    process_state(pid) == Some('Z')
}

/// The command line of a process as `ps -o args` shows it (NULs as spaces, trimmed).
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_owned()
}

/// Waits for a process to exit through a pidfd (no polling of /proc).
pub struct ProcessWaiter {
    pid: i32,
    fd: Option<OwnedFd>,
}

impl ProcessWaiter {
    pub fn new(pid: i32) -> ProcessWaiter {
        // SAFETY: pidfd_open with a pid and no flags returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a non-negative result is a fresh descriptor that we own.
        let fd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as i32) });
        ProcessWaiter { pid, fd }
    }

    /// True once the process has exited (or is a zombie), false at the deadline.
    pub fn wait(&self, deadline: Duration) -> bool {
        let Some(fd) = &self.fd else { return true };
        let until = Instant::now() + deadline;
        loop {
            if is_zombie(self.pid) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(200) as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(n) if n > 0 => return true,
                _ if left.is_zero() => return false,
                _ => {}
            }
        }
    }
}

/// Wakes on any change below the sandbox (status rewrites, marker lines, logs).
struct SandboxWatch {
    inotify: Option<Inotify>,
}

impl SandboxWatch {
    fn new(root: &Path) -> SandboxWatch {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok();
        if let Some(inotify) = &inotify {
            let flags = AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_DELETE;
            let mut dirs = vec![root.to_owned()];
            while let Some(dir) = dirs.pop() {
                let _ = inotify.add_watch(&dir, flags);
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(entry.path());
                    }
                }
            }
        }
        SandboxWatch { inotify }
    }

    fn wait(&self, at_most: Duration) {
        let Some(inotify) = &self.inotify else { return };
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(at_most.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        if matches!(poll(&mut fds, ms), Ok(n) if n > 0) {
            let _ = inotify.read_events();
        }
    }
}

/// Command, exit code, stdout and stderr, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Marker lines written by the faulty plugin: `pid slot generation call mono_ns label`.
#[derive(Debug, Clone)]
#[allow(dead_code, reason = "every field is parsed; each test reads the ones it checks")]
pub struct Marker {
    pub pid: i32,
    pub slot: u32,
    pub generation: u32,
    pub call: u64,
    pub mono_ns: u64,
    pub label: String,
}

pub fn read_markers(path: &Path) -> Vec<Marker> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            Some(Marker {
                pid: f[0].parse().ok()?,
                slot: f[1].parse().ok()?,
                generation: f[2].parse().ok()?,
                call: f[3].parse().ok()?,
                mono_ns: f[4].parse().ok()?,
                label: f[5].to_owned(),
            })
        })
        .collect()
}

/// The faulty plugin's config as a `--task-config` argument.
pub fn task_config(config: Value) -> String {
    config.to_string()
}

/// Sends a signal to a pid.
pub fn signal(pid: i32, signal: Signal) {
    kill(Pid::from_raw(pid), signal).unwrap_or_else(|e| panic!("cannot send {signal} to {pid}: {e}"));
}

/// Waits for a foreground master to exit and returns its exit code; kills it and panics at the deadline.
pub fn wait_exit(fg: &mut Foreground, deadline: Duration) -> i32 {
    let waiter = ProcessWaiter::new(fg.child.id() as i32);
    if !waiter.wait(deadline) {
        let _ = fg.child.kill();
        panic!(
            "master did not exit within {deadline:?}\n{}",
            std::fs::read_to_string(&fg.stderr_path).unwrap_or_default()
        );
    }
    let status = fg.child.wait().expect("wait master");
    status.code().unwrap_or(-1)
}

impl Foreground {
    /// Asks the master to stop (SIGTERM) and returns its exit code once it has exited.
    pub fn terminate(&mut self) -> i32 {
        signal(self.child.id() as i32, Signal::SIGTERM);
        wait_exit(self, SOON)
    }
}

/// The master's stderr so far.
pub fn stderr_of(fg: &Foreground) -> String {
    std::fs::read_to_string(&fg.stderr_path).unwrap_or_default()
}

/// The names of the files in `dir`, sorted (none when it cannot be read).
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Receives systemd notify datagrams until one contains `needle` (panics at the deadline, listing what came).
pub fn receive_until(socket: &std::os::unix::net::UnixDatagram, needle: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + SOON;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(message.clone());
            if message.contains(needle) {
                return message;
            }
        }
    }
    panic!("no {needle:?} from pmhost; got {seen:#?}");
}
