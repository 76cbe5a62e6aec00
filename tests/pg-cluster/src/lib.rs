//! A throwaway PostgreSQL cluster for pmhost's queue tests and benchmark: `initdb` and `pg_ctl` in a private
//! temp dir, reachable only through a unix socket in that dir (no TCP), run as an unprivileged user when the
//! caller is root (PostgreSQL refuses to run as root), and stopped (then killed, if need be) and removed when
//! dropped, even when a test fails.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use thiserror::Error;

/// The user the server runs as when the caller is root.
const UNPRIVILEGED_UID: u32 = 65534;

/// The database superuser `initdb` creates; clients connect as it over the socket (trusted).
const SUPERUSER: &str = "pmhost";

/// Why the cluster could not be started or queried.
#[derive(Debug, Error)]
pub enum PgError {
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Failed { what: String, status: std::process::ExitStatus, output: String },
    #[error("{sql:?} returned {text:?}, not a number")]
    NotANumber { sql: String, text: String },
    #[error("cannot prepare the cluster directory")]
    Dir(#[source] std::io::Error),
}

/// The directory holding `initdb`, `pg_ctl` and `psql`: the one of `initdb` on `PATH` (links resolved), or the
/// newest `/usr/lib/postgresql/*/bin` (where Debian's `postgresql` package puts them). None if neither exists.
pub fn server_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("initdb")).find(|initdb| initdb.is_file()));
    if let Some(initdb) = on_path {
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        let dir = real.parent().map(Path::to_owned)?;
        if dir.join("pg_ctl").is_file() && dir.join("psql").is_file() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| ["initdb", "pg_ctl", "psql"].iter().all(|tool| bin.join(tool).is_file()))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A running throwaway cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `(uid, gid)` the server runs as, if not the caller's.
    run_as: Option<(u32, u32)>,
}

impl PgCluster {
    /// Creates and starts a cluster with the tools in `bin` (see [`server_bin_dir`]).
    pub fn start(bin: &Path) -> Result<PgCluster, PgError> {
        // Under the system temp dir, which other users can traverse: the server's user reaches its own dir.
        let dir = tempfile::Builder::new().prefix("pmhost-pg-").tempdir().map_err(PgError::Dir)?;
        let run_as = nix::unistd::geteuid().is_root().then_some((UNPRIVILEGED_UID, UNPRIVILEGED_UID));
        if let Some((uid, gid)) = run_as {
            chown(dir.path(), Some(uid), Some(gid)).map_err(PgError::Dir)?;
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).map_err(PgError::Dir)?;
        let cluster = PgCluster { dir, bin: bin.to_owned(), run_as };
        let data = cluster.data_dir();
        let data = data.to_string_lossy();
        cluster.server_tool(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        // Durability is off: the cluster lives for one test. No TCP: the socket in our own dir only.
        let options = format!(
            "-c listen_addresses='' -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=80 -c shared_buffers=32MB",
            cluster.socket_dir().display()
        );
        let log = cluster.dir.path().join("server.log");
        let log = log.to_string_lossy();
        cluster.server_tool("pg_ctl", &["start", "-w", "-t", "60", "-D", &data, "-l", &log, "-o", &options])?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// A libpq-style connection string for the `postgres` database.
    pub fn connection(&self) -> String {
        format!("host={} user={SUPERUSER} dbname=postgres", self.socket_dir().display())
    }

    /// The server's log so far (for failure messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs a server tool (initdb, pg_ctl) as the server's user.
    fn server_tool(&self, tool: &str, args: &[&str]) -> Result<(), PgError> {
        let program = self.bin.join(tool);
        let mut cmd = Command::new(&program);
        cmd.args(args).current_dir(self.dir.path()).stdin(Stdio::null()).env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        eprintln!("$ {cmd:?}");
        // Output to a file, not pipes: `pg_ctl start` leaves the server holding whatever it was given.
        let out_path = self.dir.path().join(format!("{tool}.out"));
        let out = std::fs::File::create(&out_path).map_err(PgError::Dir)?;
        if let Some((uid, gid)) = self.run_as {
            chown(&out_path, Some(uid), Some(gid)).map_err(PgError::Dir)?;
        }
        cmd.stdout(out.try_clone().map_err(PgError::Dir)?).stderr(out);
        let status = cmd.status().map_err(|source| PgError::Spawn { program, source })?;
        if status.success() {
            return Ok(());
        }
        let output = std::fs::read_to_string(&out_path).unwrap_or_default() + &self.server_log();
        Err(PgError::Failed { what: tool.to_owned(), status, output })
    }

    /// Runs SQL through psql over the socket; returns its unaligned, tuples-only output, trimmed.
    pub fn sql(&self, sql: &str) -> Result<String, PgError> {
        let program = self.bin.join("psql");
        let out = Command::new(&program)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-U", SUPERUSER, "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| PgError::Spawn { program, source })?;
        if !out.status.success() {
            let output = String::from_utf8_lossy(&out.stderr).into_owned();
            return Err(PgError::Failed { what: format!("psql -c {sql:?}"), status: out.status, output });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// One integer from a query.
    pub fn number(&self, sql: &str) -> Result<i64, PgError> {
        let text = self.sql(sql)?;
        text.parse().map_err(|_| PgError::NotANumber { sql: sql.to_owned(), text })
    }

    /// Client connections other than the asking psql's own.
    pub fn client_connections(&self) -> Result<i64, PgError> {
        self.number(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND pid <> pg_backend_pid()",
        )
    }

    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// Waits up to `ms` for a process that is not our child to exit (pidfd).
fn wait_gone(pid: i32, ms: u16) {
    // SAFETY: pidfd_open with a pid and no flags returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return;
    }
    // SAFETY: a fresh descriptor that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(ms));
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let postmaster = self.postmaster_pid();
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args(["stop", "-m", "immediate", "-w", "-t", "20", "-D"]).arg(self.data_dir());
        cmd.current_dir(self.dir.path()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let stopped = cmd.status().is_ok_and(|status| status.success());
        if !stopped && let Some(pid) = postmaster {
            // The postmaster's children exit when it dies.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_gone(pid, 10_000);
        }
    }
}
