//! A PostgreSQL job queue consumer, as a pmhost plugin (an async job on tokio-postgres).
//!
//! Producers insert rows into `jobs`; every `work` call claims up to `batch_size` of them with
//! `SELECT … FOR UPDATE SKIP LOCKED` (so workers on any number of hosts never claim the same row), performs
//! them, writes each job's effect into `job_effects` and deletes the jobs, all in one transaction: a worker killed
//! at any point either committed all of it or none of it, and an uncommitted claim is released by PostgreSQL
//! when the connection drops. Each job's effect therefore exists exactly once.
//!
//! When the queue is empty the call waits on `LISTEN` (a trigger on `jobs` sends `NOTIFY`): no polling, no CPU.
//! It returns when a job arrives, after `idle_wait_ms` (so `pmhost status` still sees calls) or at once when
//! pmhost stops or restarts the worker (`ctx.stopped()`).
//!
//! Settings (`[task.config]`): `connection` (a libpq-style connection string, required), `batch_size` (10),
//! `channel` (`pmhost_jobs`), `idle_wait_ms` (30000), `create_schema` (true), `job_delay_ms` (0: extra time each
//! batch takes inside its transaction, to try the queue out with slow jobs).

use std::time::Duration;

use pmhost_plugin_api::tracing::{debug, info, warn};
use pmhost_plugin_api::{AsyncJob, InitContext, JobError, Outcome, WorkContext, export_async_job};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// libpq-style: `host=/run/postgresql dbname=app user=app` or `postgresql://app@db/app`.
    connection: String,
    /// Jobs claimed per transaction (one `work` call).
    #[serde(default = "default_batch_size")]
    batch_size: i64,
    /// The `LISTEN`/`NOTIFY` channel the insert trigger notifies.
    #[serde(default = "default_channel")]
    channel: String,
    /// Longest wait of a call on an empty queue before it returns (and is called again).
    #[serde(default = "default_idle_wait_ms")]
    idle_wait_ms: u64,
    /// Create the tables and the notify trigger if they are missing.
    #[serde(default = "default_create_schema")]
    create_schema: bool,
    /// Extra time each batch takes inside its transaction (simulated slow jobs).
    #[serde(default)]
    job_delay_ms: u64,
}

fn default_batch_size() -> i64 {
    10
}
fn default_channel() -> String {
    "pmhost_jobs".to_owned()
}
fn default_idle_wait_ms() -> u64 {
    30_000
}
fn default_create_schema() -> bool {
    true
}

/// The queue's tables. `job_effects` deliberately has no unique key on `job_id`: a job done twice would show
/// as two rows instead of being refused, which is what the exactly-once tests look for. (A real effect table
/// usually has one, as a second line of defence.)
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS jobs (
        id bigserial PRIMARY KEY,
        payload text NOT NULL
    );
    CREATE TABLE IF NOT EXISTS job_effects (
        job_id bigint NOT NULL,
        words bigint NOT NULL,
        done_by text NOT NULL,
        done_at timestamptz NOT NULL DEFAULT now()
    );
";

/// Serializes schema creation between workers starting at the same time (any constant will do).
const SCHEMA_LOCK: i64 = 0x706d_686f_7374;

struct Statements {
    claim: Statement,
    record: Statement,
    delete: Statement,
}

struct PgQueue {
    client: Client,
    statements: Statements,
    notifications: mpsc::UnboundedReceiver<()>,
    batch_size: i64,
    idle_wait: Duration,
    job_delay: Duration,
    /// Written into `job_effects.done_by`: which worker did the job.
    me: String,
    done: u64,
}

/// Quotes an SQL identifier.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl AsyncJob for PgQueue {
    async fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
        let settings: Settings = ctx.config()?;
        if settings.batch_size < 1 {
            return Err(JobError::msg("batch_size must be at least 1"));
        }
        let mut config: tokio_postgres::Config = settings.connection.parse()?;
        if config.get_application_name().is_none() {
            config.application_name(format!("pmhost {} slot {}", ctx.task(), ctx.slot()));
        }
        let (client, mut connection) = config.connect(NoTls).await?;
        // Drive the connection in a task of the worker's runtime, passing notifications on.
        let (notify, notifications) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = notify.send(());
                    }
                    Ok(AsyncMessage::Notice(notice)) => debug!("server notice: {notice}"),
                    Ok(_) => {}
                    Err(e) => {
                        warn!("connection to PostgreSQL lost: {e}");
                        break;
                    }
                }
            }
        });
        if settings.create_schema {
            create_schema(&client, &settings.channel).await?;
        }
        client.batch_execute(&format!("LISTEN {}", identifier(&settings.channel))).await?;
        let statements = Statements {
            claim: client.prepare("SELECT id, payload FROM jobs ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED").await?,
            record: client
                .prepare(
                    "INSERT INTO job_effects (job_id, words, done_by) \
                     SELECT id, words, $3 FROM unnest($1::bigint[], $2::bigint[]) AS done(id, words)",
                )
                .await?,
            delete: client.prepare("DELETE FROM jobs WHERE id = ANY($1)").await?,
        };
        info!(channel = %settings.channel, batch_size = settings.batch_size, "pg-queue connected");
        Ok(PgQueue {
            client,
            statements,
            notifications,
            batch_size: settings.batch_size,
            idle_wait: Duration::from_millis(settings.idle_wait_ms),
            job_delay: Duration::from_millis(settings.job_delay_ms),
            me: format!("{}/{}", ctx.task(), ctx.pid()),
            done: 0,
        })
    }

    async fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
        // Notifications received so far are answered by the claim below: drop them. One that arrives after this
        // point may announce jobs the claim does not see, so it must wake the wait.
        while self.notifications.try_recv().is_ok() {}
        match self.take_batch().await {
            Ok(0) => {
                self.wait_for_jobs(ctx).await;
                Outcome::Continue
            }
            Ok(_) => Outcome::Continue,
            // The connection is gone: a fresh worker reconnects (its init fails, with backoff, while the server
            // is down).
            Err(e) if self.client.is_closed() => {
                warn!("retiring: {e}");
                Outcome::Retire
            }
            Err(e) => Outcome::failed(format!("batch rolled back: {e}")),
        }
    }

    async fn shutdown(&mut self) {
        info!(done = self.done, "pg-queue done");
    }
}

impl PgQueue {
    /// Claims, performs and deletes up to `batch_size` jobs in one transaction; returns how many.
    async fn take_batch(&mut self) -> Result<usize, tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        let rows = tx.query(&self.statements.claim, &[&self.batch_size]).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut words = Vec::with_capacity(rows.len());
        for row in &rows {
            let (id, payload): (i64, &str) = (row.get(0), row.get(1));
            ids.push(id);
            words.push(perform(payload));
        }
        if !self.job_delay.is_zero() {
            tokio::time::sleep(self.job_delay).await;
        }
        tx.execute(&self.statements.record, &[&ids, &words, &self.me]).await?;
        tx.execute(&self.statements.delete, &[&ids]).await?;
        tx.commit().await?;
        self.done += rows.len() as u64;
        Ok(rows.len())
    }

    /// Waits on an empty queue: for a notification, the idle limit or a stop request, whichever comes first.
    async fn wait_for_jobs(&mut self, ctx: &WorkContext<'_>) {
        tokio::select! {
            _ = self.notifications.recv() => {}
            () = ctx.stopped() => debug!("stop requested while idle"),
            () = tokio::time::sleep(self.idle_wait) => {}
        }
    }
}

/// Creates the tables and the trigger that notifies `channel` on every insert into `jobs`, unless they exist.
/// The check comes first because creating a trigger locks `jobs` against writers: a worker starting while
/// another holds claimed rows (stopped in a debugger, say) must not wait for it. The trigger is made once:
/// to change `channel` later, drop the trigger `pmhost_jobs_notify`.
async fn create_schema(client: &Client, channel: &str) -> Result<(), tokio_postgres::Error> {
    let exists = client
        .query_one(
            "SELECT to_regclass('job_effects') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_trigger \
             WHERE tgname = 'pmhost_jobs_notify' AND tgrelid = to_regclass('jobs'))",
            &[],
        )
        .await?;
    if exists.get::<_, bool>(0) {
        return Ok(());
    }
    let trigger = format!(
        "CREATE OR REPLACE FUNCTION pmhost_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_notify(TG_ARGV[0], ''); RETURN NULL; END $$;
         CREATE OR REPLACE TRIGGER pmhost_jobs_notify AFTER INSERT ON jobs
             FOR EACH STATEMENT EXECUTE FUNCTION pmhost_jobs_notify({channel});",
        channel = literal(channel)
    );
    info!(%channel, "creating the queue tables and notify trigger");
    client
        .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} {trigger} COMMIT;"))
        .await
}

/// The job itself: counts the words of the payload. Replace with yours; it runs inside the transaction.
fn perform(payload: &str) -> i64 {
    payload.split_whitespace().count() as i64
}

export_async_job!(PgQueue);

#[cfg(test)]
mod tests {
    use pmhost_plugin_api::testing::{Error, Worker};

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(super::identifier(r#"my"chan"#), r#""my""chan""#);
        assert_eq!(super::literal("it's"), "'it''s'");
    }

    #[test]
    fn a_job_counts_words() {
        assert_eq!(super::perform("send the  monthly report"), 4);
    }

    /// Runs `init` with `config` (the TOML of `[task.config]`) and returns the failure, worded as the host
    /// reports it.
    fn init_failure(config: &str) -> String {
        let error = Worker::builder().task("jobs").config_toml(config).init_async::<super::PgQueue>().unwrap_err();
        assert!(matches!(error, Error::InitFailed(_)), "{config:?}: {error:?}");
        error.to_string()
    }

    #[test]
    fn settings_mistakes_fail_init_before_connecting() {
        let cases = [
            ("batch_size = 5", "plugin init failed: invalid [task.config] for task jobs: missing field `connection`"),
            (
                "connection = 'host=/run/postgresql'\nbatch = 5",
                "plugin init failed: invalid [task.config] for task jobs: unknown field `batch`",
            ),
            (
                "connection = 'host=/run/postgresql'\nbatch_size = 0",
                "plugin init failed: batch_size must be at least 1",
            ),
            (
                "connection = 'port=not-a-number'",
                "plugin init failed: invalid connection string: invalid value for option `port`",
            ),
        ];
        for (config, expected) in cases {
            let failure = init_failure(config);
            assert!(failure.starts_with(expected), "{config:?}: expected {expected:?}, got {failure:?}");
        }
    }

    #[test]
    fn an_unreachable_server_fails_init_with_the_drivers_message() {
        // A socket directory where no server listens: the connect fails at once (no timeout to wait out).
        let dir = std::env::temp_dir().join(format!("pg-queue-test-{}-no-server", std::process::id()));
        let failure = init_failure(&format!("connection = 'host={} dbname=app'", dir.display()));
        assert!(failure.starts_with("plugin init failed: error connecting to server"), "{failure}");
    }
}
