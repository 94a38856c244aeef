//! MariaDB / MySQL store: the outbox in the platform's own MariaDB or MySQL
//! database (Fineract's most common home).
//!
//! Where it differs from PostgreSQL, and why:
//! - No `UPDATE ... RETURNING` and no data-modifying CTEs: each operation is a
//!   short transaction that first locks its rows (`SELECT ... FOR UPDATE`,
//!   with SKIP LOCKED where another instance may hold them), then updates and
//!   inserts by id. Batches travel as one JSON parameter unpacked with
//!   `JSON_TABLE` (see `batch.rs`), so every statement is fixed text.
//! - MySQL evaluates the assignments of a multi-table UPDATE in no promised
//!   order, so no assignment reads a column another one changes: texts such
//!   as "lease of X expired" are built from the locked rows first.
//! - Sessions run READ COMMITTED: under MySQL's default REPEATABLE READ a
//!   locking read also takes gap locks, which would block the platform's
//!   own INSERTs into `sms` while a claim is open.
//! - Times are DATETIME(6) in UTC: every session is forced to time_zone
//!   '+00:00' and the SQL uses `UTC_TIMESTAMP(6)`, so leases computed by
//!   several hosts agree whatever their own time zones.
//! - The reaper's and retention's single-instance locks are `GET_LOCK` (session-scoped, so it is
//!   taken and released on one connection; the server drops it if that
//!   connection dies).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use sqlx::migrate::Migrator;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Connection, Executor};

use super::backend::{Backend, DirectorySql, insert_args};
use super::batch::{
    AttemptRef, EXPIRE_BATCH, OutcomeRow, first_per_id, micros, reap_reason, record_report,
    sweep_expired, to_json,
};
use super::deadline;
use super::query::{Arg, Style};
use super::reports::{ReportTarget, apply_report, outcome_events, reap_events, report_target};
use super::rows::ClaimedRows;
use super::session;
use super::{
    Claim, Leases, PurgeReport, Queue, ReapReport, RecordReport, Reports, Retention, StoreError,
    StoreOptions,
};
use crate::domain::outcome::{Guarantee, ReleaseReason};
use crate::domain::report::{DeliveryReport, ReportApplied};
use crate::domain::{NewSms, Outcome, Recipient};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/mysql");

/// Fineract's tables, the default directory (MySQL placeholders).
const CLIENT_QUERY: &str = "SELECT mobile_no FROM m_client WHERE id = ?";
const STAFF_QUERY: &str = "SELECT mobile_no FROM m_staff WHERE id = ?";

/// The outbox on MariaDB or MySQL.
#[derive(Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    call_timeout: Duration,
    directory: DirectorySql,
}

impl MySqlStore {
    /// A pool that connects on first use. Accepts `mysql://` and `mariadb://`
    /// URLs (sqlx itself only knows `mysql://`).
    pub fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let url = match options.url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => options.url.clone(),
        };
        let connect = MySqlConnectOptions::from_str(&url)
            .map_err(StoreError::Database)?
            // sqlx's default too; stated because leases depend on it.
            .timezone(Some("+00:00".to_owned()));
        let session = options.session.clone();
        let pool = MySqlPoolOptions::new()
            .max_connections(options.pool_size)
            .acquire_timeout(options.connect_timeout)
            .after_connect(move |conn, _| {
                let session = session.clone();
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    session::mysql_after_connect(conn, &session).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(connect);
        Ok(Self {
            pool,
            call_timeout: options.call_timeout,
            directory: DirectorySql::new(&options.directory, CLIENT_QUERY, STAFF_QUERY),
        })
    }

    /// The underlying pool, for tests.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Runs `work` on one connection within `database.call_timeout`.
    async fn call<T>(
        &self,
        work: impl AsyncFnOnce(&mut PoolConnection<MySql>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        deadline::call(&self.pool, self.call_timeout, work).await
    }
}

/// Checks `SELECT VERSION()` against what the SQL here needs: SKIP LOCKED
/// (MariaDB 10.6, MySQL 8.0.1), JSON_TABLE (10.6, 8.0.4), expression defaults
/// (10.2, 8.0.13) and CHECK constraints that are enforced, not just parsed (10.2, 8.0.16).
pub fn check_server_version(version: &str) -> Result<(), String> {
    // Old MariaDB clients see "5.5.5-10.x.y-MariaDB"; skip that prefix.
    let trimmed = version.strip_prefix("5.5.5-").unwrap_or(version);
    let mariadb = trimmed.to_ascii_lowercase().contains("mariadb");
    let numbers: Vec<u32> = trimmed
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("")
        .split('.')
        .map_while(|part| part.parse().ok())
        .collect();
    let found = (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
        numbers.get(2).copied().unwrap_or(0),
    );
    let (product, needed) = if mariadb {
        ("MariaDB", (10, 6, 0))
    } else {
        ("MySQL", (8, 0, 16))
    };
    if found >= needed {
        return Ok(());
    }
    Err(format!(
        "{product} {version} is too old for smsrelay: it needs MariaDB 10.6+ or MySQL 8.0.16+ \
         (SELECT ... FOR UPDATE SKIP LOCKED, JSON_TABLE and enforced CHECK constraints)"
    ))
}

// --- claim -----------------------------------------------------------------

// One batch of the expiry sweep: expired pending rows become `failed`.
// SKIP LOCKED: another instance may be expiring too. Parameter: batch size.
// FORCE INDEX here and in the other locking reads: they must walk their index
// in order. With a filesort instead, FOR UPDATE would lock every row it read
// to sort, not just the batch it returns, and starve the other instances.
const EXPIRE_LOCK: &str = "
SELECT id FROM sms FORCE INDEX (sms_expiry_idx)
WHERE status = 'pending' AND expires_at <= UTC_TIMESTAMP(6)
ORDER BY expires_at
LIMIT ?
FOR UPDATE SKIP LOCKED";

// Parameter: JSON array of ids (all locked by EXPIRE_LOCK in this transaction).
const EXPIRE: &str = "
UPDATE sms s JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j ON s.id = j.id
SET s.status = 'failed', s.last_error = 'expired', s.updated_at = UTC_TIMESTAMP(6)";

const EXPIRE_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT j.id, 'pending', 'failed', 'expired before it could be sent', UTC_TIMESTAMP(6)
FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j";

// The claim, step one: lock due rows in due order, skipping rows another
// instance holds. Walks sms_due_idx (status, due_at, id). A row past
// `expires_at` is never claimed, whether or not the sweep has reached it yet.
const CLAIM_LOCK: &str = "
SELECT id, attempts, mobile_no, message, send_key FROM sms FORCE INDEX (sms_due_idx)
WHERE status = 'pending' AND due_at <= UTC_TIMESTAMP(6)
  AND (expires_at IS NULL OR expires_at > UTC_TIMESTAMP(6))
ORDER BY due_at, id
LIMIT ?
FOR UPDATE SKIP LOCKED";

// Step two, on the locked rows only: lease them to this instance, bump the
// attempt and keep the send key (made in Rust for a row claimed the first
// time). Parameters (MySQL's are positional): JSON [{id, attempt, send_key}],
// instance, lease in microseconds.
const CLAIM: &str = "
UPDATE sms s JOIN JSON_TABLE(?, '$[*]' COLUMNS (
        id BIGINT PATH '$.id', attempt INT PATH '$.attempt', send_key VARCHAR(64) PATH '$.send_key')) AS j
    ON s.id = j.id
SET s.status = 'sending',
    s.send_key = COALESCE(s.send_key, j.send_key),
    s.locked_by = ?,
    s.lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND,
    s.attempts = j.attempt,
    s.updated_at = UTC_TIMESTAMP(6)";

// The claim writes no attempt row: the outcome (or the reaper) writes it
// whole, from the lease columns (`updated_at` is when the attempt started).
// Parameters: instance, JSON [{id, attempt}].
const CLAIM_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT j.id, 'pending', 'sending', CONCAT('claimed by ', ?, ' for attempt ', j.attempt), UTC_TIMESTAMP(6)
FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$.id', attempt INT PATH '$.attempt')) AS j";

// --- outcomes and release --------------------------------------------------

// Locks every row a batch names (without SKIP LOCKED: these are ours, or
// stale). The fence is then checked on the locked rows, so it cannot change
// before commit. Parameter: JSON array of ids.
const LOCK_BY_ID: &str = "
SELECT id, status, attempts, locked_by FROM sms
WHERE id IN (SELECT j.id FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j)
ORDER BY id
FOR UPDATE";

// LOCK_BY_ID for outcomes: also the delivery report kept on each row
// (migration 0010), read under the lock so none can be added before commit.
const LOCK_FOR_OUTCOMES: &str = "
SELECT id, status, attempts, locked_by, early_report, early_report_reason FROM sms
WHERE id IN (SELECT j.id FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j)
ORDER BY id
FOR UPDATE";

// The columns of an outcome batch (batch::OutcomeRow). Parameters: JSON
// [OutcomeRow] of the outcomes that passed the fence, instance.
// The WHERE repeats the fence as a safety net. `next_status` is already the
// kept report's final status where one was kept (the provider has the
// message, whatever the outcome said), so only the outcome's own `pending`
// schedules a retry, and any other move records the send time.
const RECORD: &str = "
UPDATE sms s JOIN JSON_TABLE(?, '$[*]' COLUMNS (
        id BIGINT PATH '$.id', attempt INT PATH '$.attempt',
        next_status VARCHAR(16) PATH '$.next_status', retry_ms BIGINT PATH '$.retry_ms',
        provider_message_id VARCHAR(255) PATH '$.provider_message_id',
        error TEXT PATH '$.error', segments INT PATH '$.segments',
        provider VARCHAR(255) PATH '$.provider')) AS i
    ON s.id = i.id
SET s.status = i.next_status,
    s.locked_by = NULL,
    s.lease_expires_at = NULL,
    s.next_attempt_at = CASE WHEN i.next_status = 'pending'
                             THEN UTC_TIMESTAMP(6) + INTERVAL i.retry_ms * 1000 MICROSECOND
                             ELSE s.next_attempt_at END,
    s.sent_at = CASE WHEN i.next_status IN ('sent', 'delivered', 'undelivered')
                     THEN UTC_TIMESTAMP(6) ELSE s.sent_at END,
    s.delivered_at = CASE WHEN i.next_status = 'delivered' THEN UTC_TIMESTAMP(6) ELSE s.delivered_at END,
    s.provider_message_id = COALESCE(i.provider_message_id, s.provider_message_id),
    s.last_error = COALESCE(i.error, s.last_error),
    s.segments = COALESCE(i.segments, s.segments),
    s.provider = COALESCE(i.provider, s.provider),
    s.updated_at = UTC_TIMESTAMP(6)
WHERE s.status = 'sending' AND s.attempts = i.attempt AND s.locked_by = ?";

// The attempt rows of the applied outcomes, run before RECORD on the rows
// it locked: the row as the claim left it gives the instance and the start.
// The upsert completes a row an older smsrelay wrote at the
// claim (VALUES(): MariaDB has no row alias). Parameter: JSON [OutcomeRow] (applied ones).
const RECORD_ATTEMPTS: &str = "
INSERT INTO sms_attempt (sms_id, attempt, instance, started_at, finished_at, outcome,
                         http_status, provider_message_id, error, provider)
SELECT s.id, i.attempt, s.locked_by, s.updated_at, UTC_TIMESTAMP(6), i.outcome,
       i.http_status, i.provider_message_id, i.error, i.provider
FROM JSON_TABLE(?, '$[*]' COLUMNS (
        id BIGINT PATH '$.id', attempt INT PATH '$.attempt', outcome VARCHAR(16) PATH '$.outcome',
        http_status INT PATH '$.http_status',
        provider_message_id VARCHAR(255) PATH '$.provider_message_id', error TEXT PATH '$.error',
        provider VARCHAR(255) PATH '$.provider')) AS i
JOIN sms s ON s.id = i.id
ON DUPLICATE KEY UPDATE
    finished_at = VALUES(finished_at),
    outcome = VALUES(outcome),
    http_status = VALUES(http_status),
    provider_message_id = VALUES(provider_message_id),
    error = VALUES(error),
    provider = VALUES(provider)";

// Parameter: JSON [batch::EventRow], inserted in array order (the reaper's too).
const RECORD_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT i.id, i.from_status, i.to_status, i.reason, UTC_TIMESTAMP(6)
FROM JSON_TABLE(?, '$[*]' COLUMNS (
        n FOR ORDINALITY, id BIGINT PATH '$.id', from_status VARCHAR(16) PATH '$.from_status',
        to_status VARCHAR(16) PATH '$.to_status', reason TEXT PATH '$.reason')) AS i
ORDER BY i.n";

// Rows the provider never took (shutdown, a paused or throttling provider):
// back to `pending` as if never claimed. Parameters: JSON [{id, attempt}]
// that passed the fence, instance.
const RELEASE: &str = "
UPDATE sms s JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$.id', attempt INT PATH '$.attempt')) AS i
    ON s.id = i.id
SET s.status = 'pending',
    s.attempts = s.attempts - 1,
    s.locked_by = NULL,
    s.lease_expires_at = NULL,
    s.updated_at = UTC_TIMESTAMP(6)
WHERE s.status = 'sending' AND s.attempts = i.attempt AND s.locked_by = ?";

// No request was ever made, so the attempt gets no row (one an older
// smsrelay wrote at the claim goes).
const RELEASE_ATTEMPTS: &str = "
DELETE a FROM sms_attempt a
JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$.id', attempt INT PATH '$.attempt')) AS i
    ON a.sms_id = i.id AND a.attempt = i.attempt";

// Parameters: the reason, JSON [{id, attempt}].
const RELEASE_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT i.id, 'sending', 'pending', ?, UTC_TIMESTAMP(6)
FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$.id')) AS i";

// Lease renewal for rows still being sent, fenced like outcomes.
// Parameters: lease in microseconds, JSON [{id, attempt}], instance.
const RENEW: &str = "
UPDATE sms s JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$.id', attempt INT PATH '$.attempt')) AS i
    ON s.id = i.id
SET s.lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
WHERE s.status = 'sending' AND s.attempts = i.attempt AND s.locked_by = ?";

// --- reaper ----------------------------------------------------------------

// Per database: GET_LOCK names are server-wide, and two smsrelay deployments
// may share one server. Names are capped at 64 characters.
const REAPER_LOCK: &str = "SELECT GET_LOCK(LEFT(CONCAT('smsrelay.reaper.', DATABASE()), 64), 0)";
const REAPER_UNLOCK: &str = "SELECT RELEASE_LOCK(LEFT(CONCAT('smsrelay.reaper.', DATABASE()), 64))";

// Expired leases: the instance crashed or hung. Parameter: limit.
// With the delivery report kept on each row, if any (migration 0010).
const REAP_LOCK: &str = "
SELECT id, attempts, locked_by, early_report, early_report_reason FROM sms FORCE INDEX (sms_lease_idx)
WHERE status = 'sending' AND lease_expires_at < UTC_TIMESTAMP(6)
ORDER BY lease_expires_at
LIMIT ?
FOR UPDATE SKIP LOCKED";

// Parameter: JSON [ReapRow]. A row with a report kept takes its final status.
const REAP: &str = "
UPDATE sms s JOIN JSON_TABLE(?, '$[*]' COLUMNS (
        id BIGINT PATH '$.id', status VARCHAR(16) PATH '$.status',
        last_error TEXT PATH '$.last_error')) AS i
    ON s.id = i.id
SET s.status = i.status,
    s.last_error = i.last_error,
    s.next_attempt_at = UTC_TIMESTAMP(6),
    s.sent_at = CASE WHEN i.status IN ('delivered', 'undelivered') THEN UTC_TIMESTAMP(6) ELSE s.sent_at END,
    s.delivered_at = CASE WHEN i.status = 'delivered' THEN UTC_TIMESTAMP(6) ELSE s.delivered_at END,
    s.locked_by = NULL,
    s.lease_expires_at = NULL,
    s.updated_at = UTC_TIMESTAMP(6)";

// The open attempt gets its row, `abandoned` (it may have reached the
// provider: at-least-once), from the lease columns before REAP clears them:
// the instance, and `updated_at`, set at the claim (its start). The upsert
// completes a row an older smsrelay wrote at the claim.
const REAP_ATTEMPTS: &str = "
INSERT INTO sms_attempt (sms_id, attempt, instance, started_at, finished_at, outcome, error)
SELECT s.id, i.attempt, s.locked_by, s.updated_at, UTC_TIMESTAMP(6), 'abandoned',
       'lease expired before an outcome was recorded'
FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$.id', attempt INT PATH '$.attempt')) AS i
JOIN sms s ON s.id = i.id
ON DUPLICATE KEY UPDATE
    finished_at = VALUES(finished_at),
    outcome = VALUES(outcome),
    error = VALUES(error)";

// --- retention -------------------------------------------------------------

const RETENTION_LOCK: &str =
    "SELECT GET_LOCK(LEFT(CONCAT('smsrelay.retention.', DATABASE()), 64), 0)";
const RETENTION_UNLOCK: &str =
    "SELECT RELEASE_LOCK(LEFT(CONCAT('smsrelay.retention.', DATABASE()), 64))";

// Finished rows last changed before now - ? microseconds, at most ?. Walks
// sms_finished_idx (status, updated_at) range by range and stops at the
// limit; no ORDER BY, which would sort, and lock, every old row first.
// SKIP LOCKED passes over a `sent` row a delivery report holds. Public for
// the plan test.
pub const RETENTION_LOCK_ROWS: &str = concat!(
    "
SELECT id FROM sms FORCE INDEX (sms_finished_idx)
WHERE status IN ",
    crate::store::finished_statuses!(),
    "
  AND updated_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
LIMIT ?
FOR UPDATE SKIP LOCKED"
);

// Parameter: JSON array of the ids locked above. Children first, then the
// messages (the foreign keys would cascade, but these counts are logged).
const RETENTION_DELETE_ATTEMPTS: &str = "
DELETE a FROM sms_attempt a JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j
    ON a.sms_id = j.id";
const RETENTION_DELETE_EVENTS: &str = "
DELETE e FROM sms_event e JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j
    ON e.sms_id = j.id";
const RETENTION_DELETE_MESSAGES: &str = "
DELETE s FROM sms s JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j
    ON s.id = j.id";

/// One row the reaper recovers, with the texts PostgreSQL builds in SQL.
#[derive(Debug, Serialize)]
struct ReapRow {
    id: i64,
    attempt: i64,
    status: &'static str,
    last_error: String,
}

// --- the rest --------------------------------------------------------------

// A duplicate idempotency key fails with ER_DUP_ENTRY (1062); the caller then
// looks the first row up. (INSERT IGNORE would also swallow CHECK failures.)
const ENQUEUE: &str = "
INSERT INTO sms (client_id, staff_id, mobile_no, message, not_before, expires_at, idempotency_key)
VALUES (?, ?, ?, ?, ?, ?, ?)";

const ER_DUP_ENTRY: u16 = 1062;

// `* 1e-6` makes the result a DOUBLE.
const DUE_STATS: &str = "
SELECT count(*), COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(due_at), UTC_TIMESTAMP(6)) * 1e-6, 0e0)
FROM sms WHERE status = 'pending' AND due_at <= UTC_TIMESTAMP(6)";

/// Binds `args` in order.
fn bind<'q>(
    mut query: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    args: &[Arg],
) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(*v),
            Arg::Text(v) => query.bind(v.clone()),
            Arg::Time(v) => query.bind(*v),
        };
    }
    query
}

/// The ids among `locked` whose row still passes the fence for `expected`:
/// `sending`, on that attempt, leased to `instance`.
/// A row locked for the reaper: id, attempts, owner, kept report and its reason.
type LockedForReap = (i64, i32, Option<String>, Option<String>, Option<String>);

/// A row locked for outcomes: id, status, attempts, owner, kept report and its reason.
type LockedForOutcome = (
    i64,
    String,
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The status a kept report moves its row to (a `'static` name for the JSON).
fn kept_status(kept: Option<(&str, &str)>) -> Option<&'static str> {
    match kept?.0 {
        "delivered" => Some("delivered"),
        "undelivered" => Some("undelivered"),
        _ => None,
    }
}

fn fenced(
    locked: &[(i64, String, i32, Option<String>)],
    instance: &str,
    expected: impl Iterator<Item = (i64, i64)>,
) -> HashSet<i64> {
    expected
        .filter(|(id, attempt)| {
            locked.iter().any(|(lid, status, attempts, owner)| {
                lid == id
                    && status == "sending"
                    && i64::from(*attempts) == *attempt
                    && owner.as_deref() == Some(instance)
            })
        })
        .map(|(id, _)| id)
        .collect()
}

impl MySqlStore {
    /// One transaction of the expiry sweep; returns how many rows it failed.
    async fn expire_batch(&self) -> Result<u64, StoreError> {
        self.call(async |conn| {
            let mut tx = conn.begin().await?;
            let expired: Vec<i64> = sqlx::query_scalar(EXPIRE_LOCK)
                .bind(i64::from(EXPIRE_BATCH))
                .fetch_all(&mut *tx)
                .await?;
            if !expired.is_empty() {
                let json = to_json(&expired)?;
                for statement in [EXPIRE, EXPIRE_EVENTS] {
                    sqlx::query(statement).bind(&json).execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(expired.len() as u64)
        })
        .await
    }

    /// The reaper's work, inside a transaction on the connection holding the lock.
    async fn reap_locked(
        conn: &mut sqlx::MySqlConnection,
        max_attempts: u32,
        guarantee: Guarantee,
        limit: u32,
    ) -> Result<ReapReport, StoreError> {
        let at_most_once = guarantee == Guarantee::AtMostOnce;
        let mut tx = conn.begin().await?;
        let rows: Vec<LockedForReap> = sqlx::query_as(REAP_LOCK)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut report = ReapReport::default();
        let mut reaped = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for (id, attempts, locked_by, early, early_reason) in &rows {
            let kept = early
                .as_deref()
                .map(|to| (to, early_reason.as_deref().unwrap_or_default()));
            // Under at-most-once the abandoned attempt may have reached the provider.
            let failed = at_most_once || i64::from(*attempts) >= i64::from(max_attempts);
            let last_error = format!(
                "{}lease of {} expired during attempt {attempts}",
                if at_most_once {
                    "outcome unknown: "
                } else {
                    ""
                },
                locked_by.as_deref().unwrap_or_default()
            );
            let status = match kept_status(kept) {
                Some(reported) => {
                    report.reported += 1;
                    reported
                }
                None if failed => {
                    report.failed += 1;
                    "failed"
                }
                None => {
                    report.requeued += 1;
                    "pending"
                }
            };
            let reason = reap_reason(at_most_once, failed, &last_error);
            events.extend(reap_events(*id, status, reason, &last_error, kept));
            reaped.push(ReapRow {
                id: *id,
                attempt: i64::from(*attempts),
                status,
                last_error,
            });
        }
        if !reaped.is_empty() {
            let json = to_json(&reaped)?;
            for statement in [REAP_ATTEMPTS, REAP] {
                sqlx::query(statement).bind(&json).execute(&mut *tx).await?;
            }
            sqlx::query(RECORD_EVENTS)
                .bind(to_json(&events)?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(report)
    }
}

impl MySqlStore {
    /// One retention batch, inside a transaction on the connection holding the lock.
    async fn delete_finished_locked(
        conn: &mut sqlx::MySqlConnection,
        older_than: Duration,
        limit: u32,
    ) -> Result<PurgeReport, StoreError> {
        let mut tx = conn.begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar(RETENTION_LOCK_ROWS)
            .bind(micros(older_than))
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
    }
}

#[async_trait]
impl Retention for MySqlStore {
    async fn delete_finished(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<PurgeReport, StoreError> {
        self.call(async |conn| {
            let locked: Option<i64> = sqlx::query_scalar(RETENTION_LOCK)
                .fetch_one(&mut **conn)
                .await?;
            if locked != Some(1) {
                return Ok(PurgeReport {
                    skipped: true,
                    ..PurgeReport::default()
                });
            }
            let result = Self::delete_finished_locked(conn, older_than, limit).await;
            // As the reaper: a connection that cannot release the lock is closed.
            if sqlx::query(RETENTION_UNLOCK)
                .execute(&mut **conn)
                .await
                .is_err()
            {
                conn.close_on_drop();
            }
            result
        })
        .await
    }
}

// A delivery report moves `sent` to its final status: status, status, id.
const REPORT_UPDATE: &str = "
UPDATE sms SET status = ?, updated_at = UTC_TIMESTAMP(6),
       delivered_at = CASE WHEN ? = 'delivered' THEN UTC_TIMESTAMP(6) ELSE delivered_at END
WHERE id = ?";

// Its event: id, status, the provider's status and code.
const REPORT_EVENT: &str =
    "INSERT INTO sms_event (sms_id, from_status, to_status, reason) VALUES (?, 'sent', ?, ?)";

// A report before the send's outcome is kept on the row for RECORD; the
// first one only, so a duplicate or a contrary one changes nothing.
// Parameters: status, the provider's status and code, id.
const REPORT_KEEP: &str = "
UPDATE sms SET early_report = ?, early_report_reason = ?
WHERE id = ? AND early_report IS NULL";

#[async_trait]
impl Backend for MySqlStore {
    type Row = MySqlRow;

    const MIGRATOR: &'static Migrator = &MIGRATOR;
    const STYLE: Style = Style {
        placeholder: Style::question_mark,
        nulls_last: false,
    };
    const MIGRATIONS_TABLE: &'static str = "SELECT count(*) AS n FROM information_schema.tables
        WHERE table_schema = DATABASE() AND table_name = '_sqlx_migrations'";
    const SENT_BEFORE_WINDOW: &'static str =
        "s.sent_at < UTC_TIMESTAMP(6) - INTERVAL ? * 1000 MICROSECOND";
    const DEMO_INSERT: &'static str = concat!("INSERT IGNORE", crate::store::demo_rows!());

    async fn fetch(&self, sql: &str, args: &[Arg]) -> Result<Vec<MySqlRow>, StoreError> {
        self.call(async |conn| {
            Ok(bind(sqlx::query(AssertSqlSafe(sql.to_owned())), args)
                .fetch_all(&mut **conn)
                .await?)
        })
        .await
    }

    fn directory(&self) -> &DirectorySql {
        &self.directory
    }

    async fn apply_migrations(&self) -> Result<(), StoreError> {
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&self.pool)
            .await?;
        check_server_version(&version).map_err(StoreError::Unsupported)?;
        // MySQL cannot roll DDL back: a migration cut off halfway stays
        // recorded as failed and has to be cleaned up by hand (sqlx says so).
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn insert(&self, sms: &NewSms) -> Result<Option<i64>, StoreError> {
        let (client_id, staff_id) = match sms.recipient {
            Recipient::Client(id) => (Some(id), None),
            Recipient::Staff(id) => (None, Some(id)),
        };
        let args = insert_args(sms, client_id, staff_id);
        self.call(async |conn| {
            let inserted = bind(sqlx::query(ENQUEUE), &args).execute(&mut **conn).await;
            match inserted {
                Ok(done) => Ok(Some(
                    i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX),
                )),
                Err(sqlx::Error::Database(db))
                    if sms.idempotency_key.is_some()
                        && db
                            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                            .is_some_and(|e| e.number() == ER_DUP_ENTRY) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn due_stats(&self) -> Result<(i64, f64), StoreError> {
        self.call(async |conn| Ok(sqlx::query_as(DUE_STATS).fetch_one(&mut **conn).await?))
            .await
    }
}

#[async_trait]
impl Queue for MySqlStore {
    async fn claim(
        &self,
        instance: &str,
        batch_size: u32,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let expired = sweep_expired(|| self.expire_batch()).await?;
        let read = self
            .call(async |conn| {
                let mut tx = conn.begin().await?;
                let rows = sqlx::query(CLAIM_LOCK)
                    .bind(i64::from(batch_size))
                    .fetch_all(&mut *tx)
                    .await?;
                let read = ClaimedRows::read(&rows, 1)?;
                let refs = read.refs();
                if !refs.is_empty() {
                    let claimed = to_json(&refs)?;
                    sqlx::query(CLAIM)
                        .bind(&claimed)
                        .bind(instance)
                        .bind(micros(lease))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(CLAIM_EVENTS)
                        .bind(instance)
                        .bind(&claimed)
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
        let ids = to_json(&outcomes.iter().map(|o| o.id).collect::<Vec<i64>>())?;
        let applied = self
            .call(async |conn| {
                let mut tx = conn.begin().await?;
                let locked: Vec<LockedForOutcome> = sqlx::query_as(LOCK_FOR_OUTCOMES)
                    .bind(&ids)
                    .fetch_all(&mut *tx)
                    .await?;
                let fence: Vec<(i64, String, i32, Option<String>)> = locked
                    .iter()
                    .map(|(id, status, attempts, owner, _, _)| {
                        (*id, status.clone(), *attempts, owner.clone())
                    })
                    .collect();
                let passed = fenced(
                    &fence,
                    instance,
                    outcomes.iter().map(|o| (o.id, i64::from(o.attempt))),
                );
                let kept = |id: i64| {
                    locked.iter().find(|row| row.0 == id).and_then(|row| {
                        Some((row.4.as_deref()?, row.5.as_deref().unwrap_or_default()))
                    })
                };
                let applied: Vec<OutcomeRow> = first_per_id(outcomes, |o| o.id)
                    .into_iter()
                    .filter(|o| passed.contains(&o.id))
                    .map(OutcomeRow::new)
                    .collect();
                if !applied.is_empty() {
                    let events =
                        to_json(&outcome_events(&applied.iter().collect::<Vec<_>>(), kept))?;
                    // The kept report decides the status (the events above say why).
                    let moved: Vec<OutcomeRow> = applied
                        .iter()
                        .map(|row| OutcomeRow {
                            next_status: kept_status(kept(row.id)).unwrap_or(row.next_status),
                            ..row.clone()
                        })
                        .collect();
                    let json = to_json(&moved)?;
                    // Before RECORD clears the lease columns it reads.
                    sqlx::query(RECORD_ATTEMPTS)
                        .bind(&json)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(RECORD)
                        .bind(&json)
                        .bind(instance)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(RECORD_EVENTS)
                        .bind(&events)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(applied.len())
            })
            .await?;
        Ok(record_report(outcomes.len(), applied))
    }
}

#[async_trait]
impl Leases for MySqlStore {
    async fn release(
        &self,
        instance: &str,
        claims: &[(i64, u32)],
        why: ReleaseReason,
    ) -> Result<u64, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let ids = to_json(&claims.iter().map(|(id, _)| *id).collect::<Vec<i64>>())?;
        self.call(async |conn| {
            let mut tx = conn.begin().await?;
            let locked: Vec<(i64, String, i32, Option<String>)> = sqlx::query_as(LOCK_BY_ID)
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
            let passed = fenced(
                &locked,
                instance,
                claims.iter().map(|(id, a)| (*id, i64::from(*a))),
            );
            let released = AttemptRef::all(
                first_per_id(claims, |(id, _)| *id)
                    .into_iter()
                    .filter(|(id, _)| passed.contains(id)),
            );
            if !released.is_empty() {
                let json = to_json(&released)?;
                sqlx::query(RELEASE)
                    .bind(&json)
                    .bind(instance)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(RELEASE_ATTEMPTS)
                    .bind(&json)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(RELEASE_EVENTS)
                    .bind(why.event_reason())
                    .bind(&json)
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
                .bind(micros(lease))
                .bind(instance)
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
        self.call(async |conn| {
            let locked: Option<i64> = sqlx::query_scalar(REAPER_LOCK)
                .fetch_one(&mut **conn)
                .await?;
            if locked != Some(1) {
                return Ok(ReapReport {
                    skipped: true,
                    ..ReapReport::default()
                });
            }
            let result = Self::reap_locked(conn, max_attempts, guarantee, limit).await;
            // A connection that cannot release the lock must not go back to the
            // pool still holding it: closing it makes the server release it.
            if sqlx::query(REAPER_UNLOCK)
                .execute(&mut **conn)
                .await
                .is_err()
            {
                conn.close_on_drop();
            }
            result
        })
        .await
    }
}

#[async_trait]
impl Reports for MySqlStore {
    async fn apply_delivery_report(
        &self,
        report: &DeliveryReport,
    ) -> Result<ReportApplied, StoreError> {
        self.call(async |conn| {
            let mut tx = conn.begin().await?;
            // FOR UPDATE as on PostgreSQL; positional placeholders bind `to` twice.
            apply_report!(
                tx,
                report,
                sqlx::query_as("SELECT status, attempts FROM sms WHERE id = ? FOR UPDATE"),
                |to| sqlx::query(REPORT_UPDATE)
                    .bind(to)
                    .bind(to)
                    .bind(report.sms_id),
                sqlx::query(REPORT_EVENT)
                    .bind(report.sms_id)
                    .bind(to)
                    .bind(&report.reason),
                sqlx::query(REPORT_KEEP)
                    .bind(to)
                    .bind(&report.reason)
                    .bind(report.sms_id)
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
    use super::check_server_version;

    #[test]
    fn servers_with_skip_locked_json_table_and_checks_are_accepted() {
        for version in [
            "10.11.19-MariaDB-0+deb12u1",
            "10.6.0-MariaDB",
            "11.4.2-MariaDB-ubu2404",
            "5.5.5-10.6.12-MariaDB-log",
            "8.0.16",
            "8.0.36-0ubuntu0.22.04.1",
            "8.4.0",
            "9.1.0-commercial",
        ] {
            assert_eq!(check_server_version(version), Ok(()), "{version}");
        }
    }

    #[test]
    fn older_servers_get_an_error_naming_their_version() {
        for (version, product) in [
            ("10.5.21-MariaDB", "MariaDB"),
            ("10.4.32-MariaDB-log", "MariaDB"),
            ("8.0.15", "MySQL"),
            ("5.7.44-log", "MySQL"),
            ("garbage", "MySQL"),
        ] {
            let error = check_server_version(version).unwrap_err();
            assert!(
                error.starts_with(&format!("{product} {version} is too old")),
                "{error}"
            );
            assert!(error.contains("MariaDB 10.6+ or MySQL 8.0.16+"), "{error}");
        }
    }
}
