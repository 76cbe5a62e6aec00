//! What a job reports back: the result of one `work` call, and the error type of `init`.

use std::fmt;

/// The result of one `work` call.
///
/// ```
/// use pmhost_plugin_api::Outcome;
///
/// fn step(batch: &[u32]) -> Outcome {
///     match batch {
///         [] => Outcome::Continue,                               // nothing to do this time
///         [0, ..] => Outcome::Retire,                            // a poison pill: take a fresh worker
///         [bad, ..] if *bad > 100 => Outcome::failed(format!("value {bad} out of range")),
///         _ => Outcome::Continue,
///     }
/// }
/// assert_eq!(step(&[7]), Outcome::Continue);
/// assert_eq!(step(&[0]), Outcome::Retire);
/// assert_eq!(step(&[101]), Outcome::Failed("value 101 out of range".into()));
///
/// // A `Result<(), E>` converts: Ok is Continue, Err is Failed with the error's message.
/// let parsed: Result<(), std::num::ParseIntError> = "x".parse::<u8>().map(|_| ());
/// assert!(matches!(Outcome::from(parsed), Outcome::Failed(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carry on: the host counts the call, sleeps `execute_usleep` and calls `work` again (within the limits).
    Continue,
    /// Retire this worker now: the host runs `shutdown`, the worker exits cleanly and a fresh one takes its slot.
    /// Use it when the job's state went stale (a dropped connection, a config change it noticed).
    Retire,
    /// This call failed: the host logs the message at error level, counts the call and carries on.
    /// (To take the worker down, return `Retire`, or let it panic: a panic is treated as a crash.)
    Failed(String),
}

impl Outcome {
    /// A failed call with a message.
    pub fn failed(message: impl fmt::Display) -> Self {
        Outcome::Failed(message.to_string())
    }
}

impl<E: Into<JobError>> From<Result<(), E>> for Outcome {
    /// `Ok(())` is [`Outcome::Continue`], an error is [`Outcome::Failed`] with its message.
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Outcome::Continue,
            Err(e) => Outcome::Failed(e.into().to_string()),
        }
    }
}

/// Why `init` failed. Any `std::error::Error` converts into it with `?`, keeping its chain of causes.
///
/// ```
/// # use pmhost_plugin_api::JobError;
/// fn open(path: &str) -> Result<std::fs::File, JobError> {
///     if path.is_empty() {
///         return Err(JobError::msg("no input file configured"));
///     }
///     Ok(std::fs::File::open(path)?)
/// }
/// assert_eq!(open("").unwrap_err().to_string(), "no input file configured");
/// ```
pub struct JobError {
    message: String,
}

impl JobError {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        JobError { message: message.to_string() }
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        JobError { message }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobError({:?})", self.message)
    }
}
