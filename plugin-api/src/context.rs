//! The contexts the host hands to a job: what `init` and `work` may know about where they run.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use abi_stable::StableAbi;
use abi_stable::std_types::RStr;
use serde::de::DeserializeOwned;

use crate::JobError;
use crate::ffi::HostLogger;
use crate::stop;

/// What a job learns once, when its worker starts: the task it belongs to, its worker slot and its settings.
///
/// ```
/// # use pmhost_plugin_api::{InitContext, JobError};
/// #[derive(serde::Deserialize)]
/// struct Settings { queue: String, #[serde(default)] batch: u32 }
///
/// fn connect(ctx: &InitContext<'_>) -> Result<Settings, JobError> {
///     let settings: Settings = ctx.config()?;
///     // pmhost adds the task, slot, pid and generation to every line a job logs.
///     tracing::info!(queue = %settings.queue, "connecting");
///     Ok(settings)
/// }
/// ```
#[repr(C)]
#[derive(StableAbi)]
pub struct InitContext<'a> {
    task: RStr<'a>,
    config_json: RStr<'a>,
    slot: u32,
    generation: u32,
    pid: i32,
    stop: &'a AtomicBool,
    stop_fd: RawFd,
    logger: HostLogger,
}

impl<'a> InitContext<'a> {
    /// Host side. `stop_fd` must stay open for the life of the process (plugins may keep it).
    #[doc(hidden)]
    #[expect(clippy::too_many_arguments, reason = "one argument per field of this repr(C) struct, host side only")]
    pub fn new(
        task: &'a str,
        config_json: &'a str,
        slot: u32,
        generation: u32,
        pid: i32,
        stop: &'a AtomicBool,
        stop_fd: RawFd,
        logger: HostLogger,
    ) -> Self {
        Self {
            task: RStr::from_str(task),
            config_json: RStr::from_str(config_json),
            slot,
            generation,
            pid,
            stop,
            stop_fd,
            logger,
        }
    }

    /// The task's name (`--name`, or `name` of the `[[task]]` in `pmhost.toml`).
    pub fn task(&self) -> &str {
        self.task.as_str()
    }

    /// The worker slot, `0..workers`. A replacement worker gets the slot of the one it replaces.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The rollout generation: 1 at start, one more on every `pmhost restart`.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The task's `[task.config]` table, deserialized into your own type.
    ///
    /// A task without a config table reads as an empty table, so a struct whose fields all have
    /// `#[serde(default)]` always deserializes.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        let invalid =
            |e: serde_json::Error| JobError::msg(format!("invalid [task.config] for task {}: {e}", self.task()));
        // Through a `Value`: the JSON is the host's conversion of the user's TOML, and an error from parsing it
        // would end in a line and column of that text, which the user never wrote.
        let table: serde_json::Value = serde_json::from_str(self.config_json.as_str()).map_err(invalid)?;
        T::deserialize(table).map_err(invalid)
    }

    /// The task's config table as JSON text.
    pub fn config_json(&self) -> &str {
        self.config_json.as_str()
    }

    /// Whether the host asked this worker to stop (a slow `init` may give up early).
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A descriptor that becomes readable when the host asks this worker to stop; the same one as
    /// [`WorkContext::stop_fd`]. See there.
    pub fn stop_fd(&self) -> BorrowedFd<'static> {
        stop::borrow(self.stop_fd)
    }

    /// Sleeps for `length`, or less if the host asks this worker to stop: returns `true` after the full pause,
    /// `false` on a stop request (at once, also when the request came before the call).
    pub fn sleep(&self, length: Duration) -> bool {
        stop::sleep(self.stop, self.stop_fd, length)
    }

    /// Resolves when the host asks this worker to stop (feature `tokio`); see [`WorkContext::stopped`].
    #[cfg(feature = "tokio")]
    pub async fn stopped(&self) {
        stop::stopped(self.stop, self.stop_fd).await
    }

    pub(crate) fn logger(&self) -> HostLogger {
        self.logger
    }
}

/// What a job learns on every `work` call.
///
/// ```
/// # use pmhost_plugin_api::{Outcome, WorkContext};
/// fn drain(ctx: &WorkContext<'_>, queue: &mut Vec<u32>) -> Outcome {
///     while let Some(item) = queue.pop() {
///         if ctx.stop_requested() {
///             queue.push(item); // keep it for the next worker: stop early, lose nothing
///             break;
///         }
///         tracing::debug!(item, call = ctx.execution(), "handled");
///     }
///     Outcome::Continue
/// }
/// ```
#[repr(C)]
#[derive(StableAbi)]
pub struct WorkContext<'a> {
    execution: u64,
    slot: u32,
    generation: u32,
    stop: &'a AtomicBool,
    stop_fd: RawFd,
}

impl<'a> WorkContext<'a> {
    /// Host side. `stop_fd` must stay open for the life of the process (plugins may keep it).
    #[doc(hidden)]
    pub fn new(slot: u32, generation: u32, stop: &'a AtomicBool, stop_fd: RawFd) -> Self {
        Self { execution: 0, slot, generation, stop, stop_fd }
    }

    #[doc(hidden)]
    #[inline]
    pub fn set_execution(&mut self, execution: u64) {
        self.execution = execution;
    }

    /// Which call this is in this worker: 1 for the first.
    #[inline]
    pub fn execution(&self) -> u64 {
        self.execution
    }

    /// The worker slot, `0..workers`.
    #[inline]
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The rollout generation this worker belongs to.
    #[inline]
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether the host asked this worker to stop. The host never interrupts a `work` call: a long call
    /// should check this now and then and return early, leaving unfinished input for the next worker.
    #[inline]
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A descriptor that becomes readable when the host asks this worker to stop, for a job that blocks in
    /// I/O: wait on it together with your socket (`poll`, `mio`, `tokio::io::unix::AsyncFd`) and you are woken
    /// at once by a stop request instead of when your read times out.
    ///
    /// It stays open, and once readable stays readable, for the life of the worker, so it may be registered
    /// once in `init` and kept. Wait for it to become readable; never read from it (reading would consume the
    /// wake-up) and never close it.
    ///
    /// ```
    /// # use pmhost_plugin_api::WorkContext;
    /// use std::os::fd::{AsFd, AsRawFd};
    ///
    /// /// Waits until `socket` has data (true) or a stop is requested (false).
    /// fn wait_for_input(ctx: &WorkContext<'_>, socket: &impl AsFd) -> bool {
    ///     let mut fds = [
    ///         libc::pollfd { fd: socket.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ///         libc::pollfd { fd: ctx.stop_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ///     ];
    ///     loop {
    ///         // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
    ///         let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    ///         if ready > 0 {
    ///             return fds[1].revents == 0;
    ///         }
    ///     }
    /// }
    /// ```
    pub fn stop_fd(&self) -> BorrowedFd<'static> {
        stop::borrow(self.stop_fd)
    }

    /// Sleeps for `length`, or less if the host asks this worker to stop: returns `true` after the full pause,
    /// `false` on a stop request (at once, also when the request came before the call). A job that backs off
    /// (the queue is empty, a server is down) sleeps with this, so a stop or restart never waits for the pause.
    ///
    /// ```
    /// # use pmhost_plugin_api::{Outcome, WorkContext};
    /// # use std::time::Duration;
    /// fn poll_queue(ctx: &WorkContext<'_>, fetch: impl Fn() -> Option<String>) -> Outcome {
    ///     loop {
    ///         match fetch() {
    ///             Some(job) => return Outcome::from(handle(&job)),
    ///             // Nothing to do: wait a second, unless pmhost stops this worker meanwhile.
    ///             None if ctx.sleep(Duration::from_secs(1)) => continue,
    ///             None => return Outcome::Continue,
    ///         }
    ///     }
    /// }
    /// # fn handle(_job: &str) -> Result<(), std::io::Error> { Ok(()) }
    /// ```
    pub fn sleep(&self, length: Duration) -> bool {
        stop::sleep(self.stop, self.stop_fd, length)
    }

    /// Resolves when the host asks this worker to stop, at once if it already has (feature `tokio`). Await it
    /// beside your I/O in a `tokio::select!`, so a job waiting for input returns as soon as pmhost stops or
    /// restarts the worker; see [`AsyncJob`](crate::AsyncJob) for an example. Await it on the worker's runtime
    /// (inside `init`, `work` or `shutdown` of an `AsyncJob`, or a task spawned there).
    #[cfg(feature = "tokio")]
    pub async fn stopped(&self) {
        stop::stopped(self.stop, self.stop_fd).await
    }
}
