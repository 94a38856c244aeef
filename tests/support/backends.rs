//! One fresh, migrated store per test on any of the three databases:
//! a new SQLite file in a temp dir, a new PostgreSQL database on `DATABASE_URL`,
//! or a new MariaDB/MySQL database on `MYSQL_URL`; each removed afterwards.
//!
//! SQLite always runs. When PostgreSQL or MariaDB cannot be reached the test
//! prints a note and passes, except with `CI=true`, where it fails:
//! tests/run.sh provisions both, so in CI an unreachable backend is a bug.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use smsrelay::store::{DirectoryQueries, Store, StoreOptions};
use sqlx::mysql::MySqlPool;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, MySqlConnection, PgConnection};
use time::OffsetDateTime;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
            Backend::MySql => "MariaDB/MySQL",
        }
    }
}

/// Admin URL of the PostgreSQL server (tests/run.sh exports it).
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Admin URL of the MariaDB/MySQL server (tests/run.sh exports it).
pub fn mysql_admin_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Replaces the database name (the URL path) of a server URL.
pub fn with_database(url: &str, name: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("database URL is a URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// A value for the raw SQL helpers, bound the way each dialect stores it.
#[derive(Debug, Clone)]
pub enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    /// A time: TIMESTAMPTZ / DATETIME(6), or epoch milliseconds on SQLite.
    Time(Option<OffsetDateTime>),
}

pub fn int(v: i64) -> Arg {
    Arg::Int(Some(v))
}
pub fn text(v: impl Into<String>) -> Arg {
    Arg::Text(Some(v.into()))
}
pub fn time(v: OffsetDateTime) -> Arg {
    Arg::Time(Some(v))
}
pub const NULL_INT: Arg = Arg::Int(None);
pub const NULL_TEXT: Arg = Arg::Text(None);
pub const NULL_TIME: Arg = Arg::Time(None);

/// The pool under a test store, for raw SQL.
#[derive(Clone)]
pub enum Pool {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

enum Cleanup {
    PostgresDb(String),
    MySqlDb(String),
    Dir(PathBuf),
}

/// A fresh database with the outbox schema and a store on it.
pub struct TestStore {
    pub backend: Backend,
    pub url: String,
    pub store: Arc<dyn Store>,
    pub pool: Pool,
    cleanup: Cleanup,
}

/// Store options for a test database URL.
pub fn options(url: &str) -> StoreOptions {
    StoreOptions {
        url: url.to_owned(),
        pool_size: 10,
        connect_timeout: Duration::from_secs(5),
        directory: DirectoryQueries::default(),
        session: Default::default(),
    }
}

/// `$1, $2, ...` placeholders in the dialect's form. MySQL's are positional,
/// so there each `$n` must appear once and in order.
pub fn placeholders(backend: Backend, sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut expected = 1;
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            let mut n = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(*d);
                chars.next();
            }
            match backend {
                Backend::Postgres => out.push_str(&format!("${n}")),
                Backend::Sqlite => out.push_str(&format!("?{n}")),
                Backend::MySql => {
                    assert_eq!(
                        n,
                        expected.to_string(),
                        "MySQL placeholders in order: {sql}"
                    );
                    expected += 1;
                    out.push('?');
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

macro_rules! bind_all {
    ($query:expr, $args:expr, $time:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
                Arg::Time(v) => q.bind(v.map($time)),
            };
        }
        q
    }};
}

fn same(t: OffsetDateTime) -> OffsetDateTime {
    t
}

impl TestStore {
    /// A migrated store on `backend`, or None when that server is not
    /// reachable outside CI.
    pub async fn new(backend: Backend) -> Option<TestStore> {
        let db = Self::unmigrated(backend).await?;
        db.store.migrate().await.expect("migrations apply");
        Some(db)
    }

    /// Like `new`, without running the migrations.
    pub async fn unmigrated(backend: Backend) -> Option<TestStore> {
        let name = format!("smsrelay_test_{:016x}", rand::random::<u64>());
        let (url, cleanup) = match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).expect("temp dir");
                let path = dir.join("smsrelay.db");
                (format!("sqlite://{}", path.display()), Cleanup::Dir(dir))
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = reachable(backend, &admin, PgConnection::connect(&admin)).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                conn.close().await.ok();
                (with_database(&admin, &name), Cleanup::PostgresDb(name))
            }
            Backend::MySql => {
                let admin = mysql_admin_url();
                let mut conn = reachable(backend, &admin, MySqlConnection::connect(&admin)).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE {name} CHARACTER SET utf8mb4"
                )))
                .execute(&mut conn)
                .await
                .expect("create test database");
                conn.close().await.ok();
                (with_database(&admin, &name), Cleanup::MySqlDb(name))
            }
        };
        let store = smsrelay::store::open(&options(&url)).expect("store opens");
        let pool = Self::raw_pool(backend, &url).await;
        Some(TestStore {
            backend,
            url,
            store,
            pool,
            cleanup,
        })
    }

    async fn raw_pool(backend: Backend, url: &str) -> Pool {
        match backend {
            Backend::Postgres => Pool::Postgres(PgPool::connect_lazy(url).expect("pg pool")),
            Backend::MySql => Pool::MySql(MySqlPool::connect_lazy(url).expect("mysql pool")),
            Backend::Sqlite => {
                let options: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("sqlite url");
                Pool::Sqlite(SqlitePool::connect_lazy_with(
                    options
                        .create_if_missing(true)
                        .busy_timeout(Duration::from_secs(5)),
                ))
            }
        }
    }

    /// A second store on the same database with its own pool, as another
    /// smsrelay process (or host) would have.
    pub fn another_store(&self) -> Arc<dyn Store> {
        smsrelay::store::open(&options(&self.url)).expect("store opens")
    }

    /// A store on the same database with custom directory queries.
    pub fn store_with_directory(&self, directory: DirectoryQueries) -> Arc<dyn Store> {
        let mut options = options(&self.url);
        options.directory = directory;
        smsrelay::store::open(&options).expect("store opens")
    }

    /// Runs raw SQL written with `$n` placeholders; returns rows affected.
    pub async fn try_exec(&self, sql: &str, args: &[Arg]) -> Result<u64, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(placeholders(self.backend, sql));
        Ok(match &self.pool {
            Pool::Postgres(pool) => bind_all!(sqlx::query(sql), args, same)
                .execute(pool)
                .await?
                .rows_affected(),
            Pool::MySql(pool) => bind_all!(sqlx::query(sql), args, same)
                .execute(pool)
                .await?
                .rows_affected(),
            Pool::Sqlite(pool) => bind_all!(sqlx::query(sql), args, smsrelay::store::sqlite::to_ms)
                .execute(pool)
                .await?
                .rows_affected(),
        })
    }

    pub async fn exec(&self, sql: &str, args: &[Arg]) -> u64 {
        self.try_exec(sql, args)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs an INSERT into a table with an `id` key and returns the new id.
    pub async fn try_insert(&self, sql: &str, args: &[Arg]) -> Result<i64, sqlx::Error> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let sql = sqlx::AssertSqlSafe(format!(
                    "{} RETURNING id",
                    placeholders(self.backend, sql)
                ));
                bind_all!(sqlx::query_scalar(sql), args, same)
                    .fetch_one(pool)
                    .await
            }
            // MySQL has no INSERT ... RETURNING (MariaDB does, MySQL 8 does not).
            Pool::MySql(pool) => {
                let sql = sqlx::AssertSqlSafe(placeholders(self.backend, sql));
                let done = bind_all!(sqlx::query(sql), args, same)
                    .execute(pool)
                    .await?;
                Ok(i64::try_from(done.last_insert_id()).expect("id fits"))
            }
            Pool::Sqlite(pool) => {
                let sql = sqlx::AssertSqlSafe(format!(
                    "{} RETURNING id",
                    placeholders(self.backend, sql)
                ));
                bind_all!(
                    sqlx::query_scalar(sql),
                    args,
                    smsrelay::store::sqlite::to_ms
                )
                .fetch_one(pool)
                .await
            }
        }
    }

    pub async fn insert_row(&self, sql: &str, args: &[Arg]) -> i64 {
        self.try_insert(sql, args)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A message for a client, INSERTed exactly as the outbox contract says.
    pub async fn insert(&self, client_id: i64, mobile_no: &str, message: &str) -> i64 {
        self.insert_row(
            "INSERT INTO sms (client_id, mobile_no, message) VALUES ($1, $2, $3)",
            &[int(client_id), text(mobile_no), text(message)],
        )
        .await
    }

    /// A single integer (e.g. a count) from raw SQL.
    pub async fn count(&self, sql: &str, args: &[Arg]) -> i64 {
        let sql_text = placeholders(self.backend, sql);
        let sql = sqlx::AssertSqlSafe(sql_text.clone());
        let result = match &self.pool {
            Pool::Postgres(pool) => {
                bind_all!(sqlx::query_scalar::<_, i64>(sql), args, same)
                    .fetch_one(pool)
                    .await
            }
            Pool::MySql(pool) => {
                bind_all!(sqlx::query_scalar::<_, i64>(sql), args, same)
                    .fetch_one(pool)
                    .await
            }
            Pool::Sqlite(pool) => {
                bind_all!(
                    sqlx::query_scalar::<_, i64>(sql),
                    args,
                    smsrelay::store::sqlite::to_ms
                )
                .fetch_one(pool)
                .await
            }
        };
        result.unwrap_or_else(|e| panic!("{sql_text}: {e}"))
    }

    /// The status of one row, read with raw SQL.
    pub async fn status(&self, id: i64) -> String {
        let sql = "SELECT status FROM sms WHERE id = $1";
        let sql = sqlx::AssertSqlSafe(placeholders(self.backend, sql));
        match &self.pool {
            Pool::Postgres(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await,
            Pool::MySql(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await,
            Pool::Sqlite(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await,
        }
        .expect("status")
    }

    /// Rows in `status`.
    pub async fn count_status(&self, status: &str) -> i64 {
        self.count(
            "SELECT count(*) FROM sms WHERE status = $1",
            &[text(status)],
        )
        .await
    }

    /// The database's clock as smsrelay reads it: `now()` on PostgreSQL,
    /// `UTC_TIMESTAMP(6)` on MySQL, the host clock for SQLite.
    pub async fn now(&self) -> OffsetDateTime {
        match &self.pool {
            Pool::Postgres(pool) => sqlx::query_scalar("SELECT now()")
                .fetch_one(pool)
                .await
                .expect("now()"),
            Pool::MySql(pool) => sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
                .fetch_one(pool)
                .await
                .expect("UTC_TIMESTAMP(6)"),
            Pool::Sqlite(_) => OffsetDateTime::now_utc(),
        }
    }

    /// (from, to, reason) of every transition of a message, oldest first.
    pub async fn transitions(&self, id: i64) -> Vec<(String, String, String)> {
        self.store
            .events(id)
            .await
            .expect("events")
            .into_iter()
            .map(|e| {
                (
                    e.from_status.as_str().to_owned(),
                    e.to_status.as_str().to_owned(),
                    e.reason,
                )
            })
            .collect()
    }
}

/// Connects, or reports an unreachable server: a note outside CI, a failure in CI.
async fn reachable<C, F>(backend: Backend, url: &str, connect: F) -> Option<C>
where
    F: std::future::Future<Output = Result<C, sqlx::Error>>,
{
    let error = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(conn)) => return Some(conn),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "connection timed out".to_owned(),
    };
    if in_ci() {
        panic!(
            "{} is not reachable at {url} ({error}); with CI=true an unreachable backend fails the suite (run tests/run.sh, which provisions it)",
            backend.name()
        );
    }
    eprintln!(
        "note: skipped on {}: not reachable at {url} ({error}); tests/run.sh provisions it",
        backend.name()
    );
    None
}

impl Drop for TestStore {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            // Async drop does not exist: drop the database from a helper thread
            // with its own runtime (the test's runtime is blocked in this drop).
            Cleanup::PostgresDb(name) => {
                let name = name.clone();
                on_helper_thread(async move {
                    if let Ok(mut conn) = PgConnection::connect(&postgres_admin_url()).await {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            }
            Cleanup::MySqlDb(name) => {
                let name = name.clone();
                on_helper_thread(async move {
                    let Ok(mut conn) = MySqlConnection::connect(&mysql_admin_url()).await else {
                        return;
                    };
                    // MySQL's DROP DATABASE has no FORCE: end this test's
                    // sessions first so none of them holds a lock the DROP waits on.
                    let sessions: Vec<u64> = sqlx::query_scalar(
                        "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
                    )
                    .bind(&name)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
                    for id in sessions {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
                            .execute(&mut conn)
                            .await;
                    }
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name}"
                    )))
                    .execute(&mut conn)
                    .await;
                });
            }
        }
    }
}

fn on_helper_thread<F: std::future::Future<Output = ()> + Send + 'static>(work: F) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(work);
    })
    .join();
}
