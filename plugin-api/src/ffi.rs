//! The binary interface between host and plugin: the root module and every type that crosses the boundary.
//!
//! Plugin authors never use this module; `export_job!` and the host do. The root module is an abi_stable
//! *prefix type*: fields may be appended in later versions (mark the new last field `last_prefix_field`), and
//! a host reading a field an old plugin lacks panics with a clear message (`missing_field(panic)`), which the
//! host avoids by checking `api_version` first.

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RStr, RString};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings, sabi_trait};

use crate::context::{InitContext, WorkContext};

/// The plugin's root module, exported by `export_job!`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The `pmhost-plugin-api` version the plugin was built against.
    pub api_version: RStr<'static>,
    /// Builds the job: installs the log bridge and panic capture, then runs `Job::init`.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(&InitContext<'_>) -> RResult<JobBox, InitFailure>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "pmhost_plugin";
    const NAME: &'static str = "pmhost plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

pub use job_object::{RawJob, RawJob_TO};

#[expect(
    non_local_definitions,
    reason = "abi_stable 0.11's sabi_trait expansion puts trait impls inside a const block"
)]
mod job_object {
    use super::*;

    /// A job instance behind the boundary.
    #[sabi_trait]
    pub trait RawJob {
        /// One `work` call, panics caught.
        fn work(&mut self, ctx: &WorkContext<'_>) -> WorkResult;
        /// `Job::shutdown`; `RSome(message)` if it panicked.
        #[sabi(last_prefix_field)]
        fn shutdown(&mut self) -> ROption<RString>;
    }
}

/// The owned, type-erased job the host holds.
pub type JobBox = RawJob_TO<'static, RBox<()>>;

/// Why `init` produced no job.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum InitFailure {
    /// `init` returned an error.
    Failed(RString),
    /// `init` panicked (message and location).
    Panicked(RString),
}

/// The result of one `work` call as it crosses the boundary.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum WorkResult {
    /// `Outcome::Continue`.
    Continue,
    /// `Outcome::Retire`.
    Retire,
    /// `Outcome::Failed`.
    Failed(RString),
    /// `work` panicked (message and location).
    Panicked(RString),
}

/// The sentences the host logs, and reports as a worker's exit reason, for what comes back across the
/// boundary. The host and the test kit (`testing`) both word them through these functions only.
pub mod report {
    use super::InitFailure;

    /// Why a worker's `init` produced no job: `plugin init failed: …` or `plugin init panicked: …`.
    pub fn init_failure(failure: &InitFailure) -> String {
        match failure {
            InitFailure::Failed(message) => format!("plugin init failed: {message}"),
            InitFailure::Panicked(message) => format!("plugin init panicked: {message}"),
        }
    }

    /// A `work` call that returned `Outcome::Failed` (logged at error level; the worker carries on).
    pub fn work_failed(message: &str) -> String {
        format!("work failed: {message}")
    }

    /// A `work` call that panicked (the worker ends as a crash).
    pub fn work_panicked(message: &str) -> String {
        format!("plugin panicked in work: {message}")
    }

    /// A `shutdown` that panicked (the worker ends as a crash).
    pub fn shutdown_panicked(message: &str) -> String {
        format!("plugin panicked in shutdown: {message}")
    }
}

/// How the plugin's `tracing` events reach the host's subscriber.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostLogger {
    /// The most verbose level the host records: 0 off, 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub max_level: u8,
    /// Records one event: level (as above), the event's target, the formatted message and fields.
    pub log: extern "C" fn(level: u8, target: RStr<'_>, message: RStr<'_>),
}

/// The log level numbers that cross the boundary (`HostLogger::max_level` and `HostLogger::log`): 0 is off,
/// 1 error, 2 warn, 3 info, 4 debug, 5 trace. Host and plugin both convert through these functions only.
pub mod level {
    use tracing::Level;
    use tracing::level_filters::LevelFilter;

    /// The number of a level.
    pub fn code(level: &Level) -> u8 {
        match *level {
            Level::ERROR => 1,
            Level::WARN => 2,
            Level::INFO => 3,
            Level::DEBUG => 4,
            Level::TRACE => 5,
        }
    }

    /// The most verbose level a filter lets through, as a number (0: none).
    pub fn filter_code(filter: LevelFilter) -> u8 {
        filter.into_level().map_or(0, |level| code(&level))
    }

    /// The filter a number stands for (a number above 5 is trace).
    pub fn filter(code: u8) -> LevelFilter {
        match code {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn numbers_round_trip() {
            for level in [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE] {
                assert_eq!(filter(code(&level)).into_level(), Some(level));
                assert_eq!(filter_code(LevelFilter::from_level(level)), code(&level));
            }
            assert_eq!(filter_code(LevelFilter::OFF), 0);
            assert_eq!(filter(0), LevelFilter::OFF);
        }
    }
}
