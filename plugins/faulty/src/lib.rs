//! Test fixture: a plugin that misbehaves on request. Its `[task.config]` (or `--task-config` JSON) picks what
//! `init`, `work` and `shutdown` do, so each fault pmhost must survive is one config away.
//!
//! Every `work` call can append a marker line `pid slot generation call monotonic_ns` to `marker_file`, and
//! `shutdown` appends `shutdown pid calls` to `shutdown_file`, so tests observe the worker from outside.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use pmhost_plugin_api::tracing::{error, info};
use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext, export_job};

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// `ok`, `fail`, `panic`, `abort`.
    init: Option<String>,
    /// Message of `init = "fail"` and of panics.
    message: Option<String>,
    /// Time `init` takes (in the slots that misbehave).
    init_ms: u64,
    /// `ok`, `panic`, `abort`, `segfault`, `exit`, `hang`, `retire`, `fail`, `grow`, `spawn`, `flood`, `block`
    /// (wait for the stop descriptor with no timeout, as a blocking read would), `nap` (`ctx.sleep` for an hour),
    /// `fork` (once per worker: a child that calls `exit` at once, waited for), `unload` (unloads the library
    /// named by `$FAULTY_LOAD_AT_START`, which the plugin loaded as it was itself loaded).
    work: Option<String>,
    /// The misbehaviour starts at this call (1 = the first).
    from_call: u64,
    /// Only this slot misbehaves (others behave).
    only_slot: Option<u32>,
    /// Exit code of `work = "exit"`.
    exit_code: i32,
    /// Time each `work` call takes (a sleep that ignores stop requests, unless `stop_aware`).
    work_ms: u64,
    /// A long `work` call returns early when a stop is requested.
    stop_aware: bool,
    /// Memory added per call by `work = "grow"`, in MiB.
    grow_mib: u64,
    /// Command run in the background by `work = "spawn"` (once per worker).
    spawn: Option<String>,
    /// File that receives a line per `work` call.
    marker_file: Option<String>,
    /// File that receives a line when `shutdown` runs.
    shutdown_file: Option<String>,
    /// `shutdown` panics.
    shutdown_panics: bool,
    /// A build label written into marker lines (tells builds apart in restart tests).
    label: Option<String>,
    /// A file `init` reads when it starts: `ok`, `fail MESSAGE`, `panic MESSAGE` or `slow MILLISECONDS` (in the
    /// slots that misbehave). Lets a test change how the next workers start (for restarts) without changing the
    /// config.
    control_file: Option<String>,
    /// A file `init` writes the value of `$NOTIFY_SOCKET` to (`-` when unset): workers must not inherit it.
    env_file: Option<String>,
    /// A file `init` creates (with the default mode, so the umask shows) and fills with how the worker runs:
    /// `uid U`, `gid G`, `cwd DIR`, then `env NAME=VALUE` per variable, sorted.
    probe_file: Option<String>,
    /// Printed with `println!` on every call (`{call}` is replaced by the call number, `{pid}` by the worker's pid).
    println: Option<String>,
    /// Written as is to file descriptor 1 with `write(2)` on every call (no newline added).
    raw_stdout: Option<String>,
    /// Written as is to file descriptor 2 with `write(2)` on every call, as a C library would.
    raw_stderr: Option<String>,
    /// A line of this many bytes (`x`s and a newline) written to stdout on the first call.
    long_line: usize,
    /// Every call writes `stdout was blocking` or `stdout was non-blocking` (how it found its stdout), then makes
    /// its stdout non-blocking, as a program that polls its output would.
    nonblocking_stdout: bool,
    /// While this file exists, every call asks to retire its worker (after whatever the call does).
    retire_file: Option<String>,
}

struct Faulty {
    config: Config,
    slot: u32,
    generation: u32,
    calls: u64,
    hoard: Vec<Vec<u8>>,
    spawned: bool,
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn append(path: &str, line: &str) {
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(line.as_bytes());
    }
}

/// Writes all of `bytes` to descriptor `fd`, as C code would.
fn raw_write(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write from a live buffer to a descriptor this process has open.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

impl Faulty {
    /// The output each call writes (see the `println`, `raw_*` and `long_line` settings).
    fn print(&self, call: u64) {
        let fill =
            |text: &str| text.replace("{call}", &call.to_string()).replace("{pid}", &std::process::id().to_string());
        if let Some(text) = &self.config.println {
            println!("{}", fill(text));
        }
        if let Some(text) = &self.config.raw_stdout {
            raw_write(1, fill(text).as_bytes());
        }
        if let Some(text) = &self.config.raw_stderr {
            raw_write(2, fill(text).as_bytes());
        }
        if self.config.nonblocking_stdout {
            // SAFETY: reads and sets the status flags of descriptor 1; no memory is involved.
            let flags = unsafe { libc::fcntl(1, libc::F_GETFL) };
            let found = if flags & libc::O_NONBLOCK == 0 { "blocking" } else { "non-blocking" };
            raw_write(1, format!("stdout was {found}\n").as_bytes());
            // SAFETY: as above.
            unsafe { libc::fcntl(1, libc::F_SETFL, flags | libc::O_NONBLOCK) };
        }
        if self.config.long_line > 0 && call == 1 {
            let mut line = vec![b'x'; self.config.long_line];
            line.push(b'\n');
            raw_write(1, &line);
        }
    }

    fn message(&self, default: &str) -> String {
        self.config.message.clone().unwrap_or_else(|| default.to_owned())
    }

    fn misbehaves(&self) -> bool {
        self.calls >= self.config.from_call.max(1) && self.config.only_slot.is_none_or(|slot| slot == self.slot)
    }
}

impl Job for Faulty {
    fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
        let config: Config = ctx.config()?;
        let me = Faulty {
            config,
            slot: ctx.slot(),
            generation: ctx.generation(),
            calls: 0,
            hoard: Vec::new(),
            spawned: false,
        };
        let applies = me.config.only_slot.is_none_or(|slot| slot == ctx.slot());
        if let Some(path) = &me.config.env_file {
            let value = std::env::var("NOTIFY_SOCKET").unwrap_or_else(|_| "-".to_owned());
            append(path, &format!("{value}\n"));
        }
        if let Some(path) = &me.config.probe_file {
            // SAFETY: getuid and getgid cannot fail and touch no memory.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|e| e.to_string());
            let mut vars: Vec<String> = std::env::vars_os()
                .map(|(k, v)| format!("env {}={}", k.to_string_lossy(), v.to_string_lossy()))
                .collect();
            vars.sort();
            let text = format!("uid {uid}\ngid {gid}\ncwd {cwd}\n{}\n", vars.join("\n"));
            std::fs::write(path, text).map_err(|e| JobError::msg(format!("cannot write probe file {path}: {e}")))?;
        }
        if let Some(path) = me.config.control_file.as_ref().filter(|_| applies) {
            let order = std::fs::read_to_string(path).unwrap_or_default();
            let (verb, rest) = order.trim().split_once(' ').unwrap_or((order.trim(), ""));
            match verb {
                "fail" => return Err(JobError::msg(rest.to_owned())),
                "panic" => panic!("{rest}"),
                "slow" => std::thread::sleep(Duration::from_millis(rest.parse().unwrap_or(1000))),
                _ => {}
            }
        }
        if me.config.init_ms > 0 && applies {
            std::thread::sleep(Duration::from_millis(me.config.init_ms));
        }
        match me.config.init.as_deref() {
            Some("fail") if applies => return Err(JobError::msg(me.message("database unreachable"))),
            Some("panic") if applies => panic!("{}", me.message("init exploded")),
            Some("abort") if applies => std::process::abort(),
            _ => {}
        }
        info!("faulty ready");
        Ok(me)
    }

    fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
        self.calls += 1;
        self.print(ctx.execution());
        if let Some(path) = &self.config.marker_file {
            let label = self.config.label.as_deref().unwrap_or("-");
            let line = format!(
                "{} {} {} {} {} {}\n",
                std::process::id(),
                self.slot,
                self.generation,
                ctx.execution(),
                monotonic_ns(),
                label
            );
            append(path, &line);
        }
        if self.config.work_ms > 0 {
            let until = Instant::now() + Duration::from_millis(self.config.work_ms);
            while Instant::now() < until && !(self.config.stop_aware && ctx.stop_requested()) {
                std::thread::sleep(Duration::from_millis(5).min(until - Instant::now()));
            }
        }
        if self.config.retire_file.as_deref().is_some_and(|f| std::path::Path::new(f).exists()) {
            return Outcome::Retire;
        }
        if !self.misbehaves() {
            return Outcome::Continue;
        }
        match self.config.work.as_deref() {
            Some("panic") => panic!("{}", self.message("work exploded")),
            Some("abort") => std::process::abort(),
            Some("segfault") => {
                // SAFETY: deliberately not: this fixture crashes with SIGSEGV on request.
                unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
                Outcome::Continue
            }
            Some("exit") => std::process::exit(self.config.exit_code),
            Some("hang") => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            Some("block") => {
                let mut entry = libc::pollfd { fd: ctx.stop_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd living through the call.
                while unsafe { libc::poll(&mut entry, 1, -1) } <= 0 {}
                info!("stop descriptor readable");
                Outcome::Continue
            }
            Some("nap") => {
                let slept = ctx.sleep(Duration::from_secs(3600));
                info!(slept, "nap ended");
                Outcome::Continue
            }
            Some("retire") => Outcome::Retire,
            Some("flood") => {
                // As fast as the pipe takes it, until asked to stop.
                let block = "flood flood flood flood flood flood flood flood flood flood flood flood\n".repeat(800);
                while !ctx.stop_requested() {
                    raw_write(1, block.as_bytes());
                }
                Outcome::Continue
            }
            Some("fail") => Outcome::failed(self.message("work failed")),
            Some("grow") => {
                let mut block = vec![0u8; (self.config.grow_mib.max(1) * 1024 * 1024) as usize];
                // Touch every page so the memory is resident.
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                self.hoard.push(block);
                Outcome::Continue
            }
            Some("spawn") if !self.spawned => {
                self.spawned = true;
                let command = self.config.spawn.clone().unwrap_or_else(|| "sleep 1000".to_owned());
                match std::process::Command::new("sh").arg("-c").arg(&command).spawn() {
                    Ok(child) => info!(child = child.id(), "spawned helper"),
                    Err(e) => error!("cannot spawn helper: {e}"),
                }
                Outcome::Continue
            }
            Some("unload") => {
                let handle = LOADED_AT_START.swap(std::ptr::null_mut(), std::sync::atomic::Ordering::Relaxed);
                if !handle.is_null() {
                    // SAFETY: a handle `dlopen` returned, closed once (it was swapped out).
                    unsafe { libc::dlclose(handle) };
                    info!("unloaded the library loaded at start");
                }
                Outcome::Continue
            }
            Some("fork") if !self.spawned => {
                self.spawned = true;
                // SAFETY: the worker is single-threaded; the child only calls `exit` (running the process's exit
                // handlers and destructors, as a pre-forking plugin's helper would when it is done).
                match unsafe { libc::fork() } {
                    0 => std::process::exit(0),
                    -1 => error!("cannot fork"),
                    child => {
                        let mut status = 0;
                        // SAFETY: waits for the child just forked, into a local.
                        unsafe { libc::waitpid(child, &mut status, 0) };
                        info!(child, status, "forked child exited");
                    }
                }
                Outcome::Continue
            }
            _ => Outcome::Continue,
        }
    }

    fn shutdown(&mut self) {
        if let Some(path) = &self.config.shutdown_file {
            append(path, &format!("shutdown {} {}\n", std::process::id(), self.calls));
        }
        if self.config.shutdown_panics {
            panic!("shutdown exploded");
        }
    }
}

export_job!(Faulty);

/// The library named by `$FAULTY_LOAD_AT_START`, loaded by this plugin's constructor (in the process that loads
/// the plugin, before any `init`) and unloaded by `work = "unload"`.
static LOADED_AT_START: std::sync::atomic::AtomicPtr<libc::c_void> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

extern "C" fn load_at_start() {
    let Some(path) = std::env::var_os("FAULTY_LOAD_AT_START") else { return };
    let Ok(path) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())) else { return };
    // SAFETY: loads a library the test named, with a valid path string.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    LOADED_AT_START.store(handle, std::sync::atomic::Ordering::Relaxed);
}

#[used]
#[unsafe(link_section = ".init_array")]
static LOAD_AT_START: extern "C" fn() = load_at_start;
