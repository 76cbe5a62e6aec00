//! Async jobs (feature `tokio`): the `AsyncJob` trait, and the sync `Job` that runs one on a tokio runtime built
//! in the worker.

use crate::context::{InitContext, WorkContext};
use crate::{Job, JobError, Outcome};

/// A background job written with `async fn`s, for clients that are async (tokio-postgres, lapin, rdkafka,
/// reqwest). Export it with [`export_async_job!`](crate::export_async_job).
///
/// The host builds a tokio runtime in each worker, after the fork and before `init` (never in the master), from
/// [`runtime`](AsyncJob::runtime): a current-thread runtime unless you ask for another. Then:
///
/// - `init`, every `work` call and `shutdown` each run to completion on that runtime (`block_on` on the worker's
///   thread). A stop request never cancels a call in flight: like a sync job, a long call ends early by choice,
///   awaiting [`WorkContext::stopped`] alongside its I/O (`tokio::select!`).
/// - Tasks you `tokio::spawn` (a connection driver, say) live as long as the runtime, i.e. the worker. On a
///   current-thread runtime they make progress only while a call is running; ask for a multi-thread runtime if
///   they must run between calls.
/// - A panic in `init`, `work` or `shutdown` is caught like a sync job's (the message and location reach the
///   host's log). A panic in a spawned task is tokio's business: its `JoinHandle` returns the error.
///
/// A queue consumer that waits for input without polling, and is woken at once by a stop request:
///
/// ```
/// use std::time::Duration;
///
/// use pmhost_plugin_api::{AsyncJob, InitContext, JobError, Outcome, WorkContext, export_async_job};
/// use tokio::sync::mpsc;
///
/// struct Consumer {
///     inbox: mpsc::Receiver<String>,
///     handled: u64,
/// }
///
/// impl AsyncJob for Consumer {
///     async fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
///         // Connect here (a real consumer opens its client; this one feeds itself).
///         let (tx, inbox) = mpsc::channel(16);
///         let slot = ctx.slot();
///         tokio::spawn(async move {
///             let _ = tx.send(format!("hello from slot {slot}")).await;
///         });
///         Ok(Consumer { inbox, handled: 0 })
///     }
///
///     async fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
///         tokio::select! {
///             message = self.inbox.recv() => match message {
///                 Some(text) => {
///                     self.handled += 1;
///                     pmhost_plugin_api::tracing::info!(%text, "handled");
///                     Outcome::Continue
///                 }
///                 None => Outcome::Retire, // the source closed: let a fresh worker reconnect
///             },
///             // Woken by `pmhost stop` or `restart`: return, the host shuts the worker down.
///             () = ctx.stopped() => Outcome::Continue,
///             // A heartbeat, so a quiet queue still shows calls in `pmhost status`.
///             () = tokio::time::sleep(Duration::from_secs(30)) => Outcome::Continue,
///         }
///     }
///
///     async fn shutdown(&mut self) {
///         pmhost_plugin_api::tracing::info!(handled = self.handled, "consumer done");
///     }
/// }
///
/// export_async_job!(Consumer);
/// # fn main() {}
/// ```
#[expect(
    async_fn_in_trait,
    reason = "the host drives these futures with block_on on the worker's own thread: they need not be Send"
)]
pub trait AsyncJob: Sized + 'static {
    /// The runtime this job runs on; the host enables I/O and timers on it. Default: a current-thread runtime.
    ///
    /// ```
    /// # use pmhost_plugin_api::{AsyncJob, InitContext, JobError, Outcome, WorkContext};
    /// struct Crawler;
    /// impl AsyncJob for Crawler {
    ///     fn runtime() -> tokio::runtime::Builder {
    ///         // Requests spawned by `work` keep running between calls, on two threads of this worker.
    ///         let mut builder = tokio::runtime::Builder::new_multi_thread();
    ///         builder.worker_threads(2);
    ///         builder
    ///     }
    ///     async fn init(_ctx: &InitContext<'_>) -> Result<Self, JobError> { Ok(Crawler) }
    ///     async fn work(&mut self, _ctx: &WorkContext<'_>) -> Outcome { Outcome::Continue }
    /// }
    /// ```
    fn runtime() -> tokio::runtime::Builder {
        tokio::runtime::Builder::new_current_thread()
    }

    /// Prepares the job in a fresh worker (connections, caches). An error refuses to start this worker.
    async fn init(ctx: &InitContext<'_>) -> Result<Self, JobError>;

    /// Does one unit of work; runs to completion. Called in a loop, `execute_usleep` apart.
    async fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome;

    /// Releases what `init` acquired, when the worker ends normally (as [`Job::shutdown`]).
    async fn shutdown(&mut self) {}
}

/// An [`AsyncJob`] with its runtime, as the sync [`Job`] that `export_async_job!` exports.
#[doc(hidden)]
pub struct OnRuntime<J> {
    runtime: tokio::runtime::Runtime,
    job: J,
}

impl<J: AsyncJob> Job for OnRuntime<J> {
    fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
        let runtime = J::runtime()
            .enable_all()
            .build()
            .map_err(|e| JobError::msg(format!("cannot build the tokio runtime: {e}")))?;
        // A panic in a call unwinds out of `block_on` to the export glue's guard, as in a sync job.
        let job = runtime.block_on(J::init(ctx))?;
        Ok(OnRuntime { runtime, job })
    }

    fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
        self.runtime.block_on(self.job.work(ctx))
    }

    fn shutdown(&mut self) {
        self.runtime.block_on(self.job.shutdown())
    }
}

/// Exports an [`AsyncJob`] type as this library's pmhost plugin (feature `tokio`). Call it once, in the crate
/// root of a `cdylib` crate; see [`AsyncJob`] for an example.
#[macro_export]
macro_rules! export_async_job {
    ($job:ty) => {
        $crate::export_job!($crate::__private::OnRuntime<$job>);
    };
}
