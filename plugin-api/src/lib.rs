//! # pmhost-plugin-api: write a background job that pmhost runs
//!
//! A pmhost *plugin* is a Rust library built as a `cdylib`. pmhost forks workers; each worker loads the plugin,
//! calls [`Job::init`] once and then [`Job::work`] in a loop, within the task's limits (`execute_times` calls,
//! `limit_seconds` of life, `execute_usleep` between calls). This crate is the only one a plugin depends on.
//!
//! ## The whole plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "mailer"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! pmhost-plugin-api = "0.2"
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext, export_job};
//!
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     #[serde(default = "default_batch")]
//!     batch: usize,
//! }
//! fn default_batch() -> usize { 10 }
//!
//! struct Mailer {
//!     settings: Settings,
//!     sent: u64,
//! }
//!
//! impl Job for Mailer {
//!     fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
//!         // Open connections here: init runs once per worker, in the worker process.
//!         let settings: Settings = ctx.config()?;
//!         pmhost_plugin_api::tracing::info!(batch = settings.batch, "mailer ready");
//!         Ok(Mailer { settings, sent: 0 })
//!     }
//!
//!     fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
//!         for _ in 0..self.settings.batch {
//!             if ctx.stop_requested() {
//!                 break; // pmhost is stopping: return soon, the rest waits for the next worker
//!             }
//!             self.sent += 1;
//!         }
//!         Outcome::Continue
//!     }
//!
//!     fn shutdown(&mut self) {
//!         pmhost_plugin_api::tracing::info!(sent = self.sent, "mailer done");
//!     }
//! }
//!
//! export_job!(Mailer);
//! # fn main() {}
//! ```
//!
//! Build and run it:
//!
//! ```text
//! cargo build --release
//! pmhost start --plugin target/release/libmailer.so --name mailer --workers 4 --execute-times 0
//! ```
//!
//! ## What the host promises
//!
//! - **`init`** runs once per worker, after the fork, so connections and threads you open there belong to that
//!   worker. Return an error to refuse to start: on a fresh `pmhost start` the start fails with your message; on a
//!   `pmhost restart` the rollout is rolled back and the old workers keep running.
//! - **`work`** is never interrupted by the host. When pmhost stops or replaces a worker it sets
//!   [`WorkContext::stop_requested`] and makes [`WorkContext::stop_fd`] readable; a call in flight finishes,
//!   then [`Job::shutdown`] runs and the worker exits. A long call should check the flag and return early; a
//!   call that blocks (waiting for input, backing off) should wait on the stop descriptor too, or pause with
//!   [`WorkContext::sleep`], so that a stop or restart never waits for it (see below).
//! - **[`Outcome`]** says what happens next: `Continue`, `Retire` (exit cleanly now; a fresh worker takes the slot)
//!   or `Failed(message)` (logged at error level; the loop goes on).
//! - **Panics** never cross into the host: a panic in `init` fails the worker like an error (with the panic message
//!   and location), a panic in `work` or `shutdown` ends the worker as a crash, which pmhost logs and replaces
//!   with backoff.
//! - **Logging**: use `tracing` (re-exported as [`tracing`]). Events reach the host's run log with the task, slot and
//!   pid of the worker. Events above the host's level are filtered inside the plugin and cost next to nothing.
//! - **Config**: the task's `[task.config]` table in `pmhost.toml` reaches `init` through [`InitContext::config`].
//!
//! ## Jobs that block: the stop descriptor
//!
//! A queue consumer spends its idle time blocked: in a read on a socket, a long poll, a `LISTEN`, a back-off
//! pause. The host cannot interrupt that, and would otherwise wait out its stop timeout and kill the worker.
//! Instead, wait on [`WorkContext::stop_fd`] beside your own descriptor (it becomes readable on a stop request
//! and stays readable), and pause with [`WorkContext::sleep`], which returns `false` at once on a stop request.
//! Here a consumer takes messages from a datagram socket, one per call, and returns as soon as pmhost stops it:
//!
//! ```
//! use std::os::fd::{AsFd, AsRawFd};
//! use std::os::unix::net::UnixDatagram;
//! use std::time::Duration;
//!
//! use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext, export_job};
//!
//! struct Consumer {
//!     socket: UnixDatagram,
//! }
//!
//! impl Job for Consumer {
//!     fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
//!         let path = format!("/run/myjob/{}.sock", ctx.slot());
//!         let _ = std::fs::remove_file(&path);
//!         Ok(Consumer { socket: UnixDatagram::bind(path)? })
//!     }
//!
//!     fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
//!         // Wait for a message or a stop request, whichever comes first; no timeout needed.
//!         let mut fds = [
//!             libc::pollfd { fd: self.socket.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
//!             libc::pollfd { fd: ctx.stop_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
//!         ];
//!         // SAFETY: two valid pollfd structs, alive for the call.
//!         if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } <= 0 || fds[1].revents != 0 {
//!             return Outcome::Continue; // a stop request (or a signal): return, the host shuts down
//!         }
//!         let mut message = [0u8; 4096];
//!         match self.socket.recv(&mut message) {
//!             Ok(length) => handle(&message[..length]),
//!             // The source is unwell: back off for a second, unless pmhost stops us meanwhile.
//!             Err(e) => {
//!                 ctx.sleep(Duration::from_secs(1));
//!                 Outcome::failed(e)
//!             }
//!         }
//!     }
//! }
//! # fn handle(_message: &[u8]) -> Outcome { Outcome::Continue }
//!
//! export_job!(Consumer);
//! # fn main() {}
//! ```
//!
//! With `mio` or tokio, register the descriptor like any other (`SourceFd(&ctx.stop_fd().as_raw_fd())`,
//! `AsyncFd`): it stays open for the worker's life, so it may be registered once in `init`. Never read from it
//! or close it.
//!
//! ## Async jobs (feature `tokio`)
//!
//! Clients that are async (tokio-postgres, lapin, rdkafka, reqwest) fit `AsyncJob` (enable the `tokio`
//! feature: `pmhost-plugin-api = { version = "0.2", features = ["tokio"] }`): the same three calls as `async fn`s,
//! exported with `export_async_job!`. The host builds a tokio runtime in each worker after the fork
//! (current-thread unless the job asks for another), runs each call to completion on it, catches panics as for
//! sync jobs, and `WorkContext::stopped` is a future that resolves on a stop request, to `select!` beside the
//! job's own I/O. The trait's documentation has a complete consumer; `examples/pg-queue` in the pmhost
//! repository is a PostgreSQL queue consumer built this way. Without the feature, a plugin gets no tokio
//! dependency.
//!
//! ## Compatibility
//!
//! The host loads a plugin built against a compatible version of this crate only (the same `0.y` while below
//! 1.0) and refuses any other with one sentence naming both versions: rebuild it against the host's version.
//! The promise, with its table, is in [the crate's README](https://crates.io/crates/pmhost-plugin-api#compatibility)
//! (`plugin-api/README.md` in the pmhost repository).
//!
//! ## Unit tests (feature `testing`)
//!
//! `testing::Worker` runs a job's `init`, `work` and `shutdown` in a unit test without a host, as a worker of
//! pmhost would; see the module `testing` (enable the feature in `[dev-dependencies]`; docs.rs shows it).

#![warn(missing_docs)]

#[cfg(feature = "tokio")]
mod asynchronous;
mod bridge;
mod context;
mod export;
#[doc(hidden)]
pub mod ffi;
mod outcome;
mod stop;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "tokio")]
pub use asynchronous::AsyncJob;
pub use context::{InitContext, WorkContext};
pub use outcome::{JobError, Outcome};
pub use tracing;

/// The version of this crate, which is the plugin interface version. A plugin and the host must agree on it
/// (the same `0.y` while below 1.0).
///
/// ```
/// assert!(pmhost_plugin_api::API_VERSION.starts_with("0."));
/// ```
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A background job: the one trait a plugin implements.
///
/// The type is created in every worker by [`init`](Job::init) and lives until the worker ends.
///
/// ```
/// use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext};
///
/// /// Counts to a limit, then asks for a fresh worker.
/// struct Counter { seen: u64, limit: u64 }
///
/// impl Job for Counter {
///     fn init(_ctx: &InitContext<'_>) -> Result<Self, JobError> {
///         Ok(Counter { seen: 0, limit: 1000 })
///     }
///     fn work(&mut self, _ctx: &WorkContext<'_>) -> Outcome {
///         self.seen += 1;
///         if self.seen >= self.limit { Outcome::Retire } else { Outcome::Continue }
///     }
/// }
/// ```
pub trait Job: Sized + 'static {
    /// Prepares the job in a fresh worker (connections, caches). An error refuses to start this worker.
    fn init(ctx: &InitContext<'_>) -> Result<Self, JobError>;

    /// Does one unit of work. Called in a loop, `execute_usleep` apart, until a limit or a stop request.
    fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome;

    /// Releases what `init` acquired. Runs when the worker ends normally: limits reached, `Retire`, or a graceful
    /// stop or restart (not after a crash or a forced kill).
    fn shutdown(&mut self) {}
}

#[doc(hidden)]
pub mod __private {
    #[cfg(feature = "tokio")]
    pub use crate::asynchronous::OnRuntime;
    pub use crate::export::{API_VERSION_CSTR, API_VERSION_LEN, root_module};
    pub use crate::ffi::PluginModuleRef;
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, ROOT_MODULE_LOADER_NAME, RootModuleResult,
    };
}

/// The README's examples, compiled and run as doc tests (not rendered: the README is the crate's page on
/// crates.io, these docs are docs.rs's).
#[cfg(all(doctest, feature = "testing"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    #[test]
    fn export_job_exports_the_symbol_the_loader_looks_up() {
        // export_job! hard-codes abi_stable's mangled loader symbol name; it must be the one abi_stable looks up.
        assert_eq!(crate::__private::ROOT_MODULE_LOADER_NAME, "_1as_0lib_1header_0root_bmodule_bloader");
    }

    #[test]
    fn api_version_c_string_is_nul_terminated_version() {
        let bytes = crate::__private::API_VERSION_CSTR;
        assert_eq!(bytes.last(), Some(&0));
        assert_eq!(std::str::from_utf8(&bytes[..bytes.len() - 1]).unwrap(), crate::API_VERSION);
    }
}
