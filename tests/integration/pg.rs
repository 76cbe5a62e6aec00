//! The PostgreSQL cluster of the queue tests (`pmhost-pg-cluster`), with the tests' policy: without the server
//! binaries the tests fail, telling how to install them, unless `PMHOST_SKIP_PG_TESTS=1` says to skip them (CI
//! installs them: `.ci/run`); every failure to reach the server panics with its output.

use pmhost_pg_cluster::{PgCluster, server_bin_dir};

/// Set to `1` to skip the PostgreSQL tests on a machine without the server binaries.
pub const SKIP_VAR: &str = "PMHOST_SKIP_PG_TESTS";

/// A started cluster; dropping it stops the server and removes its files.
pub struct Pg(PgCluster);

impl Pg {
    /// Starts a fresh cluster, or returns None when the binaries are missing and the skip variable is set.
    pub fn start() -> Option<Pg> {
        let Some(bin) = server_bin_dir() else {
            if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
                eprintln!("PostgreSQL server binaries not found; skipped ({SKIP_VAR}=1)");
                return None;
            }
            panic!(
                "the PostgreSQL tests need initdb, pg_ctl and psql (on PATH or in /usr/lib/postgresql/*/bin): \
                 apt-get install postgresql (as .ci/run does), or set {SKIP_VAR}=1 to skip them"
            );
        };
        Some(Pg(PgCluster::start(&bin).unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"))))
    }

    /// The plugin's `connection` setting.
    pub fn connection(&self) -> String {
        self.0.connection()
    }

    /// Runs SQL through psql; returns its tuples-only output.
    pub fn sql(&self, sql: &str) -> String {
        self.0.sql(sql).unwrap_or_else(|e| panic!("{e}\n{}", self.0.server_log()))
    }

    /// One integer from a query.
    pub fn number(&self, sql: &str) -> i64 {
        self.0.number(sql).unwrap_or_else(|e| panic!("{e}\n{}", self.0.server_log()))
    }

    /// Client connections other than the asking psql's own.
    pub fn client_connections(&self) -> i64 {
        self.0.client_connections().unwrap_or_else(|e| panic!("{e}"))
    }
}
