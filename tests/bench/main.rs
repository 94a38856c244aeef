//! Benchmarks, run on demand and never by tests/run.sh (they are `#[ignore]`d),
//! and the smoke tests of `smsrelay-bench` (`smoke.rs`, run by the suite):
//!
//! ```sh
//! cargo test --release --test bench -- --ignored --nocapture --test-threads 1
//! cargo test --release --test bench api_latency -- --ignored --nocapture      # one of them
//! ```
//!
//! Both need PostgreSQL at `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/postgres)
//! and create, then drop, their own databases. Knobs: `SMSRELAY_BENCH_REQUESTS`
//! (per API scenario, default 2000), `SMSRELAY_BENCH_MESSAGES` (per dispatcher run,
//! default 50000). To look at query plans on the same data by hand:
//!
//! ```sh
//! createdb bench && psql -d bench -f migrations/postgres/0001_outbox.sql \
//!   && psql -d bench -f tests/bench/seed.sql && psql -d bench -c 'VACUUM ANALYZE'
//! ```

#[path = "../support/mod.rs"]
mod support;

mod api;
mod dispatch;
mod smoke;
mod stats;

/// `GET /sms?clientId=X&limit=50` and friends on 1,000,000 rows; target: p99 < 20 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (minutes): cargo test --release --test bench -- --ignored --nocapture"]
async fn api_latency_on_a_million_rows() {
    api::bench().await;
}

/// Messages per second from `pending` to `sent`, one and two instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (minutes): cargo test --release --test bench -- --ignored --nocapture"]
async fn dispatcher_throughput() {
    dispatch::bench().await;
}
