//! Latency: the daemon running on an empty outbox while messages are
//! INSERTed one per statement at a fixed offered rate, the platform's way,
//! from connections of the bench; each text carries the time its INSERT was
//! issued (`t=<unix micros>`), and the provider measures insert-to-provider.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::Args;
use crate::daemon::{self, Daemon};
use crate::database::FreshDb;
use crate::provider::Provider;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub offered_per_second: u32,
    pub seconds: f64,
    pub messages: u64,
    /// Messages inserted per second, as achieved.
    pub inserted_per_second: f64,
    /// Inserts issued more than 10 ms after their slot (the inserter fell behind).
    pub late_inserts: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub provider_requests: u64,
    pub duplicate_requests: u64,
    pub sent: i64,
}

impl Latency {
    pub fn counts_ok(&self) -> bool {
        self.sent == self.messages as i64
            && self.provider_requests == self.messages
            && self.duplicate_requests == 0
    }
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
pub fn percentile_ms(sorted_us: &[i64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

pub async fn run(args: &Args, provider: &Provider, logs: &Path) -> anyhow::Result<Latency> {
    let db = FreshDb::create(&args.database_url, "latency").await?;
    let result = run_on(&db, args, provider, logs).await;
    db.drop_now().await;
    result
}

async fn insert_one(pool: &sqlx::PgPool, i: u64) -> anyhow::Result<()> {
    let text = format!(
        "Your one-time code is {:06}. t={}",
        i % 1_000_000,
        crate::now_micros()
    );
    sqlx::query("INSERT INTO sms (client_id, mobile_no, message) VALUES ($1, $2, $3)")
        .bind(i as i64)
        .bind(format!("+254 711 {:06}", i % 1_000_000))
        .bind(text)
        .execute(pool)
        .await
        .context("latency: insert")?;
    Ok(())
}

async fn run_on(
    db: &FreshDb,
    args: &Args,
    provider: &Provider,
    logs: &Path,
) -> anyhow::Result<Latency> {
    daemon::migrate(&db.url)?;
    provider.take();
    let mut daemon = Daemon::start(
        &db.url,
        &provider.url,
        args.concurrency,
        &logs.join("daemon-latency.log"),
    )?;
    // Warm-up: one message through, so start-up is not in the figures.
    insert_one(&db.pool, 0).await?;
    let warm = Instant::now();
    crate::burndown::until_finished(db, provider, &mut daemon, 1, args.timeout, warm).await?;
    provider.take();

    let total = (f64::from(args.rate) * args.latency_duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let next = Arc::new(AtomicU64::new(1));
    let late = Arc::new(AtomicU64::new(0));
    let pool = crate::database::connect(&db.url, args.inserters).await?;
    let t0 = tokio::time::Instant::now();
    let inserters: Vec<_> = (0..args.inserters)
        .map(|_| {
            let (pool, next, late) = (pool.clone(), next.clone(), late.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i > total {
                        return anyhow::Ok(());
                    }
                    let slot = t0 + interval.mul_f64((i - 1) as f64);
                    tokio::time::sleep_until(slot).await;
                    if slot.elapsed() > Duration::from_millis(10) {
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                    insert_one(&pool, i).await?;
                }
            })
        })
        .collect();
    for task in inserters {
        task.await.context("inserter")??;
    }
    let seconds = t0.elapsed().as_secs_f64();
    pool.close().await;
    crate::burndown::until_finished(
        db,
        provider,
        &mut daemon,
        total,
        args.timeout,
        Instant::now(),
    )
    .await?;
    daemon.stop(Duration::from_secs(30)).await?;
    let mut received = provider.take();
    let (_, duplicate_requests) = received.duplicates();
    received.latencies_us.sort_unstable();
    let l = &received.latencies_us;
    // The warm-up message is `sent` too.
    let sent = db.statuses().await?.get("sent").copied().unwrap_or(0) - 1;
    Ok(Latency {
        offered_per_second: args.rate,
        seconds,
        messages: total,
        inserted_per_second: total as f64 / seconds,
        late_inserts: late.load(Ordering::Relaxed),
        p50_ms: percentile_ms(l, 0.50),
        p90_ms: percentile_ms(l, 0.90),
        p99_ms: percentile_ms(l, 0.99),
        max_ms: percentile_ms(l, 1.0),
        provider_requests: received.total,
        duplicate_requests,
        sent,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<i64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(super::percentile_ms(&samples, 0.50), 50.0);
        assert_eq!(super::percentile_ms(&samples, 0.99), 99.0);
        assert_eq!(super::percentile_ms(&samples, 1.0), 100.0);
    }
}
