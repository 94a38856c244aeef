//! What a pool sets on every session it opens: the name the database shows
//! for it, and, for the API's pools, a statement timeout, so that the
//! database itself cuts off a slow API query instead of letting it hold a
//! connection. The dispatcher and the API never share a pool (see
//! `app.rs`); this is how each pool says who it is and what it may spend.
//!
//! Per dialect:
//! - PostgreSQL: `SET statement_timeout` on each new connection; a query cut
//!   off fails with SQLSTATE 57014. `application_name` names the pool in
//!   `pg_stat_activity` unless the URL (or `PGAPPNAME`) already names it.
//! - MariaDB: `SET SESSION max_statement_time` (seconds, any statement;
//!   error 1969). MySQL: `SET SESSION max_execution_time` (milliseconds,
//!   read-only SELECTs only; error 3024). Which one is decided from `VERSION()`.
//! - SQLite has no server to cut a query off: each statement of an API pool
//!   runs under a progress handler that interrupts it once the deadline has
//!   passed (SQLITE_INTERRUPT, code 9).

use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Executor, Sqlite};

use super::StoreError;

/// What a pool sets on each of its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Shown as PostgreSQL's `application_name` when the URL sets none.
    pub name: &'static str,
    /// Longest a statement may run; `None`: as long as the database lets it.
    pub statement_timeout: Option<Duration>,
}

impl Session {
    /// The dispatcher's pool: claim, record, renew, reap. No statement
    /// timeout: the API's limit is for the API's queries.
    pub fn dispatcher() -> Self {
        Session {
            name: "smsrelay",
            statement_timeout: None,
        }
    }

    /// The API's pool on the primary: POST /sms, delivery reports, readiness.
    pub fn api(statement_timeout: Duration) -> Self {
        Session {
            name: "smsrelay-api",
            statement_timeout: Some(statement_timeout),
        }
    }

    /// The API's pool on `database.read_url`: GET /sms, GET /sms/{id}, /metrics.
    pub fn api_reads(statement_timeout: Duration) -> Self {
        Session {
            name: "smsrelay-api-reads",
            statement_timeout: Some(statement_timeout),
        }
    }
}

impl Default for Session {
    fn default() -> Self {
        Session::dispatcher()
    }
}

impl StoreError {
    /// Whether the database cut the statement off at the pool's statement
    /// timeout (PostgreSQL 57014, MariaDB 1969, MySQL 3024, SQLite interrupt).
    pub fn is_statement_timeout(&self) -> bool {
        let (StoreError::Unavailable(sqlx::Error::Database(db))
        | StoreError::Database(sqlx::Error::Database(db))) = self
        else {
            return false;
        };
        if let Some(mysql) = db.try_downcast_ref::<MySqlDatabaseError>() {
            return matches!(mysql.number(), 1969 | 3024);
        }
        matches!(db.code().as_deref(), Some("57014" | "9"))
    }
}

/// PostgreSQL connect options for `url`, named after the pool unless the URL names itself.
pub(super) fn postgres_options(
    url: &str,
    session: &Session,
) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(session.name),
    })
}

/// Applies the statement timeout to a new PostgreSQL connection.
pub(super) async fn postgres_after_connect(
    conn: &mut PgConnection,
    session: &Session,
) -> Result<(), sqlx::Error> {
    if let Some(limit) = session.statement_timeout {
        // A number from the config, never request input.
        let sql = format!("SET statement_timeout = {}", limit.as_millis().max(1));
        conn.execute(AssertSqlSafe(sql)).await?;
    }
    Ok(())
}

/// Applies the statement timeout to a new MariaDB / MySQL connection.
pub(super) async fn mysql_after_connect(
    conn: &mut MySqlConnection,
    session: &Session,
) -> Result<(), sqlx::Error> {
    let Some(limit) = session.statement_timeout else {
        return Ok(());
    };
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut *conn)
        .await?;
    let sql = if version.to_ascii_lowercase().contains("mariadb") {
        format!(
            "SET SESSION max_statement_time = {:.3}",
            limit.as_secs_f64().max(0.001)
        )
    } else {
        format!(
            "SET SESSION max_execution_time = {}",
            limit.as_millis().max(1)
        )
    };
    conn.execute(AssertSqlSafe(sql)).await?;
    Ok(())
}

/// How many SQLite virtual-machine steps pass between two deadline checks:
/// well under a millisecond of work, so the check costs nothing noticeable.
const SQLITE_CHECK_EVERY: i32 = 1_000;

/// Runs `query` on a connection of `pool`, interrupted by SQLite once
/// `limit` has passed (the error then has code 9, SQLITE_INTERRUPT).
pub(super) async fn sqlite_fetch_within<'q>(
    pool: &SqlitePool,
    query: sqlx::query::Query<'q, Sqlite, SqliteArguments>,
    limit: Duration,
) -> Result<Vec<SqliteRow>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let deadline = Instant::now() + limit;
    conn.lock_handle()
        .await?
        .set_progress_handler(SQLITE_CHECK_EVERY, move || Instant::now() < deadline);
    let rows = query.fetch_all(&mut *conn).await;
    conn.lock_handle().await?.remove_progress_handler();
    rows
}

/// Run when a connection goes back to the pool: a deadline left behind by a
/// cancelled request must not interrupt the next statement.
pub(super) async fn sqlite_after_release(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    conn.lock_handle().await?.remove_progress_handler();
    Ok(true)
}
