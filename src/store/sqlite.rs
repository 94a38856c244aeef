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

use crate::domain::report::{self, DeliveryReport, ReportApplied};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};
use time::OffsetDateTime;

use super::batch::{
    AttemptRef, OutcomeRow, by_status, directory_error, first_per_id, lookup_from, millis,
    parse_status, to_json, to_u32,
};
use super::{
    Claim, Enqueued, Lookup, Page, Paging, QueueStats, ReapReport, RecordReport, SmsQuery, Store,
    StoreError, StoreOptions,
};
use crate::domain::{
    AttemptRecord, ClaimedSms, EventRecord, NewSms, Outcome, Recipient, SmsRecord, Status,
};

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
    client_query: String,
    staff_query: String,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(options.pool_size)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy_with(connect);
        let directory = &options.directory;
        Ok(Self {
            pool,
            client_query: directory
                .client_query
                .clone()
                .unwrap_or_else(|| CLIENT_QUERY.into()),
            staff_query: directory
                .staff_query
                .clone()
                .unwrap_or_else(|| STAFF_QUERY.into()),
        })
    }

    /// The underlying pool, for tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
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

// Expired pending rows become `failed` before the claim looks for work, so an
// expired message is never sent. ?1 = now.
const EXPIRE: &str = "
UPDATE sms SET status = 'failed', last_error = 'expired', updated_at = ?1
WHERE id IN (
    SELECT id FROM sms
    WHERE status = 'pending' AND expires_at <= ?1
    ORDER BY expires_at
    LIMIT 1000)
RETURNING id";

// ?1 = JSON array of ids, ?2 = now.
const EXPIRE_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT value, 'pending', 'failed', 'expired before it could be sent', ?2 FROM json_each(?1)";

// The claim. The subquery picks due rows in due order; under BEGIN IMMEDIATE
// no other writer can pick the same rows before we commit.
// ?1 = now, ?2 = instance, ?3 = lease in ms, ?4 = batch size.
const CLAIM: &str = "
UPDATE sms SET
    status = 'sending',
    locked_by = ?2,
    lease_expires_at = ?1 + ?3,
    attempts = attempts + 1,
    updated_at = ?1
WHERE id IN (
    SELECT id FROM sms
    WHERE status = 'pending' AND due_at <= ?1
    ORDER BY due_at, id
    LIMIT ?4)
RETURNING id, attempts, mobile_no, message";

// ?1 = JSON [{id, attempt}], ?2 = instance, ?3 = now.
const CLAIM_ATTEMPTS: &str = "
INSERT INTO sms_attempt (sms_id, attempt, instance, started_at)
SELECT value ->> '$.id', value ->> '$.attempt', ?2, ?3 FROM json_each(?1)";

const CLAIM_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT value ->> '$.id', 'pending', 'sending',
       'claimed by ' || ?2 || ' for attempt ' || (value ->> '$.attempt'), ?3
FROM json_each(?1)";

// The outcomes of a batch as rows: ?1 = JSON [OutcomeRow].
// The WHERE clause is the fence: only a row still `sending` under this attempt
// and this instance's lease changes; a stale write is left alone.
// ?2 = instance, ?3 = now.
const RECORD: &str = "
UPDATE sms SET
    status = i.next_status,
    locked_by = NULL,
    lease_expires_at = NULL,
    next_attempt_at = CASE WHEN i.next_status = 'pending' THEN ?3 + i.retry_ms
                           ELSE sms.next_attempt_at END,
    sent_at = CASE WHEN i.next_status = 'sent' THEN ?3 ELSE sms.sent_at END,
    provider_message_id = COALESCE(i.provider_message_id, sms.provider_message_id),
    last_error = COALESCE(i.error, sms.last_error),
    segments = COALESCE(i.segments, sms.segments),
    updated_at = ?3
FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt,
             value ->> '$.next_status' AS next_status, value ->> '$.retry_ms' AS retry_ms,
             value ->> '$.provider_message_id' AS provider_message_id,
             value ->> '$.error' AS error, value ->> '$.segments' AS segments
      FROM json_each(?1)) AS i
WHERE sms.id = i.id
  AND sms.status = 'sending'
  AND sms.attempts = i.attempt
  AND sms.locked_by = ?2
RETURNING sms.id";

// Only the applied outcomes reach these two. ?1 = JSON [OutcomeRow], ?2 = now.
const RECORD_ATTEMPTS: &str = "
UPDATE sms_attempt SET
    finished_at = ?2,
    outcome = i.outcome,
    http_status = i.http_status,
    provider_message_id = i.provider_message_id,
    error = i.error
FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt,
             value ->> '$.outcome' AS outcome, value ->> '$.http_status' AS http_status,
             value ->> '$.provider_message_id' AS provider_message_id,
             value ->> '$.error' AS error
      FROM json_each(?1)) AS i
WHERE sms_attempt.sms_id = i.id AND sms_attempt.attempt = i.attempt";

const RECORD_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT value ->> '$.id', 'sending', value ->> '$.next_status', value ->> '$.reason', ?2
FROM json_each(?1)";

// Rows claimed but never sent (shutdown): back to `pending` as if never
// claimed. ?1 = JSON [{id, attempt}], ?2 = instance, ?3 = now.
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

// The attempt row goes too, since no request was ever made. ?1 = JSON [{id, attempt}].
const RELEASE_ATTEMPTS: &str = "
DELETE FROM sms_attempt
WHERE (sms_id, attempt) IN (SELECT value ->> '$.id', value ->> '$.attempt' FROM json_each(?1))";

// ?1 = JSON [id], ?2 = now.
const RELEASE_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT value, 'sending', 'pending', 'released unsent at shutdown', ?2 FROM json_each(?1)";

// Expired leases: the instance crashed or hung. SET expressions read the row
// as it was before the update, so `last_error` still sees `locked_by`.
// ?1 = now, ?2 = max attempts, ?3 = limit.
const REAP: &str = "
UPDATE sms SET
    status = CASE WHEN attempts >= ?2 THEN 'failed' ELSE 'pending' END,
    last_error = 'lease of ' || locked_by || ' expired during attempt ' || attempts,
    next_attempt_at = ?1,
    locked_by = NULL,
    lease_expires_at = NULL,
    updated_at = ?1
WHERE id IN (
    SELECT id FROM sms
    WHERE status = 'sending' AND lease_expires_at < ?1
    ORDER BY lease_expires_at
    LIMIT ?3)
RETURNING id, attempts, status, last_error";

// The open attempt is marked `abandoned` (it may have reached the provider:
// at-least-once). ?1 = JSON [{id, attempt}], ?2 = now.
const REAP_ATTEMPTS: &str = "
UPDATE sms_attempt SET
    finished_at = ?2,
    outcome = 'abandoned',
    error = 'lease expired before an outcome was recorded'
WHERE (sms_id, attempt) IN (SELECT value ->> '$.id', value ->> '$.attempt' FROM json_each(?1))";

// ?1 = JSON array of ids, ?2 = now.
const REAP_EVENTS: &str = "
INSERT INTO sms_event (sms_id, from_status, to_status, reason, occurred_at)
SELECT id, 'sending', status,
       CASE WHEN status = 'failed' THEN 'attempts exhausted: ' || last_error ELSE last_error END, ?2
FROM sms WHERE id IN (SELECT value FROM json_each(?1))";

// With a key already used, DO NOTHING returns no row and the caller looks the first one up.
const ENQUEUE: &str = "
INSERT INTO sms (client_id, staff_id, mobile_no, message, not_before, expires_at, idempotency_key)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id";

const BY_IDEMPOTENCY_KEY: &str = "SELECT id FROM sms WHERE idempotency_key = ?1";

const SMS_COLUMNS: &str = "id, client_id, staff_id, mobile_no, message, status, attempts, segments, \
    created_at, updated_at, not_before, expires_at, next_attempt_at, locked_by, lease_expires_at, \
    sent_at, delivered_at, provider_message_id, last_error";

const STATUS_COUNTS: &str = "SELECT status, count(*) FROM sms GROUP BY status";

// ?1 = now.
const DUE_STATS: &str = "
SELECT count(*), COALESCE(?1 - min(due_at), 0)
FROM sms WHERE status = 'pending' AND due_at <= ?1";

const GET: &str = "
SELECT id, client_id, staff_id, mobile_no, message, status, attempts, segments, created_at,
       updated_at, not_before, expires_at, next_attempt_at, locked_by, lease_expires_at,
       sent_at, delivered_at, provider_message_id, last_error
FROM sms WHERE id = ?1";

const ATTEMPTS: &str = "
SELECT attempt, instance, started_at, finished_at, outcome, http_status, provider_message_id, error
FROM sms_attempt WHERE sms_id = ?1 ORDER BY attempt";

const EVENTS: &str = "
SELECT from_status, to_status, occurred_at, reason
FROM sms_event WHERE sms_id = ?1 ORDER BY id";

fn time_column(row: &SqliteRow, id: i64, column: &str) -> Result<OffsetDateTime, StoreError> {
    let ms: i64 = row.try_get(column)?;
    from_ms(ms).ok_or_else(|| StoreError::BadRow {
        id,
        message: format!("{column} = {ms} is not a time in epoch milliseconds"),
    })
}

fn opt_time_column(
    row: &SqliteRow,
    id: i64,
    column: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    let ms: Option<i64> = row.try_get(column)?;
    ms.map(|ms| {
        from_ms(ms).ok_or_else(|| StoreError::BadRow {
            id,
            message: format!("{column} = {ms} is not a time in epoch milliseconds"),
        })
    })
    .transpose()
}

fn sms_from_row(row: &SqliteRow) -> Result<SmsRecord, StoreError> {
    let id: i64 = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    Ok(SmsRecord {
        id,
        client_id: row.try_get("client_id")?,
        staff_id: row.try_get("staff_id")?,
        mobile_no: row.try_get("mobile_no")?,
        message: row.try_get("message")?,
        status: parse_status(id, &status)?,
        attempts: to_u32(row.try_get("attempts")?).unwrap_or(0),
        segments: to_u32(row.try_get("segments")?),
        created_at: time_column(row, id, "created_at")?,
        updated_at: time_column(row, id, "updated_at")?,
        not_before: opt_time_column(row, id, "not_before")?,
        expires_at: opt_time_column(row, id, "expires_at")?,
        next_attempt_at: opt_time_column(row, id, "next_attempt_at")?,
        locked_by: row.try_get("locked_by")?,
        lease_expires_at: opt_time_column(row, id, "lease_expires_at")?,
        sent_at: opt_time_column(row, id, "sent_at")?,
        delivered_at: opt_time_column(row, id, "delivered_at")?,
        provider_message_id: row.try_get("provider_message_id")?,
        last_error: row.try_get("last_error")?,
    })
}

/// Appends the WHERE clause of a list query; `keyset` adds the cursor condition.
fn push_filter(sql: &mut QueryBuilder<Sqlite>, query: &SmsQuery, keyset: bool) {
    let f = &query.filter;
    sql.push(" WHERE 1 = 1");
    if let Some(id) = f.client_id {
        sql.push(" AND client_id = ").push_bind(id);
    }
    if let Some(id) = f.staff_id {
        sql.push(" AND staff_id = ").push_bind(id);
    }
    if !f.statuses.is_empty() {
        sql.push(" AND status IN (");
        let mut names = sql.separated(", ");
        for status in &f.statuses {
            names.push_bind(status.as_str());
        }
        sql.push(")");
    }
    if let Some(number) = &f.mobile_no {
        sql.push(" AND mobile_no = ").push_bind(number.clone());
    }
    if let Some(from) = f.created_from {
        sql.push(" AND created_at >= ").push_bind(to_ms(from));
    }
    if let Some(to) = f.created_to {
        sql.push(" AND created_at < ").push_bind(to_ms(to));
    }
    if let (
        true,
        Paging::Keyset {
            after_id: Some(after),
            ..
        },
    ) = (keyset, query.paging)
    {
        sql.push(if query.descending {
            " AND id < "
        } else {
            " AND id > "
        })
        .push_bind(after);
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn apply_delivery_report(
        &self,
        report: &DeliveryReport,
    ) -> Result<ReportApplied, StoreError> {
        // BEGIN IMMEDIATE takes the write lock first: a duplicate report arriving
        // at the same time waits, then sees the final status and changes nothing.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let row: Option<(String, i32)> =
            sqlx::query_as("SELECT status, attempts FROM sms WHERE id = ?1")
                .bind(report.sms_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((status, attempts)) = row else {
            return Ok(ReportApplied::Unknown);
        };
        let status = parse_status(report.sms_id, &status)?;
        let decision = report::decide(status, to_u32(Some(attempts)).unwrap_or(0), report);
        if decision != ReportApplied::Applied {
            return Ok(decision);
        }
        let to = report.outcome.status().as_str();
        sqlx::query(
            "UPDATE sms SET status = ?2, updated_at = ?3,
                 delivered_at = CASE WHEN ?2 = 'delivered' THEN ?3 ELSE delivered_at END
             WHERE id = ?1",
        )
        .bind(report.sms_id)
        .bind(to)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO sms_event (sms_id, from_status, to_status, occurred_at, reason) VALUES (?1, 'sent', ?2, ?3, ?4)",
        )
        .bind(report.sms_id)
        .bind(to)
        .bind(now)
        .bind(&report.reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ReportApplied::Applied)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match MIGRATOR.run(&self.pool).await {
            Ok(()) => Ok(()),
            // SQLite has no advisory lock: two processes starting on a fresh file
            // race, and the loser's CREATE TABLE fails once the winner has
            // committed. If everything is applied now, the race is harmless.
            Err(e) if self.ready().await.unwrap_or(false) => {
                tracing::debug!(error = %e, "another process applied the migrations first");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn claim(
        &self,
        instance: &str,
        batch_size: u32,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let expired: Vec<i64> = sqlx::query_scalar(EXPIRE)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        if !expired.is_empty() {
            sqlx::query(EXPIRE_EVENTS)
                .bind(to_json(&expired)?)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let rows = sqlx::query(CLAIM)
            .bind(now)
            .bind(instance)
            .bind(millis(lease))
            .bind(i64::from(batch_size))
            .fetch_all(&mut *tx)
            .await?;
        let mut messages = rows
            .iter()
            .map(|row| {
                Ok(ClaimedSms {
                    id: row.try_get("id")?,
                    attempt: to_u32(row.try_get("attempts")?).unwrap_or(0),
                    mobile_no: row.try_get("mobile_no")?,
                    message: row.try_get("message")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        messages.sort_by_key(|m| m.id);
        if !messages.is_empty() {
            let claimed: Vec<AttemptRef> = messages
                .iter()
                .map(|m| AttemptRef {
                    id: m.id,
                    attempt: i64::from(m.attempt),
                })
                .collect();
            let claimed = to_json(&claimed)?;
            for statement in [CLAIM_ATTEMPTS, CLAIM_EVENTS] {
                sqlx::query(statement)
                    .bind(&claimed)
                    .bind(instance)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(Claim {
            messages,
            expired: expired.len() as u64,
        })
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let applied: Vec<i64> = sqlx::query_scalar(RECORD)
            .bind(to_json(&rows)?)
            .bind(instance)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        if !applied.is_empty() {
            let applied_ids: HashSet<i64> = applied.iter().copied().collect();
            let applied_rows: Vec<&OutcomeRow> = rows
                .iter()
                .filter(|r| applied_ids.contains(&r.id))
                .collect();
            let applied_rows = to_json(&applied_rows)?;
            for statement in [RECORD_ATTEMPTS, RECORD_EVENTS] {
                sqlx::query(statement)
                    .bind(&applied_rows)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        let n = outcomes.len() as u64;
        let applied = applied.len() as u64;
        Ok(RecordReport {
            applied,
            stale: n - applied.min(n),
        })
    }

    async fn release(&self, instance: &str, claims: &[(i64, u32)]) -> Result<u64, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let input: Vec<AttemptRef> = first_per_id(claims, |(id, _)| *id)
            .into_iter()
            .map(|(id, attempt)| AttemptRef {
                id: *id,
                attempt: i64::from(*attempt),
            })
            .collect();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(released.len() as u64)
    }

    async fn reap_expired_leases(
        &self,
        max_attempts: u32,
        limit: u32,
    ) -> Result<ReapReport, StoreError> {
        // BEGIN IMMEDIATE already makes reapers on one file take turns, so
        // there is no separate lock and never a skipped run.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let rows = sqlx::query(REAP)
            .bind(now)
            .bind(i64::from(max_attempts))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut report = ReapReport::default();
        let mut reaped = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            let status: String = row.try_get("status")?;
            match parse_status(id, &status)? {
                Status::Failed => report.failed += 1,
                _ => report.requeued += 1,
            }
            reaped.push(AttemptRef {
                id,
                attempt: row.try_get("attempts")?,
            });
            ids.push(id);
        }
        if !reaped.is_empty() {
            sqlx::query(REAP_ATTEMPTS)
                .bind(to_json(&reaped)?)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(REAP_EVENTS)
                .bind(to_json(&ids)?)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn enqueue(&self, sms: &NewSms) -> Result<Enqueued, StoreError> {
        let (client_id, staff_id) = match sms.recipient {
            Recipient::Client(id) => (Some(id), None),
            Recipient::Staff(id) => (None, Some(id)),
        };
        let inserted: Option<i64> = sqlx::query_scalar(ENQUEUE)
            .bind(client_id)
            .bind(staff_id)
            .bind(&sms.mobile_no)
            .bind(&sms.message)
            .bind(sms.not_before.map(to_ms))
            .bind(sms.expires_at.map(to_ms))
            .bind(&sms.idempotency_key)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(id) = inserted {
            return Ok(Enqueued { id, created: true });
        }
        let id: i64 = sqlx::query_scalar(BY_IDEMPOTENCY_KEY)
            .bind(&sms.idempotency_key)
            .fetch_one(&self.pool)
            .await?;
        Ok(Enqueued { id, created: false })
    }

    async fn list(&self, query: &SmsQuery) -> Result<Page, StoreError> {
        let direction = if query.descending { "DESC" } else { "ASC" };
        let mut select = QueryBuilder::<Sqlite>::new(format!("SELECT {SMS_COLUMNS} FROM sms"));
        push_filter(&mut select, query, true);
        let rows = match query.paging {
            Paging::Offset { offset, limit } => {
                // NULLs sort last either way so the order does not flip with the direction.
                select
                    .push(" ORDER BY ")
                    .push(query.order_by.column())
                    .push(" ")
                    .push(direction)
                    .push(" NULLS LAST, id ")
                    .push(direction)
                    .push(" LIMIT ")
                    .push_bind(i64::from(limit))
                    .push(" OFFSET ")
                    .push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
                select.build().fetch_all(&self.pool).await?
            }
            Paging::Keyset { limit, .. } => {
                select
                    .push(" ORDER BY id ")
                    .push(direction)
                    .push(" LIMIT ")
                    .push_bind(i64::from(limit) + 1);
                select.build().fetch_all(&self.pool).await?
            }
        };
        let mut items = rows
            .iter()
            .map(sms_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let (total, has_more) = match query.paging {
            Paging::Offset { .. } => {
                let mut count = QueryBuilder::<Sqlite>::new("SELECT count(*) FROM sms");
                push_filter(&mut count, query, false);
                let total: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;
                (Some(u64::try_from(total).unwrap_or(0)), false)
            }
            Paging::Keyset { limit, .. } => {
                let more = items.len() > limit as usize;
                items.truncate(limit as usize);
                (None, more)
            }
        };
        Ok(Page {
            total,
            items,
            has_more,
        })
    }

    async fn create_demo_directory(&self) -> Result<(), StoreError> {
        sqlx::query(super::DEMO_CREATE).execute(&self.pool).await?;
        sqlx::query(concat!("INSERT OR IGNORE", crate::store::demo_rows!()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn lookup_mobile(&self, recipient: Recipient) -> Result<Lookup, StoreError> {
        let (sql, id) = match recipient {
            Recipient::Client(id) => (&self.client_query, id),
            Recipient::Staff(id) => (&self.staff_query, id),
        };
        // The directory SQL comes from the operator's config, never from a request.
        let found: Option<Option<String>> = sqlx::query_scalar(AssertSqlSafe(sql.clone()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(directory_error)?;
        Ok(lookup_from(found))
    }

    async fn ready(&self) -> Result<bool, StoreError> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let has_table: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        if has_table == 0 {
            return Ok(false);
        }
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as(STATUS_COUNTS).fetch_all(&self.pool).await?;
        let (due, oldest_ms): (i64, i64) = sqlx::query_as(DUE_STATS)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await?;
        Ok(QueueStats {
            by_status: by_status(&counts),
            due: u64::try_from(due).unwrap_or(0),
            oldest_due_age_secs: (oldest_ms as f64 / 1000.0).max(0.0),
        })
    }

    async fn get(&self, id: i64) -> Result<Option<SmsRecord>, StoreError> {
        let row = sqlx::query(GET).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(sms_from_row).transpose()
    }

    async fn attempts(&self, id: i64) -> Result<Vec<AttemptRecord>, StoreError> {
        let rows = sqlx::query(ATTEMPTS).bind(id).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(AttemptRecord {
                    attempt: to_u32(row.try_get("attempt")?).unwrap_or(0),
                    instance: row.try_get("instance")?,
                    started_at: time_column(row, id, "started_at")?,
                    finished_at: opt_time_column(row, id, "finished_at")?,
                    outcome: row.try_get("outcome")?,
                    http_status: row
                        .try_get::<Option<i32>, _>("http_status")?
                        .and_then(|s| u16::try_from(s).ok()),
                    provider_message_id: row.try_get("provider_message_id")?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    async fn events(&self, id: i64) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(EVENTS).bind(id).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let from: String = row.try_get("from_status")?;
                let to: String = row.try_get("to_status")?;
                Ok(EventRecord {
                    from_status: parse_status(id, &from)?,
                    to_status: parse_status(id, &to)?,
                    occurred_at: time_column(row, id, "occurred_at")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
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
                directory: Default::default(),
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
