//! Persistence of the outbox behind one trait; each database's SQL lives with
//! its dialect (`postgres.rs`), commented where the dialect forces a shape.

pub mod postgres;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{AttemptRecord, ClaimedSms, EventRecord, NewSms, Outcome, SmsRecord};

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke; worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else the database refused.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("unsupported database URL scheme {0:?} (expected postgres://)")]
    UnsupportedUrl(String),
    #[error("row {id}: {message}")]
    BadRow { id: i64, message: String },
}

impl StoreError {
    /// Whether waiting and trying again can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e),
            sqlx::Error::Database(ref db) if is_unavailable_code(db.code().as_deref()) => {
                StoreError::Unavailable(e)
            }
            other => StoreError::Database(other),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        // A connection lost while migrating is an outage, not a broken migration.
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => match StoreError::from(inner) {
                StoreError::Database(inner) => {
                    StoreError::Migrate(sqlx::migrate::MigrateError::Execute(inner))
                }
                other => other,
            },
            other => StoreError::Migrate(other),
        }
    }
}

/// SQLSTATE classes that mean "the server is going away or not accepting us now".
fn is_unavailable_code(code: Option<&str>) -> bool {
    matches!(code, Some(c) if c.starts_with("08") || c.starts_with("57P") || c == "55000" || c == "53300")
}

/// What a claim returned.
#[derive(Debug, Default)]
pub struct Claim {
    /// Rows now `sending` under our lease.
    pub messages: Vec<ClaimedSms>,
    /// Pending rows found past `expires_at` and moved to `failed`.
    pub expired: u64,
}

/// What a batch of outcome writes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecordReport {
    pub applied: u64,
    /// Outcomes refused by the fence: the row was no longer ours.
    pub stale: u64,
}

/// Result of one reaper run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReapReport {
    /// Returned to `pending`.
    pub requeued: u64,
    /// Moved to `failed`: their last allowed attempt was abandoned.
    pub failed: u64,
    /// Another instance held the reaper lock; nothing was done.
    pub skipped: bool,
}

/// The outbox as the daemon needs it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies the embedded migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// In one short transaction: fails expired pending rows, then claims up to
    /// `batch_size` due rows for `instance` with a lease of `lease`, bumping the
    /// attempt and writing the attempt and event rows.
    async fn claim(
        &self,
        instance: &str,
        batch_size: u32,
        lease: Duration,
    ) -> Result<Claim, StoreError>;

    /// Writes outcomes in one statement; each applies only while the row is
    /// still `sending` with that attempt under `instance`'s lease.
    async fn record_outcomes(
        &self,
        instance: &str,
        outcomes: &[Outcome],
    ) -> Result<RecordReport, StoreError>;

    /// Hands claimed rows that were never sent back to `pending`, undoing their attempt.
    async fn release(&self, instance: &str, claims: &[(i64, u32)]) -> Result<u64, StoreError>;

    /// Returns rows whose lease expired to `pending` (or `failed` when that was
    /// their last attempt), marking the open attempt `abandoned`. Runs in one
    /// instance at a time.
    async fn reap_expired_leases(
        &self,
        max_attempts: u32,
        limit: u32,
    ) -> Result<ReapReport, StoreError>;

    /// Inserts a new pending message, as the platform would.
    async fn enqueue(&self, sms: &NewSms) -> Result<i64, StoreError>;

    /// One message.
    async fn get(&self, id: i64) -> Result<Option<SmsRecord>, StoreError>;

    /// A message's attempts, oldest first.
    async fn attempts(&self, id: i64) -> Result<Vec<AttemptRecord>, StoreError>;

    /// A message's status transitions, oldest first.
    async fn events(&self, id: i64) -> Result<Vec<EventRecord>, StoreError>;
}

/// Opens the store the URL names (without connecting eagerly).
pub fn open(
    url: &str,
    pool_size: u32,
    connect_timeout: Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "postgres" | "postgresql" => Ok(Arc::new(postgres::PgStore::connect_lazy(
            url,
            pool_size,
            connect_timeout,
        )?)),
        other => Err(StoreError::UnsupportedUrl(other.to_owned())),
    }
}
