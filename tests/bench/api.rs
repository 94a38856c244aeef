//! API latency over real HTTP on loopback, against an `sms` table of 1,000,000
//! rows (tests/bench/seed.sql): `GET /sms?clientId=X&limit=50` with offset
//! paging (page + total count), with cursor paging, and `GET /sms/{id}`.
//!
//! The same scenarios run twice: with PostgreSQL's default plan cache (sqlx
//! prepares every statement, so after five executions a connection usually
//! switches to one generic plan), and with `plan_cache_mode =
//! force_custom_plan`, which is what each new connection does for its first
//! five executions of a statement (sqlx replaces connections after 10 minutes
//! idle and at the latest after 30 minutes).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use smsrelay::api::settings::{Scope, TokenSettings};
use smsrelay::provider::ProviderKind;
use smsrelay::store::Store;
use smsrelay::store::postgres::PgStore;
use tokio_util::sync::CancellationToken;

use crate::stats::{Summary, Table, ms, summarize};
use crate::support::*;

/// Requests per scenario (`SMSRELAY_BENCH_REQUESTS`, default 2000).
fn requests() -> usize {
    std::env::var("SMSRELAY_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// A scenario stops early when it has run this long (slow plans would take hours otherwise).
const TIME_BUDGET: Duration = Duration::from_secs(60);

/// Requests before measuring, so every pooled connection has prepared its statements.
const WARM_UP: usize = 400;

/// Which clients a list request asks about.
#[derive(Debug, Clone, Copy)]
enum Clients {
    /// The client of a random message: clients are looked at as often as they get SMS.
    ByActivity,
    /// Any client id, as likely as any other (many have a handful of messages, some none).
    Uniform,
    /// The 20 clients with the most messages, in turn.
    Heaviest,
}

impl Clients {
    fn label(self) -> &'static str {
        match self {
            Clients::ByActivity => "clients by activity",
            Clients::Uniform => "uniform clients",
            Clients::Heaviest => "20 heaviest clients",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Request {
    /// `GET /sms?clientId=X&limit=50` (first page, id ascending: the default order).
    Offset(Clients),
    /// `GET /sms?clientId=X&limit=50&sortOrder=DESC` (newest first).
    OffsetDesc(Clients),
    /// The last page of a client with offset paging.
    LastPage(Clients),
    /// `GET /sms?clientId=X&limit=50&cursor=` then the page its `nextCursor` points to.
    Cursor(Clients),
    /// `GET /sms/{id}` of a random message, with its attempts and events.
    ById,
}

impl Request {
    fn label(self) -> String {
        match self {
            Request::Offset(c) => format!("list offset, {}", c.label()),
            Request::OffsetDesc(c) => format!("list offset DESC, {}", c.label()),
            Request::LastPage(c) => format!("list offset last page, {}", c.label()),
            Request::Cursor(c) => format!("list cursor, 2 pages, {}", c.label()),
            Request::ById => "get by id, random messages".into(),
        }
    }
}

struct Scenario {
    request: Request,
    in_flight: usize,
}

/// What the requests draw from, fixed by a seed so every run asks the same things.
struct Workload {
    by_activity: Vec<i64>,
    uniform: Vec<i64>,
    /// (client id, its message count), most messages first.
    heaviest: Vec<(i64, i64)>,
    message_ids: Vec<i64>,
}

impl Workload {
    async fn load(db: &TestDb) -> Workload {
        let mut rng = StdRng::seed_from_u64(20261127);
        let n = 20_000;
        let random_ids: Vec<i64> = (0..n).map(|_| rng.random_range(1..=1_000_000)).collect();
        let by_activity: Vec<i64> = sqlx::query_scalar(
            "SELECT s.client_id FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, n)
             JOIN sms s USING (id) WHERE s.client_id IS NOT NULL ORDER BY u.n",
        )
        .bind(&random_ids)
        .fetch_all(&db.pool)
        .await
        .expect("clients by activity");
        let uniform = (0..n).map(|_| rng.random_range(1..=100_000)).collect();
        let heaviest: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT client_id, count(*) FROM sms WHERE client_id IS NOT NULL
             GROUP BY client_id ORDER BY count(*) DESC, client_id LIMIT 20",
        )
        .fetch_all(&db.pool)
        .await
        .expect("heaviest clients");
        let mut message_ids: Vec<i64> = (0..n).map(|_| rng.random_range(1..=1_000_000)).collect();
        message_ids.shuffle(&mut rng);
        Workload {
            by_activity,
            uniform,
            heaviest,
            message_ids,
        }
    }

    /// The `i`-th client (and its message count, when known) of a mix.
    fn client(&self, clients: Clients, i: usize) -> (i64, Option<i64>) {
        match clients {
            Clients::ByActivity => (self.by_activity[i % self.by_activity.len()], None),
            Clients::Uniform => (self.uniform[i % self.uniform.len()], None),
            Clients::Heaviest => {
                let (id, count) = self.heaviest[i % self.heaviest.len()];
                (id, Some(count))
            }
        }
    }
}

/// A running smsrelay with its API on loopback.
struct Target {
    base: String,
    http: reqwest::Client,
    token: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Target {
    /// Starts smsrelay exactly as tests/api does, on `store`, with a read token;
    /// the log provider, since nothing in the table is due.
    async fn start(db: &TestDb, store: Arc<dyn Store>) -> Target {
        let mut config = test_config(db, "http://127.0.0.1:9/unused");
        config.provider.kind = ProviderKind::Log;
        config.dispatch.poll_interval = Duration::from_secs(1);
        config.api.listen = "127.0.0.1:0".parse().expect("loopback address");
        let (token, digest) = smsrelay::api::auth::new_token();
        config.api.tokens = vec![TokenSettings {
            name: "screens".into(),
            scopes: vec![Scope::Read],
            sha256: Some(digest),
            token_file: None,
            credential: None,
        }];
        config.validate().expect("bench config is valid");
        let provider = config.provider.build().expect("log provider");
        let app = smsrelay::app::Application::from_parts(&config, store, provider)
            .with_api(&config)
            .expect("API binds");
        let base = format!("http://{}", app.api_addr().expect("API address"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        let http = reqwest::Client::new();
        assert!(
            eventually(Duration::from_secs(30), || async {
                http.get(format!("{base}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            })
            .await,
            "smsrelay did not become ready"
        );
        Target {
            base,
            http,
            token,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// One timed GET: until the whole body is in. Panics on anything but 200.
    async fn get(&self, path: &str) -> (Duration, Bytes) {
        let started = Instant::now();
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        let status = response.status();
        let body = response.bytes().await.expect("body");
        let elapsed = started.elapsed();
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        (elapsed, body)
    }
}

/// Runs the requests of work item `i`, returning their timings.
async fn run_item(target: &Target, work: &Workload, request: Request, i: usize) -> Vec<Duration> {
    match request {
        Request::Offset(clients) => {
            let (client, _) = work.client(clients, i);
            let (t, _) = target
                .get(&format!("/sms?clientId={client}&limit=50"))
                .await;
            vec![t]
        }
        Request::OffsetDesc(clients) => {
            let (client, _) = work.client(clients, i);
            let (t, _) = target
                .get(&format!("/sms?clientId={client}&limit=50&sortOrder=DESC"))
                .await;
            vec![t]
        }
        Request::LastPage(clients) => {
            let (client, count) = work.client(clients, i);
            let offset = count.unwrap_or(50).saturating_sub(50);
            let (t, _) = target
                .get(&format!("/sms?clientId={client}&limit=50&offset={offset}"))
                .await;
            vec![t]
        }
        Request::Cursor(clients) => {
            let (client, _) = work.client(clients, i);
            let (first, body) = target
                .get(&format!("/sms?clientId={client}&limit=50&cursor="))
                .await;
            let page: Value = serde_json::from_slice(&body).expect("JSON page");
            match page["nextCursor"].as_str() {
                Some(cursor) => {
                    let (second, _) = target
                        .get(&format!("/sms?clientId={client}&limit=50&cursor={cursor}"))
                        .await;
                    vec![first, second]
                }
                None => vec![first],
            }
        }
        Request::ById => {
            let id = work.message_ids[i % work.message_ids.len()];
            let (t, _) = target.get(&format!("/sms/{id}")).await;
            vec![t]
        }
    }
}

/// Runs a scenario: `requests()` work items (or `TIME_BUDGET`), `in_flight` at a time.
async fn run(target: &Arc<Target>, work: &Arc<Workload>, scenario: &Scenario) -> Summary {
    let total = requests();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + TIME_BUDGET;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..scenario.in_flight {
        let (target, work, next) = (target.clone(), work.clone(), next.clone());
        let request = scenario.request;
        workers.spawn(async move {
            let mut timings = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    return timings;
                }
                timings.extend(run_item(&target, &work, request, i).await);
            }
        });
    }
    let mut timings = Vec::with_capacity(total);
    while let Some(done) = workers.join_next().await {
        timings.extend(done.expect("worker"));
    }
    summarize(&timings, started.elapsed())
}

/// Checks the answers are what a screen would show before timing anything.
async fn sanity(target: &Target, work: &Workload) {
    let (heavy, count) = work.heaviest[0];
    let (_, body) = target.get(&format!("/sms?clientId={heavy}&limit=50")).await;
    let page: Value = serde_json::from_slice(&body).expect("JSON page");
    assert_eq!(page["totalFilteredRecords"], count);
    let items = page["pageItems"].as_array().expect("pageItems");
    assert_eq!(items.len(), 50);
    assert!(items.iter().all(|i| i["clientId"] == heavy));
    let (_, body) = target.get("/sms/1").await;
    let detail: Value = serde_json::from_slice(&body).expect("JSON detail");
    assert!(
        !detail["statusHistory"]
            .as_array()
            .expect("history")
            .is_empty()
    );
}

async fn warm_up(target: &Target, work: &Workload) {
    for i in 0..WARM_UP {
        let request = match i % 4 {
            0 => Request::Offset(Clients::Uniform),
            1 => Request::Cursor(Clients::Uniform),
            2 => Request::OffsetDesc(Clients::Uniform),
            _ => Request::ById,
        };
        run_item(target, work, request, i + 7).await;
    }
}

/// Fills the table; returns how long it took.
async fn seed(db: &TestDb) -> Duration {
    let started = Instant::now();
    sqlx::raw_sql(include_str!("seed.sql"))
        .execute(&db.pool)
        .await
        .expect("seed.sql");
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(&db.pool)
        .await
        .expect("vacuum analyze");
    started.elapsed()
}

pub async fn bench() {
    let db = TestDb::new().await;
    println!("\nseeding 1,000,000 messages (tests/bench/seed.sql) ...");
    let took = seed(&db).await;
    let (rows, size, attempts, events): (i64, String, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sms), pg_size_pretty(pg_total_relation_size('sms')),
                (SELECT count(*) FROM sms_attempt), (SELECT count(*) FROM sms_event)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("sizes");
    println!(
        "seeded in {:.0}s: sms {rows} rows ({size} with indexes), sms_attempt {attempts}, sms_event {events}",
        took.as_secs_f64()
    );
    println!("{}", crate::stats::environment(&db.pool).await);
    let work = Arc::new(Workload::load(&db).await);
    println!(
        "heaviest clients (id: messages): {}",
        work.heaviest
            .iter()
            .take(6)
            .map(|(id, n)| format!("{id}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let seq = |request| Scenario {
        request,
        in_flight: 1,
    };
    let par = |request| Scenario {
        request,
        in_flight: 8,
    };
    let default_plans = [
        seq(Request::Offset(Clients::ByActivity)),
        par(Request::Offset(Clients::ByActivity)),
        seq(Request::Offset(Clients::Uniform)),
        seq(Request::Offset(Clients::Heaviest)),
        par(Request::Offset(Clients::Heaviest)),
        seq(Request::OffsetDesc(Clients::ByActivity)),
        seq(Request::OffsetDesc(Clients::Heaviest)),
        seq(Request::LastPage(Clients::Heaviest)),
        seq(Request::Cursor(Clients::ByActivity)),
        seq(Request::Cursor(Clients::Heaviest)),
        seq(Request::ById),
        par(Request::ById),
    ];
    let custom_plans = [
        seq(Request::Offset(Clients::ByActivity)),
        seq(Request::Offset(Clients::Heaviest)),
        seq(Request::OffsetDesc(Clients::Heaviest)),
        seq(Request::Cursor(Clients::Heaviest)),
    ];

    let mut table = Table::new(&[
        "scenario",
        "plans",
        "in flight",
        "requests",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "req/s",
    ]);
    for (plans, scenarios, store) in [
        ("default", &default_plans[..], db.store()),
        ("custom", &custom_plans[..], custom_plan_store(&db).await),
    ] {
        let target = Arc::new(Target::start(&db, store).await);
        sanity(&target, &work).await;
        warm_up(&target, &work).await;
        for scenario in scenarios {
            let s = run(&target, &work, scenario).await;
            let label = scenario.request.label();
            println!(
                "{label} [{plans} plans, {} in flight]: p50 {} p99 {} ms, {:.0} req/s",
                scenario.in_flight,
                ms(s.p50),
                ms(s.p99),
                s.per_second
            );
            table.row(vec![
                label,
                plans.into(),
                scenario.in_flight.to_string(),
                s.count.to_string(),
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max),
                format!("{:.0}", s.per_second),
            ]);
        }
        if let Ok(target) = Arc::try_unwrap(target) {
            target.stop().await;
        }
    }
    println!(
        "\nAPI latency, 1,000,000 rows, limit=50, loopback HTTP, client in the same process:\n\n{}",
        table.render()
    );
}

/// A second pool on the bench database whose sessions always plan for the actual parameters.
async fn custom_plan_store(db: &TestDb) -> Arc<dyn Store> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} SET plan_cache_mode = force_custom_plan",
        db.name
    )))
    .execute(&db.pool)
    .await
    .expect("set plan_cache_mode");
    let store = PgStore::open(&options(&db.url)).expect("pool");
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(store.pool())
        .await
        .expect("plan_cache_mode");
    assert_eq!(mode, "force_custom_plan");
    Arc::new(store)
}
