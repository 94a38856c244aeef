//! Dispatcher throughput: pending rows to `sent` through the real dispatcher
//! (claim, validate, webhook send, fenced record), against a provider on
//! loopback that answers 200 at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use smsrelay::domain::Outcome;
use smsrelay::store::postgres::PgStore;
use smsrelay::store::{Claim, Queue, RecordReport, StoreError};
use tokio_util::sync::CancellationToken;

use crate::stats::{Table, ms, summarize};
use crate::support::*;

/// Messages per run (`SMSRELAY_BENCH_MESSAGES`, default 50000).
fn messages() -> i64 {
    std::env::var("SMSRELAY_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

/// A run that has not finished by then fails.
const RUN_BUDGET: Duration = Duration::from_secs(600);

/// Timings of the two statements a cycle costs, shared by every instance of a run.
#[derive(Default)]
struct Meter {
    /// Claim transactions that returned rows (expiry sweep + claim + commit).
    claims: Mutex<Vec<Duration>>,
    /// Claims that found nothing.
    empty_claims: AtomicU64,
    /// Outcome writes (one statement per batch).
    records: Mutex<Vec<Duration>>,
    applied: AtomicU64,
    stale: AtomicU64,
}

/// The queue with the dispatcher's two hot statements timed; everything
/// else goes to the store underneath (`store::with_queue`).
struct TimedStore {
    inner: PgStore,
    meter: Arc<Meter>,
}

#[async_trait]
impl Queue for TimedStore {
    async fn claim(
        &self,
        instance: &str,
        batch_size: u32,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let started = Instant::now();
        let claim = self.inner.claim(instance, batch_size, lease).await?;
        let took = started.elapsed();
        if claim.messages.is_empty() {
            self.meter.empty_claims.fetch_add(1, Ordering::Relaxed);
        } else {
            self.meter.claims.lock().expect("meter").push(took);
        }
        Ok(claim)
    }
    async fn record_outcomes(
        &self,
        instance: &str,
        outcomes: &[Outcome],
    ) -> Result<RecordReport, StoreError> {
        let started = Instant::now();
        let report = self.inner.record_outcomes(instance, outcomes).await?;
        self.meter
            .records
            .lock()
            .expect("meter")
            .push(started.elapsed());
        self.meter
            .applied
            .fetch_add(report.applied, Ordering::Relaxed);
        self.meter.stale.fetch_add(report.stale, Ordering::Relaxed);
        Ok(report)
    }
}

/// A provider that accepts everything at once: `{"id": "prov-<sms id>"}`, nothing recorded
/// but a count (wiremock keeps every request, which costs more than the dispatcher at 50k).
struct FastProvider {
    url: String,
    received: Arc<AtomicU64>,
    stop: CancellationToken,
}

#[derive(serde::Deserialize)]
struct Probe {
    id: i64,
}

async fn accept(
    State(received): State<Arc<AtomicU64>>,
    body: Bytes,
) -> impl axum::response::IntoResponse {
    received.fetch_add(1, Ordering::Relaxed);
    let id = serde_json::from_slice::<Probe>(&body).map_or(0, |p| p.id);
    (
        [(CONTENT_TYPE, "application/json")],
        format!("{{\"id\":\"prov-{id}\"}}"),
    )
}

impl FastProvider {
    async fn start() -> FastProvider {
        let received = Arc::new(AtomicU64::new(0));
        let router = Router::new()
            .route("/sms", post(accept))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock provider");
        let url = format!("http://{}/sms", listener.local_addr().expect("address"));
        let stop = CancellationToken::new();
        tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        FastProvider {
            url,
            received,
            stop,
        }
    }
}

impl Drop for FastProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Run {
    instances: usize,
    batch_size: u32,
    concurrency: u32,
}

/// One run on a fresh database: `messages()` due rows, `instances` smsrelays, until all are sent.
async fn run_once(run: &Run) -> Vec<String> {
    let n = messages();
    let db = TestDb::new().await;
    // Numbers in the platform's forms, texts of one GSM-7 segment, all due now.
    sqlx::query(
        "INSERT INTO sms (client_id, mobile_no, message)
         SELECT 1 + g % 20000,
                CASE WHEN g % 3 = 0 THEN '0711 ' ELSE '+254 711 ' END
                    || lpad((g * 7919 % 1000000)::text, 6, '0'),
                'Dear customer, your repayment of KES ' || (100 + g % 90000)
                    || ' is due on Friday. Ref ' || g || '.'
         FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(&db.pool)
    .await
    .expect("enqueue");
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(&db.pool)
        .await
        .expect("vacuum");

    if run.instances == 1 && run.batch_size == 64 && run.concurrency == 16 {
        println!("\n{}", crate::stats::environment(&db.pool).await);
    }
    let provider = FastProvider::start().await;
    let meter = Arc::new(Meter::default());
    let stop = CancellationToken::new();
    let mut config = test_config(&db, &provider.url);
    config.provider.timeout = Duration::from_secs(2);
    config.dispatch.lease = Duration::from_secs(60);
    config.dispatch.poll_interval = Duration::from_secs(1);
    config.dispatch.batch_size = run.batch_size;
    config.dispatch.concurrency = run.concurrency;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..run.instances {
        let mut config = config.clone();
        config.dispatch.instance_id = Some(format!("bench-{}", i + 1));
        config.validate().expect("bench config is valid");
        // Each instance has its own pool, as separate processes would.
        let inner = PgStore::open(&options(&db.url)).expect("pool");
        let timed = Arc::new(TimedStore {
            inner: inner.clone(),
            meter: meter.clone(),
        });
        let store = smsrelay::store::with_queue(Arc::new(inner), timed);
        let app = smsrelay::app::Application::from_parts(&config, store, webhook(&config));
        tasks.push(tokio::spawn(app.run_until_stopped(stop.clone())));
    }
    let target = u64::try_from(n).expect("positive count");
    while meter.applied.load(Ordering::Relaxed) < target {
        assert!(
            started.elapsed() < RUN_BUDGET,
            "only {} of {n} sent after {RUN_BUDGET:?}",
            meter.applied.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    for task in tasks {
        task.await
            .expect("instance")
            .expect("instance stopped cleanly");
    }

    assert_eq!(db.count("sent").await, n, "every message is sent");
    let received = provider.received.load(Ordering::Relaxed);
    assert_eq!(received, target, "each message reached the provider once");
    assert_eq!(meter.stale.load(Ordering::Relaxed), 0, "no stale writes");
    let claims = summarize(&meter.claims.lock().expect("meter"), elapsed);
    let records = summarize(&meter.records.lock().expect("meter"), elapsed);
    vec![
        run.instances.to_string(),
        run.batch_size.to_string(),
        run.concurrency.to_string(),
        n.to_string(),
        format!("{:.1}", elapsed.as_secs_f64()),
        format!("{:.0}", n as f64 / elapsed.as_secs_f64()),
        format!("{} / {}", ms(claims.p50), ms(claims.p99)),
        format!("{} / {}", ms(records.p50), ms(records.p99)),
        claims.count.to_string(),
    ]
}

pub async fn bench() {
    let mut table = Table::new(&[
        "instances",
        "batch",
        "concurrency",
        "messages",
        "seconds",
        "msgs/s",
        "claim tx p50 / p99 ms",
        "record p50 / p99 ms",
        "batches",
    ]);
    for instances in [1, 2] {
        for batch_size in [64, 256] {
            for concurrency in [16, 64] {
                let run = Run {
                    instances,
                    batch_size,
                    concurrency,
                };
                let row = run_once(&run).await;
                println!(
                    "{instances} instance(s), batch {batch_size}, concurrency {concurrency}: {} msgs/s",
                    row[5]
                );
                table.row(row);
            }
        }
    }
    println!(
        "\nDispatcher throughput, pending -> sent, webhook provider on loopback answering 200 at once:\n\n{}",
        table.render()
    );
}
