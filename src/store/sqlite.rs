//! SQLite store: the zero-setup default, one file on one host.
//!
//! Where it differs from PostgreSQL, and why:
//! - Writes that must be atomic run in `BEGIN IMMEDIATE` transactions. They
//!   take SQLite's single write lock up front, so two processes on one file
//!   queue behind each other (`busy_timeout`) instead of both reading the same
//!   pending rows: that is what keeps their claims disjoint. SQLite has no
//!   row locks, so there is no SKIP LOCKED; the write lock is held for
//!   milliseconds, never across a provider call.
//! - No data-modifying CTEs: a claim is `UPDATE ... WHERE id IN (SELECT ...
//!   LIMIT n) RETURNING`, followed by the attempt and event inserts in the
//!   same transaction. Batches of outcomes travel as one JSON parameter
//!   unpacked with `json_each` (see `batch.rs`).
//! - Times are INTEGER epoch milliseconds (see migrations/sqlite). "Now" is
//!   read once per transaction from the host clock and bound as `?1`-style
//!   parameters, like PostgreSQL's `now()`, which is fixed per transaction.
//!   Every process on the file runs on the same host, so they share that clock.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, Sqlite};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::backend::{Backend, DirectorySql};
use super::batch::{
    AttemptRef, EXPIRE_BATCH, OutcomeRow, first_per_id, millis, parse_status, reap_reason,
    record_report, sweep_expired, to_json,
};
use super::deadline;
use super::query::{Arg, Style};
use super::reports::{ReportTarget, apply_report, outcome_events, reap_events, report_target};
use super::rows::ClaimedRows;
use super::session;
use super::{
    Claim, Leases, PurgeReport, Queue, ReapReport, RecordReport, Reports, Retention, Schema,
    StoreError, StoreOptions,
};
use crate::domain::outcome::{Guarantee, ReleaseReason};
use crate::domain::report::{DeliveryReport, ReportApplied};
use crate::domain::{Outcome, Status};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Fineract's tables, the default directory (SQLite placeholders).
const CLIENT_QUERY: &str = "SELECT mobile_no FROM m_client WHERE id = ?";
const STAFF_QUERY: &str = "SELECT mobile_no FROM m_staff WHERE id = ?";

/// How long a connection waits for another one's write lock before giving up
/// (the error is then transient and the operation is retried).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The outbox in an SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    call_timeout: Duration,
    directory: DirectorySql,
    /// The API's limit on its statements (none for the dispatcher's pool).
    statement_timeout: Option<Duration>,
}

impl SqliteStore {
    /// A pool on the file named by a `sqlite://path` (or `sqlite:path`) URL,
    /// created on first use if missing; relative paths are relative to the
    /// working directory.
    pub fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        // The platform has to INSERT into the outbox, and the daemon must not
        // lose it at exit: an in-memory database can do neither.
        if options.url.contains(":memory:") || options.url.contains("mode=memory") {
            return Err(StoreError::Unsupported(
                "an in-memory SQLite database cannot be an outbox (nothing else can write to it \
                 and it is gone at exit); use sqlite://path/to/file.db"
                    .into(),
            ));
        }
        let connect = SqliteConnectOptions::from_str(&options.url)
            .map_err(StoreError::Database)?
            .create_if_missing(true)
            // WAL: readers never block the writer and the writer never blocks
            // readers, so `GET /sms` and the dispatcher do not wait on each other.
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed outcome survives a power cut (NORMAL could lose
            // the last `sent` and send the message again).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // Says where the file is: with the default URL that is the working directory.
        let file = std::path::absolute(connect.get_filename())
            .unwrap_or_else(|_| connect.get_filename().to_owned());
        tracing::info!(file = %file.display(), "outbox in an SQLite file");
        let mut pool = SqlitePoolOptions::new()
            .max_connections(options.pool_size)
            .acquire_timeout(options.connect_timeout);
        // Only the API's pools set deadlines; the dispatcher's pays nothing for them.
        if options.session.statement_timeout.is_some() {
            pool = pool.after_release(|conn, _| Box::pin(session::sqlite_after_release(conn)));
        }
        let pool = pool.connect_lazy_with(connect);
        Ok(Self {
            pool,
            call_timeout: options.call_timeout,
            directory: DirectorySql::new(&options.directory, CLIENT_QUERY, STAFF_QUERY),
            statement_timeout: options.session.statement_timeout,
        })
    }

    /// The underlying pool, for tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Runs `work` on one connection within `database.call_timeout`.
    async fn call<T>(
        &self,
        work: impl AsyncFnOnce(&mut PoolConnection<Sqlite>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        deadline::call(&self.pool, self.call_timeout, work).await
    }
}

/// Now, as stored: epoch milliseconds from the host clock.
fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

/// Epoch milliseconds of a time (sub-millisecond digits are dropped).
pub fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

/// The time of stored epoch milliseconds.
pub fn from_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

// One batch of the expiry sweep: expired pending rows become `failed`.
// ?1 = now, ?2 = batch size.
const EXPIRE: &str = "
UPDATE sms SET status = 'failed', last_error = 'expired', updated_at = ?1
WHERE id IN (
    SELECT id FROM sms
    WHERE status = 'pending' AND expires_at <= ?1
    ORDER BY expires_at
    LIMIT ?2)
RETURNING id";

// ?1 = JSON array of ids, ?2 = now.
const EXPIRE_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT value, 'pending', 'failed', 'expired before it could be sent', ?2 FROM json_each(?1)";

// The claim. The subquery picks due rows in due order; under BEGIN IMMEDIATE
// no other writer can pick the same rows before we commit. A row past
// `expires_at` is never claimed, whether or not the sweep has reached it yet.
// ?1 = now, ?2 = instance, ?3 = lease in ms, ?4 = batch size.
const CLAIM: &str = "
UPDATE sms SET
    status = 'sending',
    locked_by = ?2,
    lease_expires_at = ?1 + ?3,
    attempts = attempts + 1,
    send_key = COALESCE(send_key, lower(hex(randomblob(16)))),
    updated_at = ?1
WHERE id IN (
    SELECT id FROM sms
    WHERE status = 'pending' AND due_at <= ?1
      AND (expires_at IS NULL OR expires_at > ?1)
    ORDER BY due_at, id
    LIMIT ?4)
RETURNING id, attempts, mobile_no, message, send_key";

// The claim writes no attempt row: the outcome (or the reaper) writes it
// whole, from the lease columns (`updated_at` is when the attempt started).
// ?1 = JSON [{id, attempt}], ?2 = instance, ?3 = now.
const CLAIM_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT value ->> '$.id', 'pending', 'sending',
       'claimed by ' || ?2 || ' for attempt ' || (value ->> '$.attempt'), ?3
FROM json_each(?1)";

// The outcomes of a batch as rows: ?1 = JSON [OutcomeRow].
// The WHERE clause is the fence: only a row still `sending` under this attempt
// and this instance's lease changes; a stale write is left alone.
// A delivery report kept on the row (migration 0010) decides its status: the
// provider has the message, whatever this outcome says. RETURNING gives the
// new status, so the events can say `sending -> sent -> final`.
// ?2 = instance, ?3 = now.
const RECORD: &str = "
UPDATE sms SET
    status = COALESCE(sms.early_report, i.next_status),
    locked_by = NULL,
    lease_expires_at = NULL,
    next_attempt_at = CASE WHEN i.next_status = 'pending' AND sms.early_report IS NULL
                           THEN ?3 + i.retry_ms ELSE sms.next_attempt_at END,
    sent_at = CASE WHEN i.next_status = 'sent' OR sms.early_report IS NOT NULL
                   THEN ?3 ELSE sms.sent_at END,
    delivered_at = CASE WHEN sms.early_report = 'delivered' THEN ?3 ELSE sms.delivered_at END,
    provider_message_id = COALESCE(i.provider_message_id, sms.provider_message_id),
    last_error = COALESCE(i.error, sms.last_error),
    segments = COALESCE(i.segments, sms.segments),
    provider = COALESCE(i.provider, sms.provider),
    updated_at = ?3
FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt,
             value ->> '$.next_status' AS next_status, value ->> '$.retry_ms' AS retry_ms,
             value ->> '$.provider_message_id' AS provider_message_id,
             value ->> '$.error' AS error, value ->> '$.segments' AS segments,
             value ->> '$.provider' AS provider
      FROM json_each(?1)) AS i
WHERE sms.id = i.id
  AND sms.status = 'sending'
  AND sms.attempts = i.attempt
  AND sms.locked_by = ?2
RETURNING sms.id, sms.early_report, sms.early_report_reason";

// The attempt rows of a batch, run before RECORD (in its transaction), on
// the rows that pass the same fence: the row as the claim left it gives the
// instance and the start. The upsert completes a row an older
// smsrelay wrote at the claim. ?1 = JSON [OutcomeRow], ?2 = instance, ?3 = now.
const RECORD_ATTEMPTS: &str = "
INSERT INTO sms_attempt (sms_id, attempt, instance, started_at, finished_at, outcome,
                         http_status, provider_message_id, error, provider)
SELECT sms.id, i.attempt, sms.locked_by, sms.updated_at, ?3, i.outcome,
       i.http_status, i.provider_message_id, i.error, i.provider
FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt,
             value ->> '$.outcome' AS outcome, value ->> '$.http_status' AS http_status,
             value ->> '$.provider_message_id' AS provider_message_id,
             value ->> '$.error' AS error, value ->> '$.provider' AS provider
      FROM json_each(?1)) AS i
JOIN sms ON sms.id = i.id
WHERE sms.status = 'sending' AND sms.attempts = i.attempt AND sms.locked_by = ?2
ON CONFLICT (sms_id, attempt) DO UPDATE SET
    finished_at = excluded.finished_at,
    outcome = excluded.outcome,
    http_status = excluded.http_status,
    provider_message_id = excluded.provider_message_id,
    error = excluded.error,
    provider = excluded.provider";

// ?1 = JSON [batch::EventRow], inserted in array order (the reaper's too); ?2 = now.
const RECORD_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT value ->> '$.id', value ->> '$.from_status', value ->> '$.to_status', value ->> '$.reason', ?2
FROM json_each(?1) ORDER BY key";

// Rows the provider never took (shutdown, a paused or throttling provider):
// back to `pending` as if never claimed.
// ?1 = JSON [{id, attempt}], ?2 = instance, ?3 = now.
const RELEASE: &str = "
UPDATE sms SET
    status = 'pending',
    attempts = sms.attempts - 1,
    locked_by = NULL,
    lease_expires_at = NULL,
    updated_at = ?3
FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt FROM json_each(?1)) AS i
WHERE sms.id = i.id AND sms.status = 'sending'
  AND sms.attempts = i.attempt AND sms.locked_by = ?2
RETURNING sms.id";

// No request was ever made, so the attempt gets no row (one an older
// smsrelay wrote at the claim goes). ?1 = JSON [{id, attempt}].
const RELEASE_ATTEMPTS: &str = "
DELETE FROM sms_attempt
WHERE (sms_id, attempt) IN (SELECT value ->> '$.id', value ->> '$.attempt' FROM json_each(?1))";

// ?1 = JSON [id], ?2 = now, ?3 = the reason.
const RELEASE_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT value, 'sending', 'pending', ?3, ?2 FROM json_each(?1)";

// Lease renewal for rows still being sent, fenced like outcomes.
// ?1 = JSON [{id, attempt}], ?2 = instance, ?3 = now, ?4 = lease in ms.
const RENEW: &str = "
UPDATE sms SET lease_expires_at = ?3 + ?4
FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt FROM json_each(?1)) AS i
WHERE sms.id = i.id AND sms.status = 'sending'
  AND sms.attempts = i.attempt AND sms.locked_by = ?2";

// Expired leases: the instance crashed or hung. REAP_ATTEMPTS picks the
// rows and writes their `abandoned` attempt rows from the lease columns
// (instance, and `updated_at`: the attempt's start) before REAP changes
// them; the upsert completes a row an older smsrelay wrote at the
// claim. ?1 = now, ?2 = limit.
const REAP_ATTEMPTS: &str = "
INSERT INTO sms_attempt (sms_id, attempt, instance, started_at, finished_at, outcome, error)
SELECT id, attempts, locked_by, updated_at, ?1, 'abandoned',
       'lease expired before an outcome was recorded'
FROM sms
WHERE id IN (
    SELECT id FROM sms
    WHERE status = 'sending' AND lease_expires_at < ?1
    ORDER BY lease_expires_at
    LIMIT ?2)
ON CONFLICT (sms_id, attempt) DO UPDATE SET
    finished_at = excluded.finished_at,
    outcome = excluded.outcome,
    error = excluded.error
RETURNING sms_id";

// Then the rows REAP_ATTEMPTS picked. SET expressions read the row as it
// was before the update, so `last_error` still sees `locked_by`. Under
// at-most-once (?4 = 1) the row fails with `outcome unknown`. A row with a
// delivery report kept (migration 0010) takes the report's final status.
// ?1 = now, ?2 = max attempts, ?3 = JSON array of ids, ?4 = at-most-once.
const REAP: &str = "
UPDATE sms SET
    status = CASE WHEN early_report IS NOT NULL THEN early_report
                  WHEN ?4 OR attempts >= ?2 THEN 'failed' ELSE 'pending' END,
    last_error = CASE WHEN ?4 THEN 'outcome unknown: ' ELSE '' END
                 || 'lease of ' || locked_by || ' expired during attempt ' || attempts,
    next_attempt_at = ?1,
    sent_at = CASE WHEN early_report IS NOT NULL THEN ?1 ELSE sent_at END,
    delivered_at = CASE WHEN early_report = 'delivered' THEN ?1 ELSE delivered_at END,
    locked_by = NULL,
    lease_expires_at = NULL,
    updated_at = ?1
WHERE id IN (SELECT value FROM json_each(?3))
  AND status = 'sending'
RETURNING id, attempts, status, last_error, early_report, early_report_reason";

// One retention batch: finished rows last changed before ?1 (epoch ms),
// oldest first, at most ?2. Walks the partial index sms_finished_idx
// (migration 0009), named with INDEXED BY: without statistics the planner
// would take sms_status_idx and sort every finished row. The IN list must
// read as the index's does, or SQLite refuses the statement. Public for the
// plan test.
pub const RETENTION_ROWS: &str = concat!(
    "
SELECT id FROM sms INDEXED BY sms_finished_idx
WHERE status IN ",
    crate::store::finished_statuses!(),
    " AND updated_at < ?1
ORDER BY updated_at
LIMIT ?2"
);

// ?1 = JSON array of those ids. Children first (the counts are logged).
const RETENTION_DELETE_ATTEMPTS: &str =
    "DELETE FROM sms_attempt WHERE sms_id IN (SELECT value FROM json_each(?1))";
const RETENTION_DELETE_EVENTS: &str =
    "DELETE FROM sms_event WHERE sms_id IN (SELECT value FROM json_each(?1))";
const RETENTION_DELETE_MESSAGES: &str =
    "DELETE FROM sms WHERE id IN (SELECT value FROM json_each(?1))";

// ?1 = now; the age comes back in milliseconds.
const DUE_STATS: &str = "
SELECT count(*), COALESCE(?1 - min(due_at), 0)
FROM sms WHERE status = 'pending' AND due_at <= ?1";

/// Binds `args` in order; times as epoch milliseconds.
fn bind<'q>(
    mut query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    args: &[Arg],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(*v),
            Arg::Text(v) => query.bind(v.clone()),
            Arg::Time(v) => query.bind(v.map(to_ms)),
        };
    }
    query
}

// A delivery report moves `sent` to its final status. ?1 = id, ?2 = status, ?3 = now.
const REPORT_UPDATE: &str = "
UPDATE sms SET status = ?2, updated_at = ?3,
       delivered_at = CASE WHEN ?2 = 'delivered' THEN ?3 ELSE delivered_at END
WHERE id = ?1";

// Its event. ?1 = id, ?2 = status, ?3 = now, ?4 = the provider's status and code.
const REPORT_EVENT: &str = "INSERT INTO sms_event (sms_id, from_status, to_status, occurred_at, reason) VALUES (?1, 'sent', ?2, ?3, ?4)";

// A report before the send's outcome is kept on the row for RECORD; the
// first one only, so a duplicate or a contrary one changes nothing.
// ?1 = id, ?2 = status, ?3 = the provider's status and code.
const REPORT_KEEP: &str = "
UPDATE sms SET early_report = ?2, early_report_reason = ?3
WHERE id = ?1 AND early_report IS NULL";

#[async_trait]
impl Backend for SqliteStore {
    type Row = SqliteRow;

    const MIGRATOR: &'static Migrator = &MIGRATOR;
    const STYLE: Style = Style {
        placeholder: Style::question_mark,
        nulls_last: true,
    };
    const MIGRATIONS_TABLE: &'static str = "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
    const SENT_BEFORE_WINDOW: &'static str =
        "s.sent_at < CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER) - ?";
    const DEMO_INSERT: &'static str = concat!("INSERT OR IGNORE", crate::store::demo_rows!());

    async fn fetch(&self, sql: &str, args: &[Arg]) -> Result<Vec<SqliteRow>, StoreError> {
        let limit = self.statement_timeout;
        self.call(async |conn| {
            let query = bind(sqlx::query(AssertSqlSafe(sql.to_owned())), args);
            Ok(match limit {
                Some(limit) => session::sqlite_fetch_within(conn, query, limit).await?,
                None => query.fetch_all(&mut **conn).await?,
            })
        })
        .await
    }

    fn directory(&self) -> &DirectorySql {
        &self.directory
    }

    async fn apply_migrations(&self) -> Result<(), StoreError> {
        // SQLite has no advisory lock: two processes starting on a fresh file
        // race, and the loser's statement of a migration fails once the winner
        // has committed that migration. Running again skips what the winner
        // applied; only a failure while nobody makes progress is real.
        let mut applied = self.applied_migrations().await;
        loop {
            let Err(e) = MIGRATOR.run(&self.pool).await else {
                return Ok(());
            };
            if self.ready().await.unwrap_or(false) {
                tracing::debug!(error = %e, "another process applied the migrations first");
                return Ok(());
            }
            let now = self.applied_migrations().await;
            if now <= applied {
                return Err(e.into());
            }
            tracing::debug!(error = %e, "another process is applying the migrations");
            applied = now;
        }
    }

    async fn watch_inserts(&self, waiter: super::Waiter<'_>, stop: &CancellationToken) {
        super::wakeups::watch_sqlite(&self.pool.connect_options(), waiter.wake, stop).await
    }

    async fn due_stats(&self) -> Result<(i64, f64), StoreError> {
        let (due, oldest_ms): (i64, i64) = self
            .call(async |conn| {
                Ok(sqlx::query_as(DUE_STATS)
                    .bind(now_ms())
                    .fetch_one(&mut **conn)
                    .await?)
            })
            .await?;
        Ok((due, oldest_ms as f64 / 1000.0))
    }
}

impl SqliteStore {
    /// How many migrations are applied (0 before the first).
    async fn applied_migrations(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .unwrap_or(0)
    }

    /// One transaction of the expiry sweep; returns how many rows it failed.
    async fn expire_batch(&self) -> Result<u64, StoreError> {
        self.call(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let now = now_ms();
            let expired: Vec<i64> = sqlx::query_scalar(EXPIRE)
                .bind(now)
                .bind(i64::from(EXPIRE_BATCH))
                .fetch_all(&mut *tx)
                .await?;
            if !expired.is_empty() {
                sqlx::query(EXPIRE_EVENTS)
                    .bind(to_json(&expired)?)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(expired.len() as u64)
        })
        .await
    }
}

#[async_trait]
impl Queue for SqliteStore {
    async fn claim(
        &self,
        instance: &str,
        batch_size: u32,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let expired = sweep_expired(|| self.expire_batch()).await?;
        let read = self
            .call(async |conn| {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                let now = now_ms();
                let rows = sqlx::query(CLAIM)
                    .bind(now)
                    .bind(instance)
                    .bind(millis(lease))
                    .bind(i64::from(batch_size))
                    .fetch_all(&mut *tx)
                    .await?;
                let read = ClaimedRows::read(&rows, 0)?;
                let refs = read.refs();
                if !refs.is_empty() {
                    let claimed = to_json(&refs)?;
                    sqlx::query(CLAIM_EVENTS)
                        .bind(&claimed)
                        .bind(instance)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(read)
            })
            .await?;
        Ok(read.finish(self, instance, expired).await)
    }

    async fn record_outcomes(
        &self,
        instance: &str,
        outcomes: &[Outcome],
    ) -> Result<RecordReport, StoreError> {
        if outcomes.is_empty() {
            return Ok(RecordReport::default());
        }
        let rows: Vec<OutcomeRow> = first_per_id(outcomes, |o| o.id)
            .into_iter()
            .map(OutcomeRow::new)
            .collect();
        self.call(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let now = now_ms();
            let json = to_json(&rows)?;
            // Before RECORD clears the lease columns it reads.
            sqlx::query(RECORD_ATTEMPTS)
                .bind(&json)
                .bind(instance)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            // (id, the report kept on the row and its reason): the rows that changed.
            let applied: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(RECORD)
                .bind(&json)
                .bind(instance)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            if !applied.is_empty() {
                let applied_ids: HashSet<i64> = applied.iter().map(|(id, _, _)| *id).collect();
                let applied_rows: Vec<&OutcomeRow> = rows
                    .iter()
                    .filter(|r| applied_ids.contains(&r.id))
                    .collect();
                let kept = |id: i64| {
                    applied.iter().find(|row| row.0 == id).and_then(|row| {
                        Some((row.1.as_deref()?, row.2.as_deref().unwrap_or_default()))
                    })
                };
                sqlx::query(RECORD_EVENTS)
                    .bind(to_json(&outcome_events(&applied_rows, kept))?)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(record_report(outcomes.len(), applied.len()))
        })
        .await
    }
}

#[async_trait]
impl Leases for SqliteStore {
    async fn release(
        &self,
        instance: &str,
        claims: &[(i64, u32)],
        why: ReleaseReason,
    ) -> Result<u64, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let input = AttemptRef::all(first_per_id(claims, |(id, _)| *id));
        self.call(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let now = now_ms();
            let released: Vec<i64> = sqlx::query_scalar(RELEASE)
                .bind(to_json(&input)?)
                .bind(instance)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            if !released.is_empty() {
                let released_ids: HashSet<i64> = released.iter().copied().collect();
                let gone: Vec<&AttemptRef> = input
                    .iter()
                    .filter(|r| released_ids.contains(&r.id))
                    .collect();
                sqlx::query(RELEASE_ATTEMPTS)
                    .bind(to_json(&gone)?)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(RELEASE_EVENTS)
                    .bind(to_json(&released)?)
                    .bind(now)
                    .bind(why.event_reason())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(released.len() as u64)
        })
        .await
    }

    async fn renew(
        &self,
        instance: &str,
        claims: &[(i64, u32)],
        lease: Duration,
    ) -> Result<u64, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let json = AttemptRef::distinct_json(claims)?;
        self.call(async |conn| {
            let renewed = sqlx::query(RENEW)
                .bind(&json)
                .bind(instance)
                .bind(now_ms())
                .bind(millis(lease))
                .execute(&mut **conn)
                .await?;
            Ok(renewed.rows_affected())
        })
        .await
    }

    async fn reap_expired_leases(
        &self,
        max_attempts: u32,
        guarantee: Guarantee,
        limit: u32,
    ) -> Result<ReapReport, StoreError> {
        let at_most_once = guarantee == Guarantee::AtMostOnce;
        // BEGIN IMMEDIATE already makes reapers on one file take turns, so
        // there is no separate lock and never a skipped run.
        self.call(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let now = now_ms();
            let picked: Vec<i64> = sqlx::query_scalar(REAP_ATTEMPTS)
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            if picked.is_empty() {
                tx.commit().await?;
                return Ok(ReapReport::default());
            }
            let rows = sqlx::query(REAP)
                .bind(now)
                .bind(i64::from(max_attempts))
                .bind(to_json(&picked)?)
                .bind(at_most_once)
                .fetch_all(&mut *tx)
                .await?;
            let mut report = ReapReport::default();
            let mut read = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: i64 = row.try_get("id")?;
                let status: String = row.try_get("status")?;
                let last_error: String = row.try_get("last_error")?;
                let early: Option<String> = row.try_get("early_report")?;
                let early_reason: Option<String> = row.try_get("early_report_reason")?;
                let parsed = parse_status(id, &status)?;
                match parsed {
                    Status::Failed => report.failed += 1,
                    Status::Pending => report.requeued += 1,
                    _ => report.reported += 1,
                }
                read.push((id, parsed, last_error, early.zip(early_reason)));
            }
            let mut events = Vec::with_capacity(read.len());
            for (id, status, last_error, kept) in &read {
                let kept = kept.as_ref().map(|(to, why)| (to.as_str(), why.as_str()));
                let reason = reap_reason(at_most_once, *status == Status::Failed, last_error);
                events.extend(reap_events(*id, status.as_str(), reason, last_error, kept));
            }
            if !events.is_empty() {
                sqlx::query(RECORD_EVENTS)
                    .bind(to_json(&events)?)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(report)
        })
        .await
    }
}

#[async_trait]
impl Retention for SqliteStore {
    async fn delete_finished(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<PurgeReport, StoreError> {
        // BEGIN IMMEDIATE makes retention runs on one file take turns, as
        // the reaper's do: no separate lock, never a skipped batch.
        self.call(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let cutoff = now_ms().saturating_sub(millis(older_than));
            let ids: Vec<i64> = sqlx::query_scalar(RETENTION_ROWS)
                .bind(cutoff)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            let mut report = PurgeReport::default();
            if !ids.is_empty() {
                let json = to_json(&ids)?;
                let mut delete = async |sql: &'static str| -> Result<u64, StoreError> {
                    let done = sqlx::query(sql).bind(&json).execute(&mut *tx).await?;
                    Ok(done.rows_affected())
                };
                report.attempts = delete(RETENTION_DELETE_ATTEMPTS).await?;
                report.events = delete(RETENTION_DELETE_EVENTS).await?;
                report.messages = delete(RETENTION_DELETE_MESSAGES).await?;
            }
            tx.commit().await?;
            Ok(report)
        })
        .await
    }
}

#[async_trait]
impl Reports for SqliteStore {
    async fn apply_delivery_report(
        &self,
        report: &DeliveryReport,
    ) -> Result<ReportApplied, StoreError> {
        // BEGIN IMMEDIATE takes the write lock first (SQLite has no FOR UPDATE);
        // times come from the host clock, as everywhere on SQLite.
        self.call(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let now = now_ms();
            apply_report!(
                tx,
                report,
                sqlx::query_as("SELECT status, attempts FROM sms WHERE id = ?1"),
                |to| sqlx::query(REPORT_UPDATE)
                    .bind(report.sms_id)
                    .bind(to)
                    .bind(now),
                sqlx::query(REPORT_EVENT)
                    .bind(report.sms_id)
                    .bind(to)
                    .bind(now)
                    .bind(&report.reason),
                sqlx::query(REPORT_KEEP)
                    .bind(report.sms_id)
                    .bind(to)
                    .bind(&report.reason)
            )
        })
        .await
    }

    async fn attempt_by_provider_message_id(
        &self,
        provider: &str,
        provider_message_id: &str,
    ) -> Result<Option<(i64, u32)>, StoreError> {
        super::backend::attempt_by_provider_message_id(self, provider, provider_message_id).await
    }

    async fn overdue_reports(
        &self,
        providers: &[String],
        window: Duration,
    ) -> Result<u64, StoreError> {
        super::backend::overdue_reports(self, providers, window).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_memory_database_is_refused() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://x.db?mode=memory",
        ] {
            let options = StoreOptions {
                url: url.into(),
                pool_size: 1,
                connect_timeout: Duration::from_secs(1),
                call_timeout: Duration::from_secs(1),
                directory: Default::default(),
                session: Default::default(),
            };
            let error = SqliteStore::open(&options).err().expect(url);
            assert!(error.to_string().contains("use sqlite://path"), "{error}");
        }
    }

    #[test]
    fn epoch_milliseconds_round_trip() {
        let t = time::macros::datetime!(2026-11-27 10:15:30.123_456 UTC);
        let ms = to_ms(t);
        assert_eq!(ms, 1_795_774_530_123);
        assert_eq!(
            from_ms(ms),
            Some(time::macros::datetime!(2026-11-27 10:15:30.123 UTC))
        );
        assert_eq!(
            to_ms(time::macros::datetime!(1969-12-31 23:59:59.9995 UTC)),
            -1
        );
    }
}
