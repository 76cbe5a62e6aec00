//! Upgrading pmhost in place: the versioned handover of a master's state to a new image of itself, and the
//! checks the CLI makes on a new binary before asking a master to run it.
//!
//! # Design (issue 17)
//!
//! A master re-executes itself (`execve` on the same pid: pid file and its `flock`, systemd's `MainPID`, the
//! workers' parent are unchanged) and hands its state over through an inherited descriptor:
//!
//! - **Format.** An [`Envelope`] (`format`, `version`, the writing pmhost's version, the state as JSON) in a
//!   memfd without `O_CLOEXEC`, whose number is passed as `--resume-handover N` to the new image. A binary states
//!   the versions it reads with `pmhost --handover-version` ([`version_line`]); the CLI and the master refuse a
//!   binary that cannot read the running master's [`HANDOVER_VERSION`] before anything is executed
//!   ([`check_binary`]), and [`read`] refuses any other version after the exec (then the rollback below).
//! - **Descriptors.** Everything the state refers to by number (the locked pid file, the report pipe's read end
//!   and the write end workers share, each worker's capture pipes, each held plugin build, the scoreboard memfd)
//!   has `FD_CLOEXEC` cleared just before the exec; the new image duplicates each (close-on-exec) and closes the
//!   originals once it runs. The run directories are opened again by path (and checked again). The signalfd and
//!   the timerfd are made anew: the signal mask survives `execve`, so signals that arrive meanwhile stay pending.
//! - **Scoreboard.** A memfd-backed shared mapping ([`crate::scoreboard::Scoreboard::from_fd`]): `execve` drops
//!   the master's mapping, workers keep theirs, the new image maps the same pages with the cells in use taken.
//! - **Time.** Deadlines (init, stop, backoff, supervision, check tick) are `CLOCK_MONOTONIC` values, system-wide,
//!   so they are handed over as they are.
//! - **Rollback.** Nothing is replaced until the new binary proved it can take over: the master runs it twice
//!   as a child first, each within a deadline: `--handover-version` (does it read this format?) and
//!   `--handover-check` with the very handover on its stdin (does it read this state?). A binary that exits 1,
//!   hangs or is older is refused there and the old image carries on with the same workers. Before the exec the
//!   master also keeps a descriptor of its own image (`/proc/self/exe`, `O_PATH`) and passes it as
//!   `--rollback-fd`: a new image that still cannot rebuild the master (its run directories became unusable, say)
//!   re-executes the old image from it with the same handover, whose descriptors it left open (it works on
//!   duplicates and closes the originals only once it runs). What no check can catch is a new image that hangs
//!   after the exec: `pmhost upgrade` then times out and says so.
//! - **systemd.** `RELOADING=1` before the exec, `READY=1` from the new image; `MAINPID` never changes.
//!
//! Workers are never touched: no signal, no descriptor of theirs changes, and a worker that exits during the
//! exec stays a zombie child of the same pid until the new image reaps it.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The handover format this binary writes. 2: the state of 1, but the workers handed over write reports in
/// the fixed layout of `report` (which a master of version 1 cannot read, so it must refuse the handover);
/// this binary reads both layouts, so it takes version 1 handovers.
pub const HANDOVER_VERSION: u32 = 2;
/// The oldest handover format this binary reads.
pub const OLDEST_READABLE: u32 = 1;
/// The `format` field of every handover.
pub const FORMAT: &str = "pmhost-handover";

/// What `pmhost --handover-version` prints: `pmhost-handover WRITES reads OLDEST-NEWEST`.
pub fn version_line() -> String {
    format!("{FORMAT} {HANDOVER_VERSION} reads {OLDEST_READABLE}-{HANDOVER_VERSION}")
}

/// The versions a binary's `--handover-version` line says it writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub writes: u32,
    pub reads: (u32, u32),
}

impl Versions {
    /// Parses a [`version_line`].
    pub fn parse(line: &str) -> Option<Versions> {
        let mut words = line.split_whitespace();
        if words.next()? != FORMAT {
            return None;
        }
        let writes = words.next()?.parse().ok()?;
        if words.next()? != "reads" {
            return None;
        }
        let (oldest, newest) = words.next()?.split_once('-')?;
        Some(Versions { writes, reads: (oldest.parse().ok()?, newest.parse().ok()?) })
    }

    /// Whether a binary of these versions reads a handover of `version`.
    pub fn reads(&self, version: u32) -> bool {
        (self.reads.0..=self.reads.1).contains(&version)
    }
}

/// Why a new binary is refused before any master runs it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BinaryError {
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path} is not a regular file")]
    NotAFile { path: String },
    #[error("{path} is not executable")]
    NotExecutable { path: String },
    #[error("{path} cannot be run: {reason}")]
    CannotRun { path: String, reason: String },
    #[error("{path} --handover-version did not answer within {waited_ms} ms")]
    Hangs { path: String, waited_ms: u64 },
    #[error("{path} is not a pmhost that can be upgraded to: `--handover-version` {answer}")]
    NotPmhost { path: String, answer: String },
    #[error("{path} reads handover versions {oldest} to {newest}, but the running master writes version {needed}")]
    Incompatible { path: String, oldest: u32, newest: u32, needed: u32 },
}

/// Checks that `path` is a pmhost binary that reads handover `needed`: it exists, is an executable file, and
/// answers `--handover-version` within `timeout` with a version range that includes `needed`.
pub fn check_binary(path: &Path, needed: u32, timeout: Duration) -> Result<Versions, BinaryError> {
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BinaryError::Missing { path: shown }),
        Err(e) => return Err(BinaryError::CannotRun { path: shown, reason: e.to_string() }),
    };
    if !meta.is_file() {
        return Err(BinaryError::NotAFile { path: shown });
    }
    if nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err() {
        return Err(BinaryError::NotExecutable { path: shown });
    }
    let mut child = std::process::Command::new(path)
        .arg("--handover-version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BinaryError::CannotRun { path: shown.clone(), reason: e.to_string() })?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BinaryError::Hangs { path: shown, waited_ms: timeout.as_millis() as u64 });
            }
            Err(e) => return Err(BinaryError::CannotRun { path: shown, reason: e.to_string() }),
        }
    };
    let mut answer = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut answer);
    }
    let versions = Versions::parse(answer.lines().next().unwrap_or_default()).filter(|_| status.success());
    let Some(versions) = versions else {
        let answer = match (status.code(), answer.trim()) {
            (Some(0), "") => "printed nothing".to_owned(),
            (Some(0), text) => format!("printed {text:?}"),
            (Some(code), _) => format!("exited with code {code}"),
            (None, _) => format!("ended by a signal ({status})"),
        };
        return Err(BinaryError::NotPmhost { path: shown, answer });
    };
    if !versions.reads(needed) {
        let (oldest, newest) = versions.reads;
        return Err(BinaryError::Incompatible { path: shown, oldest, newest, needed });
    }
    Ok(versions)
}

/// A handover: the master's state, tagged with its format's version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub format: String,
    pub version: u32,
    /// The pmhost version that wrote it.
    pub written_by: String,
    /// The state, in the shape of `version`.
    pub state: serde_json::Value,
}

impl Envelope {
    /// A handover of `state` in this binary's format.
    pub fn new(state: serde_json::Value) -> Envelope {
        Envelope {
            format: FORMAT.to_owned(),
            version: HANDOVER_VERSION,
            written_by: env!("CARGO_PKG_VERSION").to_owned(),
            state,
        }
    }
}

/// Why a handover cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot read the handover: {0}")]
    Io(#[from] std::io::Error),
    #[error("the handover is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error("the handover is a {found:?}, not a {FORMAT}")]
    Format { found: String },
    #[error(
        "the handover is version {found} (written by pmhost {written_by}); this pmhost reads {OLDEST_READABLE} to {HANDOVER_VERSION}"
    )]
    Version { found: u32, written_by: String },
}

/// Writes `envelope` into a fresh memfd that an `execve` keeps open (no `O_CLOEXEC`), positioned at its start.
pub fn write(envelope: &Envelope) -> Result<OwnedFd, HandoverError> {
    let fd = nix::sys::memfd::memfd_create(c"pmhost-handover", nix::sys::memfd::MFdFlags::empty())
        .map_err(std::io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    serde_json::to_writer(&mut file, envelope)?;
    file.flush()?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// Reads the handover in `fd` (marking it close-on-exec again), refusing another format or version.
pub fn read(fd: OwnedFd) -> Result<Envelope, HandoverError> {
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(std::io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    file.rewind()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let envelope: Envelope = serde_json::from_str(&text)?;
    if envelope.format != FORMAT {
        return Err(HandoverError::Format { found: envelope.format });
    }
    if !(OLDEST_READABLE..=HANDOVER_VERSION).contains(&envelope.version) {
        return Err(HandoverError::Version { found: envelope.version, written_by: envelope.written_by });
    }
    Ok(envelope)
}

/// Clears `FD_CLOEXEC` on `fd`, so an `execve` keeps it open under the same number.
pub fn keep_across_exec(fd: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: F_SETFD on a descriptor the caller holds open; no pointers.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_version_line_parses_and_names_what_it_reads() {
        let versions = Versions::parse(&version_line()).unwrap();
        assert_eq!(versions.writes, HANDOVER_VERSION);
        assert!(versions.reads(HANDOVER_VERSION) && !versions.reads(HANDOVER_VERSION + 1));
        assert_eq!(Versions::parse("pmhost-handover 3 reads 2-3").unwrap().reads, (2, 3));
        for bad in ["", "pmhost 1.0", "pmhost-handover x reads 1-1", "pmhost-handover 1 writes 1-1"] {
            assert_eq!(Versions::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_handover_survives_the_descriptor_and_other_versions_are_refused() {
        let envelope = Envelope::new(serde_json::json!({"workers": [{"pid": 42, "slot": 0}]}));
        let fd = write(&envelope).unwrap();
        assert_eq!(read(fd).unwrap(), envelope);
        let future = Envelope { version: HANDOVER_VERSION + 1, ..envelope.clone() };
        let error = read(write(&future).unwrap()).unwrap_err();
        assert!(matches!(error, HandoverError::Version { found, .. } if found == HANDOVER_VERSION + 1), "{error}");
        let other = Envelope { format: "nginx".into(), ..envelope };
        assert!(matches!(read(write(&other).unwrap()).unwrap_err(), HandoverError::Format { .. }));
    }

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_new_binary_is_checked_before_it_runs_anything() {
        let dir = tempfile::tempdir().unwrap();
        let second = Duration::from_secs(1);
        let good = script(dir.path(), "good", &format!("echo '{}'", version_line()));
        assert_eq!(check_binary(&good, HANDOVER_VERSION, second).unwrap().writes, HANDOVER_VERSION);
        let cases = [
            (dir.path().join("absent"), "does not exist"),
            (dir.path().to_owned(), "is not a regular file"),
            (script(dir.path(), "fails", "exit 1"), "exited with code 1"),
            (script(dir.path(), "hangs", "exec sleep 30"), "did not answer within 1000 ms"),
            (script(dir.path(), "other", "echo hello"), "printed \"hello\""),
            (script(dir.path(), "older", "echo 'pmhost-handover 0 reads 0-0'"), "reads handover versions 0 to 0"),
        ];
        for (path, message) in cases {
            let error = check_binary(&path, HANDOVER_VERSION, second).unwrap_err().to_string();
            assert!(error.contains(message), "{}: {error}", path.display());
        }
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        if !nix::unistd::Uid::effective().is_root() {
            assert!(check_binary(&plain, 1, second).unwrap_err().to_string().contains("not executable"));
        }
    }
}
