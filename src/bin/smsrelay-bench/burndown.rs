//! Burn-down: N messages already in the outbox, the real daemon started,
//! timed until every one is `sent`; with `--growth-rows`, the same again with
//! that many finished messages (and their history) in the tables.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::Args;
use crate::daemon::{self, Daemon};
use crate::database::{BackendCpu, FreshDb};
use crate::provider::Provider;

#[derive(Debug, Clone, Serialize)]
pub struct BurnDown {
    pub messages: i64,
    /// Finished rows present before the run (growth section), 0 otherwise.
    pub finished_rows_before: i64,
    /// From starting the daemon until the database shows all N `sent`.
    pub seconds: f64,
    pub per_second: f64,
    /// First to last request at the provider (without start-up and the last write).
    pub provider_span_seconds: f64,
    pub daemon_cpu_seconds: f64,
    /// `None` when the PostgreSQL server is not on this machine.
    pub db_cpu_seconds: Option<f64>,
    pub daemon_peak_rss_kib: u64,
    pub provider_requests: u64,
    pub provider_distinct_ids: u64,
    pub duplicate_requests: u64,
    pub sent: i64,
    /// The claim's plan on the grown table (EXPLAIN ANALYZE, BUFFERS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_plan: Option<String>,
}

impl BurnDown {
    /// Every message sent, each received exactly once.
    pub fn counts_ok(&self) -> bool {
        self.sent == self.messages
            && self.provider_requests == self.messages as u64
            && self.provider_distinct_ids == self.messages as u64
            && self.duplicate_requests == 0
    }
}

/// Waits until the provider has `n` requests and no row is left `pending`/`sending`.
pub async fn until_finished(
    db: &FreshDb,
    provider: &Provider,
    daemon: &mut Daemon,
    n: u64,
    timeout: Duration,
    started: Instant,
) -> anyhow::Result<()> {
    loop {
        daemon.check_alive()?;
        // The database is asked only at the end, so the polling costs it nothing meanwhile.
        if provider.total() >= n && db.unfinished().await? == 0 {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "not finished after {timeout:?}: the provider has {} of {n} requests, {} rows unfinished",
                provider.total(),
                db.unfinished().await?
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run(
    args: &Args,
    provider: &Provider,
    logs: &Path,
    growth_rows: i64,
) -> anyhow::Result<BurnDown> {
    let label = if growth_rows > 0 {
        "growth"
    } else {
        "burndown"
    };
    let db = FreshDb::create(&args.database_url, label).await?;
    let result = run_on(&db, args, provider, logs, growth_rows, label).await;
    db.drop_now().await;
    result
}

async fn run_on(
    db: &FreshDb,
    args: &Args,
    provider: &Provider,
    logs: &Path,
    growth_rows: i64,
    label: &str,
) -> anyhow::Result<BurnDown> {
    daemon::migrate(&db.url)?;
    if growth_rows > 0 {
        fill_finished(db, growth_rows).await?;
    }
    db.insert_messages(args.messages).await?;
    let claim_plan = if growth_rows > 0 {
        Some(claim_plan(db, args.batch_size).await?)
    } else {
        None
    };
    provider.take();
    let cpu = BackendCpu::start(db);
    let started = Instant::now();
    let log = logs.join(format!("daemon-{label}.log"));
    let mut daemon = Daemon::start(&db.url, &provider.url, args.concurrency, &log)?;
    let n = args.messages as u64;
    until_finished(db, provider, &mut daemon, n, args.timeout, started).await?;
    let seconds = started.elapsed().as_secs_f64();
    let usage = daemon.usage()?;
    let db_cpu_seconds = cpu.finish().await;
    daemon.stop(Duration::from_secs(30)).await?;
    let received = provider.take();
    let statuses = db.statuses().await?;
    let (_, duplicate_requests) = received.duplicates();
    Ok(BurnDown {
        messages: args.messages,
        finished_rows_before: growth_rows,
        seconds,
        per_second: args.messages as f64 / seconds,
        provider_span_seconds: match (received.first_us, received.last_us) {
            (Some(first), Some(last)) => (last - first) as f64 / 1e6,
            _ => 0.0,
        },
        daemon_cpu_seconds: usage.cpu_seconds,
        db_cpu_seconds,
        daemon_peak_rss_kib: usage.peak_rss_kib,
        provider_requests: received.total,
        provider_distinct_ids: received.per_id.len() as u64,
        duplicate_requests,
        // The finished rows of the growth section are `sent` too.
        sent: statuses.get("sent").copied().unwrap_or(0) - growth_rows,
        claim_plan,
    })
}

/// `rows` finished messages, each with its attempt and its two events, as a
/// long-running outbox has them; in chunks, so no statement runs for minutes.
async fn fill_finished(db: &FreshDb, rows: i64) -> anyhow::Result<()> {
    const CHUNK: i64 = 500_000;
    let mut from = 1;
    while from <= rows {
        let to = (from + CHUNK - 1).min(rows);
        let mut tx = db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sms (id, client_id, mobile_no, message, status, attempts, sent_at,
                              provider_message_id, segments, created_at, updated_at)
             OVERRIDING SYSTEM VALUE
             SELECT g, g, '+254 711 ' || lpad((g % 1000000)::text, 6, '0'),
                    'Dear client, your repayment of 1,250.00 was received. Ref ' || g,
                    'sent', 1, now() - interval '30 days', 'old-' || g, 1,
                    now() - interval '30 days', now() - interval '30 days'
             FROM generate_series($1::bigint, $2::bigint) g",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await
        .context("growth: insert finished messages")?;
        sqlx::query(
            "INSERT INTO sms_attempt (sms_id, attempt, instance, started_at, finished_at, outcome,
                                      http_status, provider_message_id, provider)
             SELECT g, 1, 'old', now() - interval '30 days', now() - interval '30 days',
                    'accepted', 200, 'old-' || g, 'webhook'
             FROM generate_series($1::bigint, $2::bigint) g",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await
        .context("growth: insert their attempts")?;
        sqlx::query(
            "INSERT INTO sms_event (sms_id, from_status, to_status, occurred_at, reason)
             SELECT g, e.from_status, e.to_status, now() - interval '30 days', e.reason
             FROM generate_series($1::bigint, $2::bigint) g,
                  (VALUES ('pending', 'sending', 'claimed by old for attempt 1'),
                          ('sending', 'sent', 'accepted by provider webhook')) e(from_status, to_status, reason)",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await
        .context("growth: insert their events")?;
        tx.commit().await?;
        from = to + 1;
    }
    // The new messages' ids must come after the old ones.
    sqlx::query("SELECT setval(pg_get_serial_sequence('sms', 'id'), $1)")
        .bind(rows)
        .execute(&db.pool)
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE sms, sms_attempt, sms_event")
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// The plan of the claim's row selection (the daemon's WHERE, ORDER BY and
/// lock), run for real in a transaction that is rolled back.
async fn claim_plan(db: &FreshDb, batch_size: u32) -> anyhow::Result<String> {
    let mut tx = db.pool.begin().await?;
    let lines: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF)
         SELECT id FROM sms
         WHERE status = 'pending' AND due_at <= now()
           AND (expires_at IS NULL OR expires_at > now())
         ORDER BY due_at, id
         LIMIT $1
         FOR NO KEY UPDATE SKIP LOCKED",
    )
    .bind(i64::from(batch_size))
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(lines.join("\n"))
}
