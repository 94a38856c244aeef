//! The run's own database work: enqueue the platform's way, terminate the
//! daemons' backends, wait for the queue to drain, read the evidence.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use crate::checks::{AttemptRow, EventRow, MessageRow};

/// Our own connections carry this name, so the terminations spare them.
const APPLICATION: &str = "smsrelay-chaos";

pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?
        .application_name(APPLICATION)
        .disable_statement_logging();
    Ok(PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Retries `op` until it succeeds (the database may be restarting), for at most `for_`.
async fn retrying<T, F, Fut>(what: &str, for_: Duration, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + for_;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: still failing after {for_:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Inserts messages `from..=to` (their `client_id` is their marker) with a
/// plain INSERT, as the platform does. After an error (the database
/// restarting under us) it inserts only the markers that are not there yet,
/// so a commit whose answer was lost is not inserted twice.
pub async fn enqueue(pool: &PgPool, from: i64, to: i64) -> anyhow::Result<()> {
    let insert = "INSERT INTO sms (client_id, mobile_no, message)
         SELECT n, '+25471' || lpad((n % 10000000)::text, 7, '0'), 'chaos message ' || n
         FROM generate_series($1::bigint, $2::bigint) AS n
         WHERE NOT EXISTS (SELECT 1 FROM sms WHERE client_id = n)";
    retrying("enqueue", Duration::from_secs(120), || async {
        sqlx::query(insert)
            .bind(from)
            .bind(to)
            .execute(pool)
            .await?;
        Ok(())
    })
    .await
}

/// `pg_terminate_backend` of every client backend but ours; how many.
pub async fn terminate_daemons(pool: &PgPool) -> anyhow::Result<i64> {
    let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
           AND application_name <> $1";
    retrying("pg_terminate_backend", Duration::from_secs(60), || async {
        Ok(sqlx::query_scalar::<_, i64>(sql)
            .bind(APPLICATION)
            .fetch_one(pool)
            .await?)
    })
    .await
}

/// Rows in the outbox, and those not yet final (`pending`, `sending`).
pub async fn progress(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    let row = sqlx::query(
        "SELECT count(*), count(*) FILTER (WHERE status IN ('pending', 'sending')) FROM sms",
    )
    .fetch_one(pool)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Everything the checks read from the database.
pub async fn history(
    pool: &PgPool,
) -> anyhow::Result<(Vec<MessageRow>, Vec<EventRow>, Vec<AttemptRow>)> {
    retrying("read the history", Duration::from_secs(60), || async {
        let messages = sqlx::query("SELECT id, client_id, status, attempts FROM sms ORDER BY id")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(MessageRow {
                    id: r.try_get(0)?,
                    marker: r.try_get::<Option<i64>, _>(1)?.unwrap_or(0),
                    status: r.try_get(2)?,
                    attempts: i64::from(r.try_get::<i32, _>(3)?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let events =
            sqlx::query("SELECT sms_id, from_status, to_status FROM sms_event ORDER BY id")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| {
                    Ok(EventRow {
                        sms_id: r.try_get(0)?,
                        from: r.try_get(1)?,
                        to: r.try_get(2)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let attempts = sqlx::query(
            "SELECT sms_id, attempt, outcome, finished_at IS NOT NULL FROM sms_attempt ORDER BY id",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(AttemptRow {
                sms_id: r.try_get(0)?,
                attempt: i64::from(r.try_get::<i32, _>(1)?),
                outcome: r.try_get(2)?,
                finished: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((messages, events, attempts))
    })
    .await
    .context("reading sms, sms_event and sms_attempt")
}

/// Creates database `outbox` on a fresh cluster.
pub async fn create_outbox(admin_url: &str) -> anyhow::Result<()> {
    let admin = connect(admin_url).await?;
    retrying("create database", Duration::from_secs(30), || async {
        sqlx::query("CREATE DATABASE outbox")
            .execute(&admin)
            .await?;
        Ok(())
    })
    .await?;
    admin.close().await;
    Ok(())
}
