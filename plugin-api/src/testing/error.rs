//! What the test kit reports when a job fails as the host would see it fail.

use std::fmt;

use crate::ffi::{InitFailure, report};

/// Why a job failed under the kit, worded as the host words it (its `Display` is the sentence the host logs and
/// reports as the worker's exit reason).
///
/// ```
/// # use pmhost_plugin_api::testing::Error;
/// let error = Error::InitFailed("cannot reach db.example:5432".into());
/// assert_eq!(error.to_string(), "plugin init failed: cannot reach db.example:5432");
/// assert_eq!(error.message(), "cannot reach db.example:5432");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The config given to the builder is not a table: the host refuses such a config file or `--task-config`
    /// before any worker starts.
    Config(String),
    /// `init` returned an error (a config that does not deserialize into the job's settings is one). The host
    /// fails the worker with exit code 5; a fresh start fails with this message, a restart rolls back.
    InitFailed(String),
    /// `init` panicked: the message with the panic's location. Handled by the host as `InitFailed`.
    InitPanicked(String),
    /// `work` panicked: the message with the panic's location. The host logs it, the worker exits with code 6
    /// (a crash) without `shutdown`, and a new worker takes the slot after the backoff.
    WorkPanicked(String),
    /// `shutdown` panicked. The worker exits with code 6, as for a panic in `work`.
    ShutdownPanicked(String),
}

impl Error {
    /// The job's own message (for panics: with the location), without the host's words around it.
    pub fn message(&self) -> &str {
        match self {
            Error::Config(message)
            | Error::InitFailed(message)
            | Error::InitPanicked(message)
            | Error::WorkPanicked(message)
            | Error::ShutdownPanicked(message) => message,
        }
    }

    pub(crate) fn from_init(failure: InitFailure) -> Error {
        match failure {
            InitFailure::Failed(message) => Error::InitFailed(message.into()),
            InitFailure::Panicked(message) => Error::InitPanicked(message.into()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Error::Config(message) => format!("invalid task config: {message}"),
            Error::InitFailed(message) => report::init_failure(&InitFailure::Failed(message.as_str().into())),
            Error::InitPanicked(message) => report::init_failure(&InitFailure::Panicked(message.as_str().into())),
            Error::WorkPanicked(message) => report::work_panicked(message),
            Error::ShutdownPanicked(message) => report::shutdown_panicked(message),
        };
        f.write_str(&text)
    }
}

impl std::error::Error for Error {}
