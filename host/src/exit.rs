//! Exit codes: what `pmhost` commands and worker processes return, each with one documented meaning.

/// Exit codes of the `pmhost` command (documented in the README and in `--help`).
pub mod cli {
    /// Success.
    pub const OK: i32 = 0;
    /// The operation failed: a start that did not come up, a master that did not answer, an I/O error. The
    /// message on stderr says why.
    pub const FAILED: i32 = 1;
    /// The command line or the config file was invalid (clap uses 2 for usage errors too).
    pub const USAGE: i32 = 2;
    /// No master runs under that name (`stop`, `status`, `scale`, `top --once`).
    pub const NOT_RUNNING: i32 = 3;
    /// A master already runs under that name (`start`).
    pub const ALREADY_RUNNING: i32 = 4;
    /// `status --check`: the master runs but not every worker slot is filled with a ready worker.
    pub const UNHEALTHY: i32 = 5;
    /// `restart`: the new build was refused and the old workers keep running.
    pub const ROLLED_BACK: i32 = 6;
    /// `start` (foreground): the master stopped, but some workers had to be killed (stop timeout reached, or an
    /// immediate stop) instead of finishing their call.
    pub const STOPPED_FORCIBLY: i32 = 7;
    /// `start` in batch mode (`check_interval` 0 or less): every worker ran to its end, but some crashed (a panic,
    /// a signal, a non-zero exit code); the message says how many and why.
    pub const BATCH_FAILED: i32 = 8;
}

/// Exit codes of worker processes. The master reads them to tell a normal end from a crash.
pub mod worker {
    /// The worker ended normally: limits reached, `Outcome::Retire`, or a stop request.
    pub const OK: i32 = 0;
    /// The worker could not prepare itself before loading the plugin (process setup failed).
    pub const SETUP_FAILED: i32 = 3;
    /// The plugin could not be loaded (not a plugin, incompatible API, missing file).
    pub const LOAD_FAILED: i32 = 4;
    /// The plugin's `init` returned an error or panicked.
    pub const INIT_FAILED: i32 = 5;
    /// The plugin's `work` or `shutdown` panicked.
    pub const PANICKED: i32 = 6;
    /// The master went away; the worker ended on its own.
    pub const ORPHANED: i32 = 7;

    /// A short human name for a worker exit code.
    pub fn describe(code: i32) -> &'static str {
        match code {
            OK => "normal exit",
            SETUP_FAILED => "worker setup failed",
            LOAD_FAILED => "plugin failed to load",
            INIT_FAILED => "plugin init failed",
            PANICKED => "plugin panicked",
            ORPHANED => "master gone",
            _ => "exit code from plugin code",
        }
    }
}
