//! A throwaway PostgreSQL cluster for the queue tests: `initdb` and `pg_ctl` in a private temp dir, reachable
//! only through a unix socket in that dir (no TCP), run as an unprivileged user when the tests run as root, and
//! stopped (then killed, if need be) and removed when dropped, even when the test fails.
//!
//! Without the PostgreSQL server binaries the tests fail, telling how to install them, unless
//! `PMHOST_SKIP_PG_TESTS=1` says to skip them (CI installs them: `.ci/run`).

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Set to `1` to skip the PostgreSQL tests on a machine without the server binaries.
pub const SKIP_VAR: &str = "PMHOST_SKIP_PG_TESTS";

/// The user the server runs as when the tests run as root (PostgreSQL refuses to run as root).
const UNPRIVILEGED_UID: u32 = 65534;

/// The database superuser `initdb` creates (the clients connect as it, over the socket, trusted).
const SUPERUSER: &str = "pmhost";

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `(uid, gid)` the server runs as, if not the current user.
    run_as: Option<(u32, u32)>,
}

/// The directory holding `initdb`, `pg_ctl` and `psql`: from `PATH`, or the newest /usr/lib/postgresql/*/bin.
fn server_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("initdb")).find(|initdb| initdb.is_file()));
    if let Some(initdb) = on_path {
        // /usr/local/bin/initdb is often a link into the version's bin dir, where psql lives too.
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        return real.parent().map(Path::to_owned);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl PgCluster {
    /// Starts a fresh cluster, or returns None when the binaries are missing and the skip variable is set.
    pub fn start() -> Option<PgCluster> {
        let Some(bin) = server_bin_dir() else {
            if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
                eprintln!("PostgreSQL server binaries not found; skipped ({SKIP_VAR}=1)");
                return None;
            }
            panic!(
                "the PostgreSQL tests need initdb and pg_ctl (on PATH or in /usr/lib/postgresql/*/bin): \
                 apt-get install postgresql (as .ci/run does), or set {SKIP_VAR}=1 to skip them"
            );
        };
        let dir = tempfile::Builder::new().prefix("pmhost-pg-").tempdir().expect("temp dir");
        let run_as = nix::unistd::geteuid().is_root().then_some((UNPRIVILEGED_UID, UNPRIVILEGED_UID));
        if let Some((uid, gid)) = run_as {
            chown(dir.path(), Some(uid), Some(gid)).expect("hand the cluster dir to the server's user");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod cluster dir");
        // The server's user must reach the socket dir through its ancestors (the temp root is world-searchable).
        let cluster = PgCluster { dir, bin, run_as };
        let data = cluster.data_dir();
        cluster.server_tool(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
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
        );
        let socket_dir = cluster.socket_dir();
        let options = format!(
            "-c listen_addresses='' -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=80 -c shared_buffers=32MB",
            socket_dir.display()
        );
        let log = cluster.dir.path().join("server.log");
        cluster.server_tool(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                data.to_str().expect("utf-8 path"),
                "-l",
                log.to_str().expect("utf-8 path"),
                "-o",
                &options,
            ],
        );
        Some(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// A libpq-style connection string for the `postgres` database (what the plugin's `connection` takes).
    pub fn connection(&self) -> String {
        format!("host={} user={SUPERUSER} dbname=postgres", self.socket_dir().display())
    }

    /// Runs a server tool (initdb, pg_ctl) as the server's user; panics with its output on failure.
    fn server_tool(&self, tool: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(args).current_dir(self.dir.path()).stdin(Stdio::null()).env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        eprintln!("$ {cmd:?}");
        // pg_ctl start leaves the server holding the pipes: send its output to a file instead.
        let out_path = self.dir.path().join(format!("{tool}.out"));
        let out_file = std::fs::File::create(&out_path).expect("tool output file");
        if let Some((uid, gid)) = self.run_as {
            let _ = chown(&out_path, Some(uid), Some(gid));
        }
        cmd.stdout(out_file.try_clone().expect("dup")).stderr(out_file);
        let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        assert!(status.success(), "{tool} failed ({status}):\n{text}\n{}", self.server_log());
        Output { status, stdout: text.into_bytes(), stderr: Vec::new() }
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs SQL through psql (over the socket) and returns its unaligned, tuples-only output; panics on error.
    pub fn sql(&self, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let out = Command::new(&psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-U", SUPERUSER, "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", psql.display()));
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// One integer from a query.
    pub fn number(&self, sql: &str) -> i64 {
        let text = self.sql(sql);
        text.parse().unwrap_or_else(|e| panic!("{sql:?} gave {text:?}: {e}"))
    }

    /// Client connections other than the asking psql's own.
    pub fn client_connections(&self) -> i64 {
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

impl Drop for PgCluster {
    fn drop(&mut self) {
        let postmaster = self.postmaster_pid();
        let data = self.data_dir();
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args(["stop", "-m", "immediate", "-w", "-t", "20", "-D"]).arg(&data);
        cmd.current_dir(self.dir.path()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let stopped = cmd.status().is_ok_and(|status| status.success());
        if !stopped && let Some(pid) = postmaster {
            // The postmaster's children exit when it dies; kill it outright.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            crate::harness::ProcessWaiter::new(pid).wait(std::time::Duration::from_secs(10));
        }
    }
}
