//! `pmhost validate`: check plugins without starting anything. Each plugin is loaded in a probe process (a fork
//! of this command) that reports its API version and runs `init` and `shutdown` with the task's config; a probe
//! that crashes or hangs is reported as such, and nothing else is touched.

use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use abi_stable::std_types::RSome;
use pmhost_plugin_api::InitContext;
use pmhost_plugin_api::ffi::{HostLogger, report as plugin_report};
use serde::{Deserialize, Serialize};

use super::CommandError;
use crate::cli::ValidateArgs;
use crate::exit::cli as code;
use crate::plugin;
use crate::plugin::probe::ProbeError;
use crate::rundir::Dir;

/// What a probe found.
#[derive(Debug, Serialize, Deserialize)]
struct ProbeReport {
    api_version: Option<String>,
    init_ms: Option<u64>,
    error: Option<String>,
}

/// Runs `pmhost validate`.
pub fn validate(args: ValidateArgs) -> Result<i32, CommandError> {
    let mut failed = 0;
    let checks: Vec<(String, PathBuf, String)> = match &args.config {
        Some(path) => crate::config::load(path)?
            .tasks
            .into_iter()
            .filter_map(|t| {
                // Who the workers would run as, and where: what `start` would refuse.
                if let Some(Err(e)) = t.values.settings(&t.name).map(|s| crate::identity::check(&s.process)) {
                    failed += 1;
                    println!("FAILED  task {}: {e}", t.name);
                }
                let config = args.task_config.clone().or(t.values.config_json).unwrap_or_else(|| "{}".to_owned());
                Some((t.name, t.values.plugin?, config))
            })
            .collect(),
        None => {
            let plugin = args.plugin.clone().ok_or(CommandError::NoPlugin)?;
            vec![("validate".to_owned(), plugin, args.task_config.clone().unwrap_or_else(|| "{}".to_owned()))]
        }
    };
    let scratch = tempfile::tempdir().map_err(|e| CommandError::system("create a temporary directory", e))?;
    let staging = crate::rundir::open_root(scratch.path(), false)?.expect("the temporary directory exists");
    for (task, path, config) in checks {
        match check(&task, &path, &config, &staging, args.init_timeout) {
            Ok(line) => println!("ok      {line}"),
            Err(reason) => {
                failed += 1;
                println!("FAILED  {reason}");
            }
        }
    }
    Ok(if failed == 0 { code::OK } else { code::FAILED })
}

fn check(task: &str, path: &Path, config: &str, staging: &Dir, timeout: Duration) -> Result<String, String> {
    let staged = plugin::stage(path, staging).map_err(|e| e.to_string())?;
    let shown = staged.original.display().to_string();
    let report = plugin::probe::run(timeout, || probe(task, &staged.load_path(), &staged.original, config)).map_err(
        |e| match e {
            ProbeError::TimedOut(_) => format!("{shown}: init did not finish within {timeout:?}"),
            other => format!("{shown}: {other}"),
        },
    )?;
    let version = report.api_version.unwrap_or_else(|| "?".to_owned());
    match (report.error, report.init_ms) {
        (Some(error), _) => Err(error),
        (None, Some(ms)) => Ok(format!(
            "{shown} (build {}): pmhost-plugin-api {version}, init and shutdown succeeded in {ms} ms",
            staged.short_sha()
        )),
        (None, None) => Err(format!("{shown}: the probe reported nothing")),
    }
}

/// In the probe: load, init, shutdown.
fn probe(task: &str, staged: &Path, original: &Path, config: &str) -> ProbeReport {
    let module = match plugin::load(staged, original) {
        Ok(module) => module,
        Err(e) => return ProbeReport { api_version: None, init_ms: None, error: Some(e.to_string()) },
    };
    let api_version = Some(module.api_version().as_str().to_owned());
    static STOP: AtomicBool = AtomicBool::new(false);
    let logger = HostLogger { max_level: crate::logging::plugin_level(), log: crate::worker::host_log };
    // Never signalled (nothing stops a probe but its deadline); open for the probe's life, as in a worker.
    let stop_fd = match crate::worker::open_stop_event() {
        Ok(fd) => fd.into_raw_fd(),
        Err(e) => {
            return ProbeReport { api_version, init_ms: None, error: Some(format!("cannot open an eventfd: {e}")) };
        }
    };
    let ctx = InitContext::new(task, config, 0, 0, std::process::id() as i32, &STOP, stop_fd, logger);
    let started = Instant::now();
    let mut job = match (module.init())(&ctx).into_result() {
        Ok(job) => job,
        Err(failure) => {
            return ProbeReport { api_version, init_ms: None, error: Some(plugin_report::init_failure(&failure)) };
        }
    };
    let init_ms = started.elapsed().as_millis() as u64;
    if let RSome(message) = job.shutdown() {
        return ProbeReport {
            api_version,
            init_ms: Some(init_ms),
            error: Some(plugin_report::shutdown_panicked(&message)),
        };
    }
    ProbeReport { api_version, init_ms: Some(init_ms), error: None }
}
