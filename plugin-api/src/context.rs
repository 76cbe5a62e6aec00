//! The contexts the host hands to a job: what `init` and `work` may know about where they run.

use std::sync::atomic::{AtomicBool, Ordering};

use abi_stable::StableAbi;
use abi_stable::std_types::RStr;
use serde::de::DeserializeOwned;

use crate::JobError;
use crate::ffi::HostLogger;

/// What a job learns once, when its worker starts: the task it belongs to, its worker slot and its settings.
///
/// ```
/// # use pmhost_plugin_api::{InitContext, JobError};
/// #[derive(serde::Deserialize)]
/// struct Settings { queue: String, #[serde(default)] batch: u32 }
///
/// fn connect(ctx: &InitContext<'_>) -> Result<Settings, JobError> {
///     let settings: Settings = ctx.config()?;
///     tracing::info!(task = ctx.task(), slot = ctx.slot(), queue = %settings.queue, "connecting");
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
    logger: HostLogger,
}

impl<'a> InitContext<'a> {
    #[doc(hidden)]
    pub fn new(
        task: &'a str,
        config_json: &'a str,
        slot: u32,
        generation: u32,
        pid: i32,
        stop: &'a AtomicBool,
        logger: HostLogger,
    ) -> Self {
        Self {
            task: RStr::from_str(task),
            config_json: RStr::from_str(config_json),
            slot,
            generation,
            pid,
            stop,
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
        serde_json::from_str(self.config_json.as_str())
            .map_err(|e| JobError::msg(format!("invalid [task.config] for task {}: {e}", self.task())))
    }

    /// The task's config table as JSON text.
    pub fn config_json(&self) -> &str {
        self.config_json.as_str()
    }

    /// Whether the host asked this worker to stop (a slow `init` may give up early).
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
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
}

impl<'a> WorkContext<'a> {
    #[doc(hidden)]
    pub fn new(slot: u32, generation: u32, stop: &'a AtomicBool) -> Self {
        Self { execution: 0, slot, generation, stop }
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
}
