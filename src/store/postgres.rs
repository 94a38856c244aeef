//! PostgreSQL store: one statement per operation where a CTE can carry it,
//! times from the server's `now()` so several hosts agree on leases.
//!
//! Where it differs from MySQL and SQLite, and why:
//! - Data-modifying CTEs: a claim, a batch of outcomes, a release and a reap
//!   are each one statement (lock, update, attempt and event rows together).
//! - `FOR NO KEY UPDATE SKIP LOCKED`: instances claim disjoint rows without
//!   waiting, and the lock does not block the foreign keys of `sms_attempt`.
//! - Batches arrive as the JSON of `batch.rs`, unpacked with `jsonb_to_recordset`.
//! - The reaper's and retention's single-instance locks are transaction-scoped
//!   advisory locks.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Postgres};

use super::backend::{Backend, DirectorySql};
use super::batch::{
    AttemptRef, EXPIRE_BATCH, OutcomeRow, millis, record_report, sweep_expired, to_json,
};
use super::deadline;
use super::query::{Arg, Style};
use super::reports::{ReportTarget, apply_report, report_target, reported_early, taken_as_sent};
use super::rows::ClaimedRows;
use super::session;
use super::{
    Claim, Leases, PurgeReport, Queue, ReapReport, RecordReport, Reports, Retention, StoreError,
    StoreOptions,
};
use crate::domain::Outcome;
use crate::domain::outcome::{Guarantee, ReleaseReason};
use crate::domain::report::{DeliveryReport, ReportApplied};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Fineract's tables, the default directory.
const CLIENT_QUERY: &str = "SELECT mobile_no FROM m_client WHERE id = $1";
const STAFF_QUERY: &str = "SELECT mobile_no FROM m_staff WHERE id = $1";

/// The outbox on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    call_timeout: Duration,
    directory: DirectorySql,
}

/// Key of the advisory lock that keeps the reaper to one instance at a time.
const REAPER_LOCK: i64 = 0x0073_6d73_7265_6170; // "smsreap"
/// Key of the advisory lock that keeps retention to one instance at a time.
const RETENTION_LOCK: i64 = 0x0073_6d73_7265_7465; // "smsrete"

impl PgStore {
    /// A pool that connects on first use, so start-up survives a database that is still coming up.
    pub fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = session::postgres_options(&options.url, &options.session)
            .map_err(StoreError::Database)?;
        let session = options.session.clone();
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size)
            .acquire_timeout(options.connect_timeout)
            .after_connect(move |conn, _| {
                let session = session.clone();
                Box::pin(async move { session::postgres_after_connect(conn, &session).await })
            })
            .connect_lazy_with(connect);
        Ok(Self {
            pool,
            call_timeout: options.call_timeout,
            directory: DirectorySql::new(&options.directory, CLIENT_QUERY, STAFF_QUERY),
        })
    }

    /// The underlying pool, for tests and the API's ad-hoc queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `work` on one connection within `database.call_timeout`.
    async fn call<T>(
        &self,
        work: impl AsyncFnOnce(&mut PoolConnection<Postgres>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        deadline::call(&self.pool, self.call_timeout, work).await
    }
}

// One batch of the expiry sweep: expired pending rows become `failed`.
// SKIP LOCKED: another instance may be expiring too. $1 = batch size.
const EXPIRE: &str = "
WITH expired AS (
    UPDATE sms SET status = 'failed', last_error = 'expired', updated_at = now()
    WHERE id IN (
        SELECT id FROM sms
        WHERE status = 'pending' AND expires_at <= now()
        ORDER BY expires_at
        LIMIT $1
        FOR NO KEY UPDATE SKIP LOCKED)
    RETURNING id
)
INSERT INTO sms_event (sms_id, from_status, to_status, reason)
SELECT id, 'pending', 'failed', 'expired before it could be sent' FROM expired";

// The claim: lock due rows (MATERIALIZED so the LIMIT applies before the
// UPDATE joins back), lease them to this instance, bump the attempt and write
// the event row, all in one statement. A row past `expires_at` is never
// claimed, whether or not the sweep has reached it yet. The attempt's row is
// written once, at its outcome (or by the reaper), from the lease columns
// set here: `updated_at` is when the attempt started.
const CLAIM: &str = "
WITH due AS MATERIALIZED (
    SELECT id FROM sms
    WHERE status = 'pending' AND due_at <= now()
      AND (expires_at IS NULL OR expires_at > now())
    ORDER BY due_at, id
    LIMIT $1
    FOR NO KEY UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE sms SET
        status = 'sending',
        locked_by = $2,
        lease_expires_at = now() + $3::bigint * interval '1 millisecond',
        attempts = sms.attempts + 1,
        send_key = COALESCE(sms.send_key, md5(random()::text || clock_timestamp()::text || sms.id::text)),
        updated_at = now()
    FROM due
    WHERE sms.id = due.id
    RETURNING sms.id, sms.attempts, sms.mobile_no, sms.message, sms.send_key
),
event AS (
    INSERT INTO sms_event (sms_id, from_status, to_status, reason)
    SELECT id, 'pending', 'sending', 'claimed by ' || $2 || ' for attempt ' || attempts FROM claimed
)
SELECT id, attempts, mobile_no, message, send_key FROM claimed ORDER BY id";

// Outcomes arrive as one JSON array (batch::OutcomeRow). The WHERE
// clause is the fence: only a row still `sending` under this attempt and this
// instance's lease changes; anything else is a stale write and is left alone.
// A delivery report kept on the row (migration 0010) decides its status:
// the provider has the message, whatever this outcome says, so it goes
// straight to the report's final status, with the events `sending -> sent`
// and `sent -> final`. The SET reads the row as the UPDATE locks it, so a
// report committed while this statement waited for that row is seen.
// The attempt's row is inserted here, whole: `before` is the row as the claim
// left it (its `updated_at` is the attempt's start; keeping a report does not
// change it). ON CONFLICT completes a row an older smsrelay inserted at the
// claim (a rolling upgrade).
const RECORD: &str = concat!(
    "
WITH input AS (
    SELECT * FROM jsonb_to_recordset($2::jsonb) AS t(
        id bigint, attempt int, next_status text, retry_ms bigint, outcome text, http_status int,
        provider_message_id text, error text, segments int, reason text, provider text)
),
updated AS (
    UPDATE sms SET
        status = COALESCE(sms.early_report, input.next_status),
        locked_by = NULL,
        lease_expires_at = NULL,
        next_attempt_at = CASE WHEN input.next_status = 'pending' AND sms.early_report IS NULL
                               THEN now() + input.retry_ms * interval '1 millisecond'
                               ELSE sms.next_attempt_at END,
        sent_at = CASE WHEN input.next_status = 'sent' OR sms.early_report IS NOT NULL
                       THEN now() ELSE sms.sent_at END,
        delivered_at = CASE WHEN sms.early_report = 'delivered' THEN now() ELSE sms.delivered_at END,
        provider_message_id = COALESCE(input.provider_message_id, sms.provider_message_id),
        last_error = COALESCE(input.error, sms.last_error),
        segments = COALESCE(input.segments, sms.segments),
        provider = COALESCE(input.provider, sms.provider),
        updated_at = now()
    FROM input, sms AS before
    WHERE sms.id = input.id
      AND before.id = input.id
      AND sms.status = 'sending'
      AND sms.attempts = input.attempt
      AND sms.locked_by = $1
    RETURNING sms.id, input.attempt, input.next_status, input.outcome, input.http_status,
              input.provider_message_id, input.error, input.reason, input.provider,
              before.updated_at AS started_at, sms.status AS now_status,
              sms.early_report_reason
),
attempt AS (
    INSERT INTO sms_attempt (sms_id, attempt, instance, started_at, finished_at, outcome,
                             http_status, provider_message_id, error, provider)
    SELECT id, attempt, $1, started_at, now(), outcome,
           http_status, provider_message_id, error, provider FROM updated
    ON CONFLICT (sms_id, attempt) DO UPDATE SET
        finished_at = EXCLUDED.finished_at,
        outcome = EXCLUDED.outcome,
        http_status = EXCLUDED.http_status,
        provider_message_id = EXCLUDED.provider_message_id,
        error = EXCLUDED.error,
        provider = EXCLUDED.provider
),
event AS (
    INSERT INTO sms_event (sms_id, from_status, to_status, reason)
    SELECT id, from_status, to_status, reason FROM (
        SELECT id, 1 AS step, 'sending' AS from_status,
               CASE WHEN now_status = next_status THEN next_status ELSE 'sent' END AS to_status,
               CASE WHEN now_status = next_status OR next_status = 'sent' THEN reason
                    ELSE '",
    taken_as_sent!(),
    "' || reason END AS reason
        FROM updated
        UNION ALL
        SELECT id, 2, 'sent', now_status, early_report_reason || '",
    reported_early!(),
    "'
        FROM updated WHERE now_status <> next_status
    ) AS steps
    ORDER BY id, step
)
SELECT count(*) FROM updated"
);

// Rows the provider never took (shutdown, a paused or throttling provider):
// back to `pending` as if never claimed. The attempt is not spent, so it gets
// no row (one an older smsrelay wrote at the claim goes); the events keep
// the story. $3 = the event's reason.
const RELEASE: &str = "
WITH input AS (
    SELECT * FROM jsonb_to_recordset($2::jsonb) AS t(id bigint, attempt int)
),
released AS (
    UPDATE sms SET
        status = 'pending',
        attempts = sms.attempts - 1,
        locked_by = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    FROM input
    WHERE sms.id = input.id AND sms.status = 'sending'
      AND sms.attempts = input.attempt AND sms.locked_by = $1
    RETURNING sms.id, input.attempt
),
attempt AS (
    DELETE FROM sms_attempt a USING released r
    WHERE a.sms_id = r.id AND a.attempt = r.attempt
),
event AS (
    INSERT INTO sms_event (sms_id, from_status, to_status, reason)
    SELECT id, 'sending', 'pending', $3 FROM released
)
SELECT count(*) FROM released";

// Lease renewal for rows still being sent, fenced like outcomes.
// $1 = instance, $2 = JSON [{id, attempt}], $3 = lease in ms.
const RENEW: &str = "
UPDATE sms SET lease_expires_at = now() + $3::bigint * interval '1 millisecond'
FROM jsonb_to_recordset($2::jsonb) AS i(id bigint, attempt int)
WHERE sms.id = i.id AND sms.status = 'sending'
  AND sms.attempts = i.attempt AND sms.locked_by = $1";

// Expired leases: the instance crashed or hung. Its open attempt gets its
// row, `abandoned`, from the lease columns (instance, and `updated_at`, set
// at the claim: its start): it may have reached the provider, so under
// at-most-once ($3) the row fails with `outcome unknown` instead of going
// back to `pending`. A delivery report kept on the row (migration 0010)
// shows the provider has it: the row takes the report's final status, with
// the events `sending -> sent -> final`, and is neither sent again nor failed.
// $1 = max attempts, $2 = limit, $3 = at-most-once.
const REAP: &str = concat!(
    "
WITH expired AS (
    SELECT id, locked_by, updated_at FROM sms
    WHERE status = 'sending' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT $2
    FOR NO KEY UPDATE SKIP LOCKED
),
reaped AS (
    UPDATE sms SET
        status = CASE WHEN sms.early_report IS NOT NULL THEN sms.early_report
                      WHEN $3 OR sms.attempts >= $1 THEN 'failed' ELSE 'pending' END,
        last_error = CASE WHEN $3 THEN 'outcome unknown: ' ELSE '' END
                     || 'lease of ' || expired.locked_by || ' expired during attempt ' || sms.attempts,
        next_attempt_at = now(),
        sent_at = CASE WHEN sms.early_report IS NOT NULL THEN now() ELSE sms.sent_at END,
        delivered_at = CASE WHEN sms.early_report = 'delivered' THEN now() ELSE sms.delivered_at END,
        locked_by = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    FROM expired
    WHERE sms.id = expired.id
    RETURNING sms.id, sms.attempts, sms.status, sms.last_error, sms.early_report_reason
),
attempt AS (
    INSERT INTO sms_attempt (sms_id, attempt, instance, started_at, finished_at, outcome, error)
    SELECT r.id, r.attempts, e.locked_by, e.updated_at, now(), 'abandoned',
           'lease expired before an outcome was recorded'
    FROM reaped r JOIN expired e ON e.id = r.id
    ON CONFLICT (sms_id, attempt) DO UPDATE SET
        finished_at = EXCLUDED.finished_at,
        outcome = EXCLUDED.outcome,
        error = EXCLUDED.error
),
event AS (
    INSERT INTO sms_event (sms_id, from_status, to_status, reason)
    SELECT id, from_status, to_status, reason FROM (
        SELECT id, 1 AS step, 'sending' AS from_status,
               CASE WHEN status IN ('pending', 'failed') THEN status ELSE 'sent' END AS to_status,
               CASE WHEN status NOT IN ('pending', 'failed') THEN '",
    taken_as_sent!(),
    "' || last_error
                    WHEN $3 THEN last_error || '; not sent again (dispatch.guarantee = at-most-once)'
                    WHEN status = 'failed' THEN 'attempts exhausted: ' || last_error
                    ELSE last_error END AS reason
        FROM reaped
        UNION ALL
        SELECT id, 2, 'sent', status, early_report_reason || '",
    reported_early!(),
    "'
        FROM reaped WHERE status NOT IN ('pending', 'failed')
    ) AS steps
    ORDER BY id, step
)
SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status NOT IN ('pending', 'failed')) FROM reaped"
);

/// One retention batch: finished rows last changed before now() - $1 ms,
/// oldest first, at most $2, with their attempts and events. The scan walks
/// the partial index `sms_finished_idx` (migration 0009) and stops at the
/// limit; SKIP LOCKED passes over a `sent` row a delivery report holds. The
/// ids travel as one array, so each DELETE is an index scan by key whatever
/// the planner thinks of the table's size. The children are deleted by their
/// own CTEs (not left to ON DELETE CASCADE) so that the counts come back.
/// Public for the plan test.
pub const RETENTION_DELETE: &str = concat!(
    "
WITH doomed AS MATERIALIZED (
    SELECT array_agg(id) AS ids FROM (
        SELECT id FROM sms
        WHERE status IN ",
    crate::store::finished_statuses!(),
    "
          AND updated_at < now() - $1::bigint * interval '1 millisecond'
        ORDER BY updated_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED) AS oldest
),
attempts AS (
    DELETE FROM sms_attempt WHERE sms_id = ANY ((SELECT ids FROM doomed)::bigint[]) RETURNING 1
),
events AS (
    DELETE FROM sms_event WHERE sms_id = ANY ((SELECT ids FROM doomed)::bigint[]) RETURNING 1
),
messages AS (
    DELETE FROM sms WHERE id = ANY ((SELECT ids FROM doomed)::bigint[]) RETURNING 1
)
SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM attempts), (SELECT count(*) FROM events)"
);

const DUE_STATS: &str = "
SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(due_at))::float8, 0)
FROM sms WHERE status = 'pending' AND due_at <= now()";

/// Binds `args` in order.
fn bind<'q>(
    mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    args: &[Arg],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(*v),
            Arg::Text(v) => query.bind(v.clone()),
            Arg::Time(v) => query.bind(*v),
        };
    }
    query
}

// A delivery report moves `sent` to its final status. $1 = id, $2 = status.
const REPORT_UPDATE: &str = "
UPDATE sms SET status = $2, updated_at = now(),
       delivered_at = CASE WHEN $2 = 'delivered' THEN now() ELSE delivered_at END
WHERE id = $1";

// Its event. $1 = id, $2 = status, $3 = the provider's status and code.
const REPORT_EVENT: &str =
    "INSERT INTO sms_event (sms_id, from_status, to_status, reason) VALUES ($1, 'sent', $2, $3)";

// A report before the send's outcome is kept on the row for RECORD; the
// first one only, so a duplicate or a contrary one changes nothing.
// $1 = id, $2 = status, $3 = the provider's status and code.
const REPORT_KEEP: &str = "
UPDATE sms SET early_report = $2, early_report_reason = $3
WHERE id = $1 AND early_report IS NULL";

#[async_trait]
impl Backend for PgStore {
    type Row = PgRow;

    const MIGRATOR: &'static Migrator = &MIGRATOR;
    const STYLE: Style = Style {
        placeholder: Style::numbered,
        nulls_last: true,
    };
    const MIGRATIONS_TABLE: &'static str = "SELECT count(*) AS n FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()";
    const SENT_BEFORE_WINDOW: &'static str =
        "s.sent_at < now() - $1::bigint * interval '1 millisecond'";
    const DEMO_INSERT: &'static str = concat!(
        "INSERT",
        crate::store::demo_rows!(),
        " ON CONFLICT DO NOTHING"
    );

    async fn fetch(&self, sql: &str, args: &[Arg]) -> Result<Vec<PgRow>, StoreError> {
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
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn due_stats(&self) -> Result<(i64, f64), StoreError> {
        self.call(async |conn| Ok(sqlx::query_as(DUE_STATS).fetch_one(&mut **conn).await?))
            .await
    }

    async fn watch_inserts(
        &self,
        waiter: super::Waiter<'_>,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        super::pg_wakeups::watch(&self.pool, self.call_timeout, waiter, stop).await
    }
}

#[async_trait]
impl Queue for PgStore {
    async fn claim(
        &self,
        instance: &str,
        batch_size: u32,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let expired = sweep_expired(|| {
            self.call(async |conn| {
                let done = sqlx::query(EXPIRE)
                    .bind(i64::from(EXPIRE_BATCH))
                    .execute(&mut **conn)
                    .await?;
                Ok(done.rows_affected())
            })
        })
        .await?;
        let rows = self
            .call(async |conn| {
                Ok(sqlx::query(CLAIM)
                    .bind(i64::from(batch_size))
                    .bind(instance)
                    .bind(millis(lease))
                    .fetch_all(&mut **conn)
                    .await?)
            })
            .await?;
        let read = ClaimedRows::read(&rows, 0)?;
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
        let rows: Vec<OutcomeRow> = outcomes.iter().map(OutcomeRow::new).collect();
        let json = to_json(&rows)?;
        let applied: i64 = self
            .call(async |conn| {
                Ok(sqlx::query_scalar(RECORD)
                    .bind(instance)
                    .bind(&json)
                    .fetch_one(&mut **conn)
                    .await?)
            })
            .await?;
        Ok(record_report(outcomes.len(), applied))
    }
}

#[async_trait]
impl Leases for PgStore {
    async fn release(
        &self,
        instance: &str,
        claims: &[(i64, u32)],
        why: ReleaseReason,
    ) -> Result<u64, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let json = to_json(&AttemptRef::all(claims))?;
        let released: i64 = self
            .call(async |conn| {
                Ok(sqlx::query_scalar(RELEASE)
                    .bind(instance)
                    .bind(&json)
                    .bind(why.event_reason())
                    .fetch_one(&mut **conn)
                    .await?)
            })
            .await?;
        Ok(u64::try_from(released).unwrap_or(0))
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
                .bind(instance)
                .bind(&json)
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
        self.call(async |conn| {
            let mut tx = conn.begin().await?;
            // Transaction-scoped: released at commit, or when a crashed session's connection drops.
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(REAPER_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !locked {
                return Ok(ReapReport {
                    skipped: true,
                    ..ReapReport::default()
                });
            }
            let (requeued, failed, reported): (i64, i64, i64) = sqlx::query_as(REAP)
                .bind(i64::from(max_attempts))
                .bind(i64::from(limit))
                .bind(guarantee == Guarantee::AtMostOnce)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(ReapReport {
                requeued: u64::try_from(requeued).unwrap_or(0),
                failed: u64::try_from(failed).unwrap_or(0),
                reported: u64::try_from(reported).unwrap_or(0),
                skipped: false,
            })
        })
        .await
    }
}

#[async_trait]
impl Retention for PgStore {
    async fn delete_finished(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<PurgeReport, StoreError> {
        self.call(async |conn| {
            let mut tx = conn.begin().await?;
            // Transaction-scoped, as the reaper's: held for this batch only.
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(RETENTION_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !locked {
                return Ok(PurgeReport {
                    skipped: true,
                    ..PurgeReport::default()
                });
            }
            let (messages, attempts, events): (i64, i64, i64) = sqlx::query_as(RETENTION_DELETE)
                .bind(millis(older_than))
                .bind(i64::from(limit))
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(PurgeReport {
                messages: u64::try_from(messages).unwrap_or(0),
                attempts: u64::try_from(attempts).unwrap_or(0),
                events: u64::try_from(events).unwrap_or(0),
                skipped: false,
            })
        })
        .await
    }
}

#[async_trait]
impl Reports for PgStore {
    async fn apply_delivery_report(
        &self,
        report: &DeliveryReport,
    ) -> Result<ReportApplied, StoreError> {
        self.call(async |conn| {
            let mut tx = conn.begin().await?;
            // FOR UPDATE: a duplicate report arriving at the same time waits, then
            // sees the final status and changes nothing.
            apply_report!(
                tx,
                report,
                sqlx::query_as("SELECT status, attempts FROM sms WHERE id = $1 FOR UPDATE"),
                |to| sqlx::query(REPORT_UPDATE).bind(report.sms_id).bind(to),
                sqlx::query(REPORT_EVENT)
                    .bind(report.sms_id)
                    .bind(to)
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
