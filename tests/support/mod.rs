//! Shared test helpers: a fresh PostgreSQL database per test, a wiremock
//! provider on loopback, and a dispatcher wired to both.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use smsrelay::Config;
use smsrelay::dispatch::Dispatcher;
use smsrelay::provider::webhook::WebhookProvider;
use smsrelay::provider::{Provider, ProviderKind};
use smsrelay::store::postgres::PgStore;
/// The store's parts, so that tests call their methods on a concrete store.
#[allow(unused_imports)]
pub use smsrelay::store::{Directory, Leases, Messages, OptOuts, Queue, Reports, Schema};
use smsrelay::store::{Store, StoreOptions};
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use wiremock::MockServer;

/// The admin URL of the PostgreSQL server the tests use (tests/run.sh provides one).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Replaces the database name (the URL path) in a PostgreSQL URL.
pub fn with_database(url: &str, name: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("DATABASE_URL is a URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// Store options for a test database URL, with Fineract's directory tables.
pub fn options(url: &str) -> StoreOptions {
    StoreOptions {
        url: url.to_owned(),
        pool_size: 10,
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(10),
        directory: Default::default(),
        session: Default::default(),
    }
}

/// A fresh, migrated database, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub store: Arc<PgStore>,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at DATABASE_URL ({e}); run the tests with tests/run.sh, which starts one")
        });
        let name = format!("smsrelay_test_{:016x}", rand::random::<u64>());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let url = with_database(&admin, &name);
        let store = PgStore::open(&options(&url)).expect("pool");
        store.migrate().await.expect("migrations apply");
        let pool = store.pool().clone();
        TestDb {
            name,
            url,
            store: Arc::new(store),
            pool,
        }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Inserts a client message exactly as the platform would (the README's statement).
    pub async fn insert(&self, client_id: i64, mobile_no: &str, message: &str) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO sms (client_id, mobile_no, message) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(client_id)
        .bind(mobile_no)
        .bind(message)
        .fetch_one(&self.pool)
        .await
        .expect("insert sms")
    }

    /// Status of one row.
    pub async fn status(&self, id: i64) -> String {
        sqlx::query_scalar("SELECT status FROM sms WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("status")
    }

    /// Number of rows per status.
    pub async fn count(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM sms WHERE status = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// (from, to) of every transition of a message, oldest first.
    pub async fn transitions(&self, id: i64) -> Vec<(String, String)> {
        sqlx::query_as("SELECT from_status, to_status FROM sms_event WHERE sms_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .expect("events")
    }

    /// Cuts every connection to this database and refuses new ones until `restore`.
    pub async fn cut(&self) {
        let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {0} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
            self.name
        )))
        .execute(&mut admin)
        .await
        .expect("cut database");
    }

    /// Lets connections in again after `cut`.
    pub async fn restore(&self) {
        let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        )))
        .execute(&mut admin)
        .await
        .expect("restore database");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Async drop does not exist: drop the database from a helper thread with its own runtime.
        // WITH (FORCE) ends this test's own pooled sessions; closing the pool here
        // instead would wait on the test's (now blocked) runtime.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A loopback port free right now, for an API listener the test calls back.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A config for tests: webhook provider at `provider_url`, fast retries.
pub fn test_config(db: &TestDb, provider_url: &str) -> Config {
    let mut config = Config::default();
    config.database.url = Some(smsrelay::secrets::Secret::new(db.url.clone()));
    config.provider.kind = ProviderKind::Webhook;
    config.provider.webhook.url = Some(provider_url.to_owned());
    config.provider.timeout = Duration::from_secs(5);
    config.dispatch.instance_id = Some("test-1".into());
    config.dispatch.poll_interval = Duration::from_millis(50);
    config.dispatch.backoff_initial = Duration::from_millis(10);
    config.dispatch.backoff_max = Duration::from_millis(50);
    config.dispatch.lease = Duration::from_secs(30);
    config.validation.default_region = Some("KE".into());
    // Tests configure their own tokens; never leave a dev token file in the repository.
    config.api.dev_token_file = std::path::PathBuf::new();
    config.validate().expect("test config is valid");
    config
}

/// The webhook provider pointed at a mock server.
pub fn webhook(config: &Config) -> Arc<dyn Provider> {
    Arc::new(
        WebhookProvider::from_settings(&config.provider.webhook, &config.provider.instance())
            .expect("webhook provider"),
    )
}

/// A dispatcher on the test database and mock provider.
pub fn dispatcher(db: &TestDb, config: &Config) -> Dispatcher {
    let app = smsrelay::app::Application::from_parts(config, db.store(), webhook(config));
    Arc::try_unwrap(app.dispatcher).unwrap_or_else(|_| panic!("dispatcher is not shared yet"))
}

/// A mock provider that accepts everything, answering `{"id": "prov-<sms id>"}`.
pub async fn accepting_provider() -> MockServer {
    let server = MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(AcceptWithId)
        .mount(&server)
        .await;
    server
}

/// Replies 200 with a provider id derived from the request's `id`.
pub struct AcceptWithId;

impl wiremock::Respond for AcceptWithId {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        wiremock::ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({ "id": format!("prov-{}", body["id"]) }))
    }
}

/// The `id`s of every request the mock received, in arrival order.
pub async fn received_ids(server: &MockServer) -> Vec<i64> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter_map(|v| v["id"].as_i64())
        .collect()
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}
