//! PostgreSQL store: one statement per operation where a CTE can carry it,
//! times from the server's `now()` so several hosts agree on leases.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::report::{self, DeliveryReport, ReportApplied};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};

use sqlx::migrate::Migrator;
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder};

use super::{
    Claim, Enqueued, Lookup, OrderBy, Page, Paging, QueueStats, ReapReport, RecordReport, SmsQuery,
    Store, StoreError, StoreOptions,
};
use crate::domain::{
    AttemptRecord, ClaimedSms, EventRecord, NewSms, NextState, Outcome, Recipient, SmsRecord,
    Status,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Fineract's tables, the default directory.
const CLIENT_QUERY: &str = "SELECT mobile_no FROM m_client WHERE id = $1";
const STAFF_QUERY: &str = "SELECT mobile_no FROM m_staff WHERE id = $1";

/// The outbox on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    client_query: String,
    staff_query: String,
}

/// Key of the advisory lock that keeps the reaper to one instance at a time.
const REAPER_LOCK: i64 = 0x0073_6d73_7265_6170; // "smsreap"

impl PgStore {
    /// A pool that connects on first use, so start-up survives a database that is still coming up.
    pub fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy(&options.url)
            .map_err(StoreError::Database)?;
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

    /// The underlying pool, for tests and the API's ad-hoc queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

// Expired pending rows become `failed` before the claim looks for work, so an
// expired message is never sent. SKIP LOCKED: another instance may be expiring too.
const EXPIRE: &str = "
WITH expired AS (
    UPDATE sms SET status = 'failed', last_error = 'expired', updated_at = now()
    WHERE id IN (
        SELECT id FROM sms
        WHERE status = 'pending' AND expires_at <= now()
        ORDER BY expires_at
        LIMIT 1000
        FOR NO KEY UPDATE SKIP LOCKED)
    RETURNING id
)
INSERT INTO sms_event (sms_id, from_status, to_status, reason)
SELECT id, 'pending', 'failed', 'expired before it could be sent' FROM expired";

// The claim: lock due rows (MATERIALIZED so the LIMIT applies before the
// UPDATE joins back), lease them to this instance, bump the attempt and write
// the attempt and event rows, all in one statement.
const CLAIM: &str = "
WITH due AS MATERIALIZED (
    SELECT id FROM sms
    WHERE status = 'pending' AND due_at <= now()
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
        updated_at = now()
    FROM due
    WHERE sms.id = due.id
    RETURNING sms.id, sms.attempts, sms.mobile_no, sms.message
),
attempt AS (
    INSERT INTO sms_attempt (sms_id, attempt, instance)
    SELECT id, attempts, $2 FROM claimed
),
event AS (
    INSERT INTO sms_event (sms_id, from_status, to_status, reason)
    SELECT id, 'pending', 'sending', 'claimed by ' || $2 || ' for attempt ' || attempts FROM claimed
)
SELECT id, attempts, mobile_no, message FROM claimed ORDER BY id";

// Outcomes arrive as parallel arrays (one statement per batch). The WHERE
// clause is the fence: only a row still `sending` under this attempt and this
// instance's lease changes; anything else is a stale write and is left alone.
const RECORD: &str = "
WITH input AS (
    SELECT * FROM UNNEST($2::bigint[], $3::int[], $4::text[], $5::bigint[], $6::text[],
                         $7::int[], $8::text[], $9::text[], $10::int[], $11::text[])
        AS t(id, attempt, next_status, retry_ms, outcome, http_status, provider_message_id, error, segments, reason)
),
updated AS (
    UPDATE sms SET
        status = input.next_status,
        locked_by = NULL,
        lease_expires_at = NULL,
        next_attempt_at = CASE WHEN input.next_status = 'pending'
                               THEN now() + input.retry_ms * interval '1 millisecond'
                               ELSE sms.next_attempt_at END,
        sent_at = CASE WHEN input.next_status = 'sent' THEN now() ELSE sms.sent_at END,
        provider_message_id = COALESCE(input.provider_message_id, sms.provider_message_id),
        last_error = COALESCE(input.error, sms.last_error),
        segments = COALESCE(input.segments, sms.segments),
        updated_at = now()
    FROM input
    WHERE sms.id = input.id
      AND sms.status = 'sending'
      AND sms.attempts = input.attempt
      AND sms.locked_by = $1
    RETURNING sms.id, input.attempt, input.next_status, input.outcome, input.http_status,
              input.provider_message_id, input.error, input.reason
),
attempt AS (
    UPDATE sms_attempt a SET
        finished_at = now(),
        outcome = u.outcome,
        http_status = u.http_status,
        provider_message_id = u.provider_message_id,
        error = u.error
    FROM updated u
    WHERE a.sms_id = u.id AND a.attempt = u.attempt
),
event AS (
    INSERT INTO sms_event (sms_id, from_status, to_status, reason)
    SELECT id, 'sending', next_status, reason FROM updated
)
SELECT count(*) FROM updated";

// Rows claimed but never sent (shutdown): back to `pending` as if never
// claimed. The attempt row goes too, since no request was ever made; the
// events keep the story.
const RELEASE: &str = "
WITH input AS (
    SELECT * FROM UNNEST($2::bigint[], $3::int[]) AS t(id, attempt)
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
    SELECT id, 'sending', 'pending', 'released unsent at shutdown' FROM released
)
SELECT count(*) FROM released";

// Expired leases: the instance crashed or hung. Its open attempt is marked
// `abandoned` (it may have reached the provider: at-least-once).
const REAP: &str = "
WITH expired AS (
    SELECT id, locked_by FROM sms
    WHERE status = 'sending' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT $2
    FOR NO KEY UPDATE SKIP LOCKED
),
reaped AS (
    UPDATE sms SET
        status = CASE WHEN sms.attempts >= $1 THEN 'failed' ELSE 'pending' END,
        last_error = 'lease of ' || expired.locked_by || ' expired during attempt ' || sms.attempts,
        next_attempt_at = now(),
        locked_by = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    FROM expired
    WHERE sms.id = expired.id
    RETURNING sms.id, sms.attempts, sms.status, sms.last_error
),
attempt AS (
    UPDATE sms_attempt a SET
        finished_at = now(),
        outcome = 'abandoned',
        error = 'lease expired before an outcome was recorded'
    FROM reaped r
    WHERE a.sms_id = r.id AND a.attempt = r.attempts
),
event AS (
    INSERT INTO sms_event (sms_id, from_status, to_status, reason)
    SELECT id, 'sending', status,
           CASE WHEN status = 'failed' THEN 'attempts exhausted: ' || last_error ELSE last_error END
    FROM reaped
)
SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed') FROM reaped";

// With a key already used, DO NOTHING returns no row and the caller looks the first one up.
const ENQUEUE: &str = "
INSERT INTO sms (client_id, staff_id, mobile_no, message, not_before, expires_at, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id";

const BY_IDEMPOTENCY_KEY: &str = "SELECT id FROM sms WHERE idempotency_key = $1";

const SMS_COLUMNS: &str = "id, client_id, staff_id, mobile_no, message, status, attempts, segments, \
    created_at, updated_at, not_before, expires_at, next_attempt_at, locked_by, lease_expires_at, \
    sent_at, delivered_at, provider_message_id, last_error";

const STATUS_COUNTS: &str = "SELECT status, count(*) FROM sms GROUP BY status";

const DUE_STATS: &str = "
SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(due_at))::float8, 0)
FROM sms WHERE status = 'pending' AND due_at <= now()";

const GET: &str = "
SELECT id, client_id, staff_id, mobile_no, message, status, attempts, segments, created_at,
       updated_at, not_before, expires_at, next_attempt_at, locked_by, lease_expires_at,
       sent_at, delivered_at, provider_message_id, last_error
FROM sms WHERE id = $1";

const ATTEMPTS: &str = "
SELECT attempt, instance, started_at, finished_at, outcome, http_status, provider_message_id, error
FROM sms_attempt WHERE sms_id = $1 ORDER BY attempt";

const EVENTS: &str = "
SELECT from_status, to_status, occurred_at, reason
FROM sms_event WHERE sms_id = $1 ORDER BY id";

/// Appends the WHERE clause of a list query; `keyset` adds the cursor condition.
fn push_filter(sql: &mut QueryBuilder<Postgres>, query: &SmsQuery, keyset: bool) {
    let f = &query.filter;
    sql.push(" WHERE true");
    if let Some(id) = f.client_id {
        sql.push(" AND client_id = ").push_bind(id);
    }
    if let Some(id) = f.staff_id {
        sql.push(" AND staff_id = ").push_bind(id);
    }
    if !f.statuses.is_empty() {
        let names: Vec<&str> = f.statuses.iter().map(|s| s.as_str()).collect();
        sql.push(" AND status = ANY(").push_bind(names).push(")");
    }
    if let Some(number) = &f.mobile_no {
        sql.push(" AND mobile_no = ").push_bind(number.clone());
    }
    if let Some(from) = f.created_from {
        sql.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(to) = f.created_to {
        sql.push(" AND created_at < ").push_bind(to);
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

/// A failing directory query is a configuration problem; say which.
fn directory_error(e: sqlx::Error) -> StoreError {
    match StoreError::from(e) {
        StoreError::Database(e) => StoreError::Directory(format!(
            "the [directory] query failed ({e}); set directory.client_query / directory.staff_query for your schema"
        )),
        other => other,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn status_column(row: &PgRow, id: i64, column: &str) -> Result<Status, StoreError> {
    let raw: String = row.try_get(column)?;
    raw.parse().map_err(
        |e: crate::domain::status::UnknownStatus| StoreError::BadRow {
            id,
            message: e.to_string(),
        },
    )
}

fn to_u32(value: Option<i32>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

pub(crate) fn sms_from_row(row: &PgRow) -> Result<SmsRecord, StoreError> {
    let id: i64 = row.try_get("id")?;
    Ok(SmsRecord {
        id,
        client_id: row.try_get("client_id")?,
        staff_id: row.try_get("staff_id")?,
        mobile_no: row.try_get("mobile_no")?,
        message: row.try_get("message")?,
        status: status_column(row, id, "status")?,
        attempts: to_u32(row.try_get("attempts")?).unwrap_or(0),
        segments: to_u32(row.try_get("segments")?),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        not_before: row.try_get("not_before")?,
        expires_at: row.try_get("expires_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        locked_by: row.try_get("locked_by")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        sent_at: row.try_get("sent_at")?,
        delivered_at: row.try_get("delivered_at")?,
        provider_message_id: row.try_get("provider_message_id")?,
        last_error: row.try_get("last_error")?,
    })
}

#[async_trait]
impl Store for PgStore {
    async fn apply_delivery_report(
        &self,
        report: &DeliveryReport,
    ) -> Result<ReportApplied, StoreError> {
        let mut tx = self.pool.begin().await?;
        // FOR UPDATE: a duplicate report arriving at the same time waits, then
        // sees the final status and changes nothing.
        let row: Option<(String, i32)> =
            sqlx::query_as("SELECT status, attempts FROM sms WHERE id = $1 FOR UPDATE")
                .bind(report.sms_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((status, attempts)) = row else {
            return Ok(ReportApplied::Unknown);
        };
        let status = super::batch::parse_status(report.sms_id, &status)?;
        let decision = report::decide(status, to_u32(Some(attempts)).unwrap_or(0), report);
        if decision != ReportApplied::Applied {
            return Ok(decision);
        }
        let to = report.outcome.status().as_str();
        sqlx::query(
            "UPDATE sms SET status = $2, updated_at = now(),
                 delivered_at = CASE WHEN $2 = 'delivered' THEN now() ELSE delivered_at END
             WHERE id = $1",
        )
        .bind(report.sms_id)
        .bind(to)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO sms_event (sms_id, from_status, to_status, reason) VALUES ($1, 'sent', $2, $3)",
        )
        .bind(report.sms_id)
        .bind(to)
        .bind(&report.reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ReportApplied::Applied)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
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
        let mut tx = self.pool.begin().await?;
        let expired = sqlx::query(EXPIRE).execute(&mut *tx).await?.rows_affected();
        let rows = sqlx::query(CLAIM)
            .bind(i64::from(batch_size))
            .bind(instance)
            .bind(millis(lease))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let messages = rows
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
        Ok(Claim { messages, expired })
    }

    async fn record_outcomes(
        &self,
        instance: &str,
        outcomes: &[Outcome],
    ) -> Result<RecordReport, StoreError> {
        if outcomes.is_empty() {
            return Ok(RecordReport::default());
        }
        let n = outcomes.len();
        let mut ids = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut next_status = Vec::with_capacity(n);
        let mut retry_ms = Vec::with_capacity(n);
        let mut outcome = Vec::with_capacity(n);
        let mut http_status = Vec::with_capacity(n);
        let mut provider_ids = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut segments = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        for o in outcomes {
            ids.push(o.id);
            attempts.push(i32::try_from(o.attempt).unwrap_or(i32::MAX));
            next_status.push(o.next.status().as_str());
            retry_ms.push(match o.next {
                NextState::Retry(after) => Some(millis(after)),
                _ => None,
            });
            outcome.push(o.outcome.as_str());
            http_status.push(o.http_status.map(i32::from));
            provider_ids.push(o.provider_message_id.as_deref());
            errors.push(o.error.as_deref());
            segments.push(o.segments.map(|s| i32::try_from(s).unwrap_or(i32::MAX)));
            reasons.push(o.reason.as_str());
        }
        let applied: i64 = sqlx::query_scalar(RECORD)
            .bind(instance)
            .bind(&ids)
            .bind(&attempts)
            .bind(&next_status)
            .bind(&retry_ms)
            .bind(&outcome)
            .bind(&http_status)
            .bind(&provider_ids)
            .bind(&errors)
            .bind(&segments)
            .bind(&reasons)
            .fetch_one(&self.pool)
            .await?;
        let applied = u64::try_from(applied).unwrap_or(0);
        Ok(RecordReport {
            applied,
            stale: n as u64 - applied.min(n as u64),
        })
    }

    async fn release(&self, instance: &str, claims: &[(i64, u32)]) -> Result<u64, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = claims.iter().map(|(id, _)| *id).collect();
        let attempts: Vec<i32> = claims
            .iter()
            .map(|(_, a)| i32::try_from(*a).unwrap_or(i32::MAX))
            .collect();
        let released: i64 = sqlx::query_scalar(RELEASE)
            .bind(instance)
            .bind(&ids)
            .bind(&attempts)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(released).unwrap_or(0))
    }

    async fn reap_expired_leases(
        &self,
        max_attempts: u32,
        limit: u32,
    ) -> Result<ReapReport, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        let (requeued, failed): (i64, i64) = sqlx::query_as(REAP)
            .bind(i64::from(max_attempts))
            .bind(i64::from(limit))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ReapReport {
            requeued: u64::try_from(requeued).unwrap_or(0),
            failed: u64::try_from(failed).unwrap_or(0),
            skipped: false,
        })
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
            .bind(sms.not_before)
            .bind(sms.expires_at)
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
        let mut order = String::from(" ORDER BY ");
        if matches!(query.paging, Paging::Offset { .. }) && query.order_by != OrderBy::Id {
            // NULLs last either way, so the order does not flip with the direction;
            // only for nullable columns, where it cannot stop an index from serving the order.
            order.push_str(query.order_by.column());
            order.push(' ');
            order.push_str(direction);
            order.push_str(if query.order_by.nullable() {
                " NULLS LAST, "
            } else {
                ", "
            });
        }
        order.push_str("id ");
        order.push_str(direction);
        // The page's ids first, then their rows. The inner query is an index-only
        // scan when an index holds the filter and the order (sms_client_idx for a
        // client's messages by id), so the planner cannot prefer walking the primary
        // key and filtering on client_id, which reads most of the table for a busy
        // client whose messages are all recent; and OFFSET skips index entries, not rows.
        let mut select = QueryBuilder::<Postgres>::new(format!(
            "SELECT {SMS_COLUMNS} FROM sms WHERE id IN (SELECT id FROM sms"
        ));
        push_filter(&mut select, query, true);
        select.push(&order).push(" LIMIT ");
        match query.paging {
            Paging::Offset { offset, limit } => {
                select
                    .push_bind(i64::from(limit))
                    .push(" OFFSET ")
                    .push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
            }
            Paging::Keyset { limit, .. } => {
                select.push_bind(i64::from(limit) + 1);
            }
        }
        select.push(")").push(&order);
        let rows = select.build().fetch_all(&self.pool).await?;
        let mut items = rows
            .iter()
            .map(sms_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let (total, has_more) = match query.paging {
            Paging::Offset { .. } => {
                let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM sms");
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
        sqlx::query(concat!(
            "INSERT",
            crate::store::demo_rows!(),
            " ON CONFLICT DO NOTHING"
        ))
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
        Ok(match found {
            None => Lookup::NotFound,
            Some(Some(number)) if !number.trim().is_empty() => Lookup::Found(number),
            Some(_) => Lookup::NoNumber,
        })
    }

    async fn ready(&self) -> Result<bool, StoreError> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .or_else(|e| match &e {
                    // No migrations table yet: reachable but not migrated.
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
                    _ => Err(e),
                })?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as(STATUS_COUNTS).fetch_all(&self.pool).await?;
        let (due, oldest): (i64, f64) = sqlx::query_as(DUE_STATS).fetch_one(&self.pool).await?;
        let by_status = Status::ALL
            .iter()
            .map(|status| {
                let n = counts
                    .iter()
                    .find(|(name, _)| name == status.as_str())
                    .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
                (*status, n)
            })
            .collect();
        Ok(QueueStats {
            by_status,
            due: u64::try_from(due).unwrap_or(0),
            oldest_due_age_secs: oldest.max(0.0),
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
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
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
                Ok(EventRecord {
                    from_status: status_column(row, id, "from_status")?,
                    to_status: status_column(row, id, "to_status")?,
                    occurred_at: row.try_get("occurred_at")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }
}
