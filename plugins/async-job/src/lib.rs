//! Test fixture: an async job. Its config picks what the async `init` and `work` do, so the tests can check
//! that the host runs async jobs as it runs sync ones: panics caught, `ctx.stopped()` woken by a stop, the
//! runtime built in the worker (current-thread unless `PMHOST_TEST_RUNTIME=multi` asks for two threads).
//!
//! Every `work` call appends `pid slot flavor` to `marker_file`; the async `shutdown` appends `shutdown pid
//! calls` to `shutdown_file`.

use std::io::Write;
use std::time::Duration;

use pmhost_plugin_api::tracing::info;
use pmhost_plugin_api::{AsyncJob, InitContext, JobError, Outcome, WorkContext, export_async_job};

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// `ok` (default), `fail`, `panic`.
    init: Option<String>,
    /// `ok` (default: return at once), `wait_stop` (await `ctx.stopped()`), `panic`.
    work: Option<String>,
    marker_file: Option<String>,
    shutdown_file: Option<String>,
}

struct Fixture {
    config: Config,
    slot: u32,
    calls: u64,
}

fn append(path: &str, line: &str) {
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(line.as_bytes());
    }
}

impl AsyncJob for Fixture {
    fn runtime() -> tokio::runtime::Builder {
        if std::env::var("PMHOST_TEST_RUNTIME").as_deref() == Ok("multi") {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        } else {
            tokio::runtime::Builder::new_current_thread()
        }
    }

    async fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
        let config: Config = ctx.config()?;
        tokio::task::yield_now().await;
        match config.init.as_deref() {
            Some("fail") => return Err(JobError::msg("async init refused")),
            Some("panic") => panic!("async init exploded"),
            _ => {}
        }
        Ok(Fixture { config, slot: ctx.slot(), calls: 0 })
    }

    async fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
        self.calls += 1;
        if let Some(path) = &self.config.marker_file {
            let flavor = tokio::runtime::Handle::current().runtime_flavor();
            append(path, &format!("{} {} {flavor:?}\n", std::process::id(), self.slot));
        }
        match self.config.work.as_deref() {
            Some("wait_stop") => {
                tokio::select! {
                    () = ctx.stopped() => info!("woken by the stop request"),
                    () = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
            }
            Some("panic") => {
                tokio::task::yield_now().await;
                panic!("async work exploded");
            }
            _ => {}
        }
        Outcome::Continue
    }

    async fn shutdown(&mut self) {
        tokio::task::yield_now().await;
        if let Some(path) = &self.config.shutdown_file {
            append(path, &format!("shutdown {} {}\n", std::process::id(), self.calls));
        }
    }
}

export_async_job!(Fixture);
