//! One benchmark host: a private temp dir (pid, status and log roots, marker files), the real `pmhost` binary
//! driven through its CLI, and a guard that kills every process of the host when dropped, even on error.

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use pmhost::status::Snapshot;
use serde_json::json;

use crate::artifacts::Artifacts;
use crate::clock::mono_ns;
use crate::procfs;
use crate::wait::{DirWatch, ExitWatch};

/// Longest any single CLI command may take (a 256-worker start of a debug build on a loaded machine included).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// What the bench plugin's `work` does (its `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Returns at once.
    Empty,
    /// One 32-byte `write(2)` to a file.
    Write,
    /// A marker line per call, or for the first call only.
    Marker { first_only: bool },
    /// `begin` and `end` marker lines around a sleep of `work_ms` that ignores stop requests.
    Slow { work_ms: u64 },
}

/// How to start the host.
#[derive(Debug, Clone)]
pub struct StartSpec {
    pub workers: u32,
    /// `--execute-usleep`.
    pub usleep: String,
    pub mode: Mode,
    /// `--execute-times` (0: unlimited).
    pub execute_times: u32,
    /// More `pmhost start` flags.
    pub extra: Vec<String>,
    /// The `--task-config` JSON, instead of the bench plugin's for `mode` (for another plugin).
    pub task_config: Option<String>,
}

impl StartSpec {
    /// `workers` workers, unlimited calls `usleep` apart, doing `mode`.
    pub fn new(workers: u32, usleep: &str, mode: Mode) -> StartSpec {
        StartSpec { workers, usleep: usleep.to_owned(), mode, execute_times: 0, extra: Vec::new(), task_config: None }
    }
}

/// A private pmhost host and everything it started.
pub struct Sandbox {
    dir: tempfile::TempDir,
    /// The master's name, unique to this sandbox: cleanup finds the host's processes by it.
    pub name: String,
    artifacts: Artifacts,
}

impl Sandbox {
    /// A fresh sandbox; `label` makes the name readable in `ps`.
    pub fn new(artifacts: &Artifacts, label: &str) -> Result<Sandbox> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::Builder::new().prefix("pmhost-bench-").tempdir().context("create a temp dir")?;
        let name = format!("pmb{}-{}-{label}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        Ok(Sandbox { dir, name, artifacts: artifacts.clone() })
    }

    /// A path inside the sandbox.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The sandbox directory (where marker and write files live).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The file the bench plugin writes its marker lines to.
    pub fn marker_file(&self) -> PathBuf {
        self.path("marks")
    }

    /// The master's status directory (exists once the host started).
    pub fn status_dir(&self) -> PathBuf {
        self.path("status").join(&self.name)
    }

    /// `pmhost ARGS` with this sandbox's roots in the environment.
    pub fn pmhost<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.artifacts.pmhost);
        cmd.args(args)
            .env("PMHOST_PID_ROOT", self.path("pid"))
            .env("PMHOST_STATUS_ROOT", self.path("status"))
            .env("PMHOST_LOG_DIR", self.path("log"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `pmhost ARGS` to completion (killed after [`COMMAND_DEADLINE`]); fails unless it exits 0.
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.pmhost(args);
        // Output goes to unnamed files, not pipes: waiting for the exit with a full pipe nobody reads would
        // deadlock (a 256-worker status is bigger than a pipe buffer), and a reader thread is more machinery.
        let (mut stdout, mut stderr) = (tempfile::tempfile()?, tempfile::tempfile()?);
        cmd.stdout(stdout.try_clone()?).stderr(stderr.try_clone()?);
        let mut child = cmd.spawn().context("spawn pmhost")?;
        if let Err(e) = ExitWatch::new(&[child.id() as i32]).wait_all(COMMAND_DEADLINE) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).with_context(|| format!("{cmd:?}"));
        }
        let status = child.wait().context("reap pmhost")?;
        let read_all = |file: &mut std::fs::File| -> Result<Vec<u8>> {
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut bytes)?;
            Ok(bytes)
        };
        let out = Output { status, stdout: read_all(&mut stdout)?, stderr: read_all(&mut stderr)? };
        if !out.status.success() {
            bail!(
                "{cmd:?} failed ({})\n--- stdout:\n{}--- stderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// The bench plugin's `--task-config` for `mode`, with its files inside the sandbox.
    pub fn task_config(&self, mode: Mode) -> String {
        let marker = self.marker_file();
        let config = match mode {
            Mode::Empty => json!({"mode": "empty"}),
            Mode::Write => json!({"mode": "write", "write_file": self.path("written")}),
            Mode::Marker { first_only } => json!({"mode": "marker", "marker_file": marker, "first_only": first_only}),
            Mode::Slow { work_ms } => json!({"mode": "slow", "marker_file": marker, "work_ms": work_ms}),
        };
        config.to_string()
    }

    /// `pmhost start -d` with `plugin`; returns once every worker finished `init` (as `-d` promises).
    pub fn start_with(&self, spec: &StartSpec, plugin: &Path) -> Result<()> {
        let workers = spec.workers.to_string();
        let execute_times = spec.execute_times.to_string();
        let config = spec.task_config.clone().unwrap_or_else(|| self.task_config(spec.mode));
        let mut args: Vec<&OsStr> = Vec::new();
        for arg in ["start", "-d", "--name", &self.name, "--workers", &workers, "--execute-times", &execute_times] {
            args.push(arg.as_ref());
        }
        args.extend(["--plugin".as_ref(), plugin.as_os_str()]);
        for arg in ["--execute-usleep", &spec.usleep, "--task-config", &config, "--log-level", "warn"] {
            args.push(arg.as_ref());
        }
        args.push("--no-log-files".as_ref());
        args.extend(spec.extra.iter().map(OsStr::new));
        self.run(args)?;
        Ok(())
    }

    /// `pmhost start -d` with the bench plugin.
    pub fn start(&self, spec: &StartSpec) -> Result<()> {
        self.start_with(spec, &self.artifacts.plugin.clone())
    }

    /// The master's pid, from its pid file.
    pub fn master_pid(&self) -> Result<i32> {
        let path = self.path("pid").join(format!("{}.pid", self.name));
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.trim().parse().with_context(|| format!("pid file {} holds {text:?}", path.display()))
    }

    /// The status file as the master last wrote it.
    pub fn status_file(&self) -> Result<Snapshot> {
        let path = self.status_dir().join("status.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// A fresh snapshot through `pmhost status --json`.
    pub fn query_status(&self) -> Result<Snapshot> {
        let out = self.run(["status", "--name", &self.name, "--json"])?;
        serde_json::from_slice(&out.stdout).context("parse `pmhost status --json`")
    }

    /// Worker pids, from a fresh snapshot (the status file follows changes at a pace, see the master's
    /// `publish_status`).
    pub fn worker_pids(&self) -> Result<Vec<i32>> {
        Ok(self.query_status()?.tasks.iter().flat_map(|t| t.workers.iter().map(|w| w.pid)).collect())
    }

    /// `pmhost stop`: returns (when it was issued, when the master, every worker and the CLI itself were gone),
    /// both on `CLOCK_MONOTONIC`.
    pub fn stop(&self) -> Result<(u64, u64)> {
        let mut pids = self.worker_pids()?;
        pids.push(self.master_pid()?);
        let mut host = ExitWatch::new(&pids);
        if !host.already_gone().is_empty() {
            bail!("processes {:?} of {} were gone before the stop", host.already_gone(), self.name);
        }
        let issued = mono_ns();
        let mut cmd = self.pmhost(["stop", "--name", &self.name]);
        let mut stderr = tempfile::tempfile()?;
        let mut cli = cmd.stdout(Stdio::null()).stderr(stderr.try_clone()?).spawn().context("spawn pmhost stop")?;
        let mut cli_exit = ExitWatch::new(&[cli.id() as i32]);
        let host_gone = host.wait_all(COMMAND_DEADLINE)?;
        let cli_gone = cli_exit.wait_all(COMMAND_DEADLINE)?;
        let status = cli.wait().context("reap pmhost stop")?;
        if !status.success() {
            let mut text = String::new();
            let _ = stderr.seek(SeekFrom::Start(0)).and_then(|_| stderr.read_to_string(&mut text));
            bail!("pmhost stop --name {} failed ({status}): {text}", self.name);
        }
        Ok((issued, host_gone.max(cli_gone)))
    }

    /// Watches the sandbox root (marker and write files) and, once the host runs, its status directory.
    pub fn watch(&self) -> Result<DirWatch> {
        let status_dir = self.status_dir();
        if status_dir.is_dir() { DirWatch::new(&[self.root(), &status_dir]) } else { DirWatch::new(&[self.root()]) }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Everything that mentions our name (master, workers, a CLI still running), and the process groups of
        // those (each worker leads one). A few rounds: a master killed between forks may leave a fresh child.
        for _ in 0..3 {
            let pids = procfs::processes_mentioning(&self.name);
            if pids.is_empty() {
                break;
            }
            for &pid in &pids {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = ExitWatch::new(&pids).wait_all(Duration::from_secs(2));
        }
    }
}
