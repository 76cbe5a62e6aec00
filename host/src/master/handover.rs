//! `pmhost upgrade`, the master's side: hand the state over to a new image of the master on the same pid, and
//! take it over in that image (see [`crate::upgrade`] for the design).
//!
//! The old image refuses an upgrade unless the host is steady (started, no rollout or restart queued, not
//! stopping): what is in flight then lives only in the old image's stack. Before `execve` it runs the new binary
//! twice as a child: `--handover-version` (does it read this format?) and `--handover-check` with the very
//! handover on its stdin (can it read this state?), each within a deadline; a binary that exits 1, hangs or is
//! older is refused there and the old image carries on with the same workers. After `execve`, a new image that
//! cannot rebuild the master re-executes the old image from a kept descriptor with the same handover.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use super::core::{HostPhase, Master};
use super::state::{Task, Worker};
use crate::logging::LogSettings;
use crate::settings::{HostSettings, TaskOverrides};
use crate::status::{RestartStatus, ScaleStatus, UpgradeStatus};
use crate::sysinfo::Mono;
use crate::upgrade::{self, Envelope, HANDOVER_VERSION};

/// How long each check of a new binary may take before the master refuses it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// An upgrade asked for: by `pmhost upgrade` (with its request id) or by the signal.
#[derive(Debug, Default)]
pub(super) struct UpgradeOrder {
    pub(super) request_id: Option<String>,
    pub(super) binary: Option<PathBuf>,
}

/// The master's state as it crosses `execve` (handover version 1).
#[derive(Serialize, Deserialize)]
struct State {
    host: HostSettings,
    log: LogSettings,
    tasks: Vec<Task>,
    workers: Vec<Worker>,
    generation: u32,
    next_generation: u32,
    last_restart: Option<RestartStatus>,
    last_scale: Option<ScaleStatus>,
    started_wall: SystemTime,
    next_tick: Option<Mono>,
    plugin_log_level: u8,
    config_path: Option<PathBuf>,
    overrides: TaskOverrides,
    next_supervision: Option<Mono>,
    inherited_nofile: Option<u64>,
    /// Processes waiting for a snapshot (`pmhost status`): the new image answers them.
    #[serde(default)]
    snapshot_acks: Vec<i32>,
    /// The binary the new image runs (what its own bare upgrade signal re-executes).
    binary: PathBuf,
    /// The upgrade in progress, as the new image reports it.
    upgrade: UpgradeStatus,
    /// Descriptors kept open across `execve`, by number.
    pid_file_fd: RawFd,
    report_fd: RawFd,
    report_pending: Vec<u8>,
    report_tx_fd: RawFd,
    scoreboard_fd: RawFd,
    captures: Vec<super::capture::HandedStream>,
    /// Per watched task, the hash of the last build its watch rolled out (see `watch`).
    #[serde(default)]
    watch_tried: BTreeMap<String, String>,
}

impl Master {
    /// Upgrades the master in place, or records why not (then the master carries on as before).
    pub(super) fn upgrade(&mut self, order: UpgradeOrder) {
        let binary = order.binary.clone().unwrap_or_else(|| self.binary.clone());
        let mut status = UpgradeStatus {
            request_id: order.request_id,
            binary: binary.display().to_string(),
            from_version: env!("CARGO_PKG_VERSION").to_owned(),
            to_version: env!("CARGO_PKG_VERSION").to_owned(),
            ok: false,
            error: None,
            at: crate::sysinfo::unix_seconds(SystemTime::now()),
        };
        info!(binary = %binary.display(), "upgrade requested: re-executing the master in place");
        let error = match self.try_upgrade(&binary, &status) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        warn!("upgrade refused, the master carries on with the same workers: {error}");
        status.error = Some(error);
        self.last_upgrade = Some(status);
        self.host_changed();
        self.snapshot_wanted = true;
    }

    /// Rebuilds what is not handed over but derived from the workers: each slot's index of its workers, and the
    /// deadlines of their lives.
    pub(super) fn index_workers(&mut self) {
        for task in &mut self.tasks {
            for slot in &mut task.slots {
                slot.pids.clear();
            }
        }
        let mut deadlines = Vec::new();
        for worker in self.workers.values() {
            let slots = &mut self.tasks[worker.task].slots;
            if slots.len() <= worker.slot as usize {
                slots.resize_with(worker.slot as usize + 1, Default::default);
            }
            slots[worker.slot as usize].pids.push(worker.pid);
            deadlines.extend(worker.life.init_deadline().map(|at| (at, super::deadlines::Due::Init(worker.pid))));
            deadlines.extend(worker.life.kill_at().map(|at| (at, super::deadlines::Due::Kill(worker.pid))));
        }
        for (index, task) in self.tasks.iter().enumerate() {
            for (slot, state) in task.slots.iter().enumerate() {
                deadlines.extend(state.respawn_at.map(|at| (at, super::deadlines::Due::Respawn(index, slot as u32))));
            }
        }
        for (at, due) in deadlines {
            self.set_deadline(at, due);
        }
        self.recheck_all = true;
    }

    fn steady(&self) -> Result<(), String> {
        if !matches!(self.phase, HostPhase::Running) {
            return Err("the host is stopping".to_owned());
        }
        if self.startup.is_some() {
            return Err("the host is still starting".to_owned());
        }
        if self.rollout.is_some() || !self.restart_queue.is_empty() {
            return Err("a restart is in progress; upgrade once it is done".to_owned());
        }
        Ok(())
    }

    /// Returns only with the reason the upgrade did not happen.
    fn try_upgrade(
        &mut self,
        binary: &std::path::Path,
        status: &UpgradeStatus,
    ) -> Result<std::convert::Infallible, String> {
        self.steady()?;
        upgrade::check_binary(binary, HANDOVER_VERSION, CHECK_TIMEOUT).map_err(|e| e.to_string())?;
        self.settle_spawns()?;
        // Zygotes are a cache the new image would not know (they are this process's children): end them; the
        // new image starts its own on demand.
        self.kill_zygotes();
        let state = State {
            host: self.host.clone(),
            log: self.log.clone(),
            tasks: std::mem::take(&mut self.tasks),
            workers: std::mem::take(&mut self.workers).into_values().collect(),
            generation: self.generation,
            next_generation: self.next_generation,
            last_restart: self.last_restart.clone(),
            last_scale: self.last_scale.clone(),
            started_wall: self.started_wall,
            next_tick: self.next_tick,
            plugin_log_level: self.plugin_log_level,
            config_path: self.config_path.clone(),
            overrides: self.overrides.clone(),
            next_supervision: self.next_supervision,
            inherited_nofile: self.inherited_nofile,
            snapshot_acks: self.snapshot_acks.iter().map(|pid| pid.as_raw()).collect(),
            binary: binary.to_owned(),
            upgrade: UpgradeStatus { ok: true, ..status.clone() },
            pid_file_fd: self.pid_file.as_ref().map_or(-1, |p| p.fd().as_raw_fd()),
            report_fd: self.reports.fd().as_raw_fd(),
            report_pending: self.reports.pending().to_vec(),
            report_tx_fd: self.report_tx.as_raw_fd(),
            scoreboard_fd: self.board.memfd().as_raw_fd(),
            captures: Vec::new(),
            watch_tried: self.plugin_watch.as_ref().map(|w| w.tried().clone()).unwrap_or_default(),
        };
        let json = serde_json::to_value(&state);
        // Put the tasks and workers back at once: every error below leaves the master as it was.
        let State { tasks, workers, .. } = state;
        self.tasks = tasks;
        self.workers = workers.into_iter().map(|w| (w.pid, w)).collect();
        self.index_workers();
        let mut json = json.map_err(|e| format!("cannot write the handover: {e}"))?;
        let captures = self.captures.hand_over().map_err(|e| format!("cannot hand over the output pipes: {e}"))?;
        json["captures"] = serde_json::to_value(captures).map_err(|e| e.to_string())?;
        let handover = upgrade::write(&Envelope::new(json)).map_err(|e| e.to_string())?;
        trial(binary, &handover)?;

        let mut kept: Vec<RawFd> = vec![
            self.reports.fd().as_raw_fd(),
            self.report_tx.as_raw_fd(),
            self.board.memfd().as_raw_fd(),
            handover.as_raw_fd(),
        ];
        kept.extend(self.pid_file.as_ref().map(|p| p.fd().as_raw_fd()));
        for task in &self.tasks {
            kept.push(task.build.plugin.raw_fd());
            kept.extend(task.slots.iter().filter_map(|s| s.build.as_ref()).map(|b| b.plugin.raw_fd()));
        }
        // The old image, to come back to should the new one fail to take over.
        let rollback = nix::fcntl::open("/proc/self/exe", nix::fcntl::OFlag::O_PATH, nix::sys::stat::Mode::empty())
            .map_err(|e| format!("cannot keep the running binary: {e}"))?;
        kept.push(rollback.as_raw_fd());
        for fd in &kept {
            upgrade::keep_across_exec(fd).map_err(|e| format!("cannot keep descriptor {fd} open: {e}"))?;
        }
        if let Some(notifier) = &self.notifier {
            notifier.reloading();
        }
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        if let Some(notifier) = &self.notifier {
            for (key, value) in notifier.handover_env() {
                env.push((key.into(), value));
            }
        }
        info!(binary = %binary.display(), "handing over to the new binary");
        let args = resume_args(binary.as_os_str(), handover.as_raw_fd(), Some(rollback.as_raw_fd()), None);
        let e = exec(binary.as_os_str(), &args, &env);
        // Still here: nothing was replaced. Close-on-exec again, so workers forked later inherit none of it.
        for fd in &kept {
            // SAFETY: F_SETFD on descriptors this master holds open.
            unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        if let Some(notifier) = &mut self.notifier {
            notifier.ready("running");
        }
        Err(format!("cannot execute {}: {e}", binary.display()))
    }
}

/// Runs `binary --handover-check` with the handover on its stdin: it must read this state and say so in time.
fn trial(binary: &std::path::Path, handover: &OwnedFd) -> Result<(), String> {
    // A descriptor of its own (its own offset): reopened through /proc.
    let copy = std::fs::File::open(format!("/proc/self/fd/{}", handover.as_raw_fd())).map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(binary)
        .arg("--handover-check")
        .stdin(copy)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < CHECK_TIMEOUT => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} --handover-check did not answer within {} ms",
                    binary.display(),
                    CHECK_TIMEOUT.as_millis()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    let last = stderr.lines().last().unwrap_or("no message").to_owned();
    Err(format!("{} cannot take this master over ({status}): {last}", binary.display()))
}

fn resume_args(
    program: &std::ffi::OsStr,
    handover: RawFd,
    rollback: Option<RawFd>,
    rolled_back: Option<&str>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![program.into(), "--resume-handover".into(), handover.to_string().into()];
    if let Some(fd) = rollback {
        args.extend(["--rollback-fd".into(), fd.to_string().into()]);
    }
    if let Some(reason) = rolled_back {
        args.extend(["--rolled-back".into(), reason.into()]);
    }
    args
}

fn cstrings(items: impl Iterator<Item = Vec<u8>>) -> Vec<CString> {
    items.filter_map(|bytes| CString::new(bytes).ok()).collect()
}

fn exec(program: &std::ffi::OsStr, args: &[OsString], env: &[(OsString, OsString)]) -> nix::Error {
    let Ok(path) = CString::new(program.as_bytes()) else { return nix::Error::EINVAL };
    let args = cstrings(args.iter().map(|a| a.as_bytes().to_vec()));
    let env = cstrings(env.iter().map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat()));
    match nix::unistd::execve(&path, &args, &env) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// `pmhost --handover-check`: reads a handover from stdin and checks this binary can rebuild a master from it.
pub fn check_from_stdin() -> i32 {
    // SAFETY: stdin is open for the life of the process; the duplicate is ours.
    let stdin = match nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(0) }) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("pmhost: cannot read the handover: {e}");
            return 1;
        }
    };
    match upgrade::read(stdin).map_err(|e| e.to_string()).and_then(|envelope| {
        serde_json::from_value::<State>(envelope.state).map_err(|e| format!("the handover is not valid: {e}"))
    }) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("pmhost: {e}");
            1
        }
    }
}

/// `pmhost --resume-handover FD [--rollback-fd FD] [--rolled-back REASON]`: the new image of an upgraded master.
/// Returns the exit code of the master's end.
pub fn resume(args: &[OsString]) -> i32 {
    let number = |flag: &str| -> Option<RawFd> {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1)?.to_str()?.parse().ok()
    };
    let rolled_back = args
        .iter()
        .position(|a| a == "--rolled-back")
        .and_then(|at| args.get(at + 1))
        .map(|r| r.to_string_lossy().into_owned());
    let Some(handover_fd) = number("--resume-handover") else {
        eprintln!("pmhost: --resume-handover needs a descriptor number");
        return crate::exit::cli::USAGE;
    };
    let rollback_fd = number("--rollback-fd");
    // The handover is read twice at most (here, and by the old image after a rollback): keep the descriptor.
    // SAFETY: the previous image kept it open across execve for us.
    let handover = unsafe { std::os::fd::BorrowedFd::borrow_raw(handover_fd) };
    let state = handover.try_clone_to_owned().map_err(|e| e.to_string()).and_then(|copy| {
        let envelope = upgrade::read(copy).map_err(|e| e.to_string())?;
        serde_json::from_value::<State>(envelope.state).map_err(|e| format!("the handover is not valid: {e}"))
    });
    let state = match state {
        Ok(state) => state,
        Err(reason) => return roll_back(handover_fd, rollback_fd, &reason),
    };
    crate::logging::init_host(&state.log);
    let originals = handed_fds(&state);
    match take_over(state, rolled_back) {
        Ok(master) => {
            // Running on duplicates now: the originals, the handover and the old image's descriptor go.
            for fd in originals.into_iter().chain([handover_fd]).chain(rollback_fd) {
                // SAFETY: handed over for this image, which holds nothing else under these numbers.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            // This image has no start of its own to decide: it gives back what the handover ran (and splits its
            // code, see `footprint`) now, as a started master does once its start is decided.
            let released = super::footprint::release_startup_memory();
            debug!(released_kib = released / 1024, "handover code and free heap pages given back");
            match master.run() {
                Ok(stopped) if stopped.forced => crate::exit::cli::STOPPED_FORCIBLY,
                Ok(_) => crate::exit::cli::OK,
                Err(e) => {
                    error!("{e}");
                    crate::exit::cli::FAILED
                }
            }
        }
        Err(reason) => roll_back(handover_fd, rollback_fd, &reason),
    }
}

/// The new image cannot take over: the old one does, from the kept descriptor, with the same handover.
fn roll_back(handover_fd: RawFd, rollback_fd: Option<RawFd>, reason: &str) -> i32 {
    error!("the new binary cannot take the master over: {reason}");
    eprintln!("pmhost: the new binary cannot take the master over: {reason}");
    let Some(rollback_fd) = rollback_fd else { return crate::exit::cli::FAILED };
    let args = resume_args("pmhost".as_ref(), handover_fd, None, Some(reason));
    let args = cstrings(args.iter().map(|a| a.as_bytes().to_vec()));
    let env = cstrings(std::env::vars_os().map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat()));
    // SAFETY: the descriptor was kept open for this; execveat with AT_EMPTY_PATH runs the file it refers to.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(rollback_fd) };
    let e = nix::unistd::fexecve(fd, &args, &env).err();
    eprintln!("pmhost: cannot go back to the previous binary: {e:?}");
    crate::exit::cli::FAILED
}

/// The last upgrade as this image records it: which version runs now, and whether it is the old one again.
fn upgrade_record(mut upgrade: UpgradeStatus, rolled_back: Option<String>) -> UpgradeStatus {
    upgrade.to_version = env!("CARGO_PKG_VERSION").to_owned();
    if let Some(reason) = rolled_back {
        upgrade.ok = false;
        upgrade.error = Some(format!("rolled back: {reason}"));
    }
    upgrade
}

/// Rebuilds the master from the handed-over state.
fn take_over(mut state: State, rolled_back: Option<String>) -> Result<Master, String> {
    let host = &state.host;
    let dirs = crate::rundir::HostDirs::open(&host.pid_root, &host.status_root, &host.name, false)
        .map_err(|e| e.to_string())?
        .ok_or("the run directories are gone")?;
    let plugins = dirs.plugins(true).map_err(|e| e.to_string())?.ok_or("the plugins directory is gone")?;
    let events = super::events::Events::new(&super::signals::handled()).map_err(|e| e.to_string())?;
    let mut captures = super::capture::Captures::new().map_err(|e| e.to_string())?;
    let notifier = crate::notify::Notifier::from_env();
    let Handed { board, reports, report_tx, pid_file } = reopen_handed(&mut state, &dirs)?;
    captures.take_over(state.captures).map_err(|e| e.to_string())?;
    let upgrade = upgrade_record(state.upgrade, rolled_back);
    announce(&state.host, &upgrade, state.workers.len());
    let mut master = Master {
        host: state.host,
        tasks: state.tasks,
        workers: state.workers.into_iter().map(|w| (w.pid, w)).collect::<BTreeMap<Pid, Worker>>(),
        board,
        events,
        reports,
        report_tx,
        pid_file,
        dirs,
        plugins,
        ready: None,
        phase: HostPhase::Running,
        reports_held_until: None,
        startup: None,
        generation: state.generation,
        next_generation: state.next_generation,
        rollout: None,
        restart_queue: Default::default(),
        last_restart: state.last_restart,
        last_scale: state.last_scale,
        scale_waited: None,
        started_wall: state.started_wall,
        next_tick: state.next_tick,
        dirty: true,
        snapshot_wanted: true,
        snapshot_acks: state.snapshot_acks.into_iter().map(Pid::from_raw).collect(),
        plugin_log_level: state.plugin_log_level,
        status_write_failed: false,
        config_path: state.config_path,
        overrides: state.overrides,
        next_supervision: state.next_supervision,
        scale_signals: 0,
        next_watchdog: notifier.as_ref().and_then(|n| n.watchdog_interval()).map(|i| Mono::now() + i),
        notifier,
        forced_stop: false,
        stop_requesters: Vec::new(),
        captures,
        inherited_nofile: state.inherited_nofile,
        log: state.log,
        binary: state.binary,
        upgrade_wanted: None,
        last_upgrade: Some(upgrade),
        dirty_host: true,
        last_publish: None,
        orphan_scan_at: None,
        last_orphan_scan: None,
        // The previous image's zygotes were ended before the exec (a zygote is a cache); new ones start on demand.
        zygotes: Vec::new(),
        spawning: Default::default(),
        deadlines: Default::default(),
        recheck: Vec::new(),
        recheck_all: true,
        plugin_watch: None,
    };
    master.index_workers();
    // Watches do not cross the exec: place them again, and look at each file once (it may have changed meanwhile).
    master.sync_watches(true);
    master.restore_watch_tried(state.watch_tried);
    if let Some(notifier) = &mut master.notifier {
        notifier.ready("running");
    }
    Ok(master)
}

/// Titles this image as the master and logs that it took over.
fn announce(host: &HostSettings, upgrade: &UpgradeStatus, workers: usize) {
    let title = host.master_title();
    crate::title::set(&title);
    crate::logging::set_title(&title);
    info!(
        pid = std::process::id(),
        workers,
        ok = upgrade.ok,
        "master re-executed in place ({} to {})",
        upgrade.from_version,
        upgrade.to_version
    );
}

/// What the master reopens from the descriptors the previous image handed over.
struct Handed {
    board: crate::scoreboard::Scoreboard,
    reports: crate::report::ReportReader,
    report_tx: OwnedFd,
    pid_file: Option<crate::pidfile::PidFile>,
}

/// The scoreboard, the report pipe's two ends and the locked pid file, from duplicates of the handed-over
/// descriptors: never taken, so should anything fail, the old image takes over again with every original still
/// open (see `resume`, which closes the originals once the new master runs).
fn reopen_handed(state: &mut State, dirs: &crate::rundir::HostDirs) -> Result<Handed, String> {
    let cells: Vec<_> = state.workers.iter().map(|w| w.cell).collect();
    let (memfd, report_fd, report_tx) =
        (duplicate(state.scoreboard_fd)?, duplicate(state.report_fd)?, duplicate(state.report_tx_fd)?);
    let pid_fd = (state.pid_file_fd >= 0).then(|| duplicate(state.pid_file_fd)).transpose()?;
    let board = crate::scoreboard::Scoreboard::from_fd(memfd, &cells).map_err(|e| e.to_string())?;
    let reports = crate::report::ReportReader::handed_over(report_fd, std::mem::take(&mut state.report_pending));
    let pid_file = pid_fd
        .map(|fd| crate::pidfile::PidFile::handed_over(dirs.pid_root(), &state.host.name, fd))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Handed { board, reports, report_tx, pid_file })
}

/// A close-on-exec duplicate of a descriptor the previous image handed over.
pub(super) fn duplicate(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: the previous image kept `fd` open across execve; it is only borrowed for the duplication.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().map_err(|e| format!("handed-over descriptor {fd}: {e}"))
}

/// The descriptors the previous image handed over, by number (closed once this image runs on its duplicates).
fn handed_fds(state: &State) -> Vec<RawFd> {
    let mut fds = vec![state.scoreboard_fd, state.report_fd, state.report_tx_fd];
    fds.extend((state.pid_file_fd >= 0).then_some(state.pid_file_fd));
    fds.extend(state.captures.iter().map(|c| c.fd));
    fds.extend(super::handed::staged::held_fds());
    fds
}
