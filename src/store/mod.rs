//! Persistence of the outbox. [`Store`] is eight small traits by who uses
//! them: [`Queue`] (the dispatcher's claim and record), [`Leases`] (release
//! at shutdown, the reaper), [`Messages`] (API and platform), [`Directory`],
//! [`Schema`], [`Reports`] (providers' delivery reports), [`OptOuts`]
//! (unsubscribed recipients) and [`Retention`] (deleting old finished messages). What is the same on every database is
//! written once: `query.rs` builds the list queries, `rows.rs` maps rows,
//! `batch.rs` carries batches as one JSON parameter, `reports.rs` holds what
//! a delivery report does (also one kept until its send's outcome), and `backend.rs`
//! implements `Messages`, `Directory`, `Schema` and `OptOuts` for any dialect
//! from a few primitives. Each dialect file (`postgres.rs`, `mysql.rs`, `sqlite.rs`)
//! keeps only its SQL, its binding, its `Queue` and `Leases`, with a header saying where
//! it differs and why. `open()` picks the dialect from the URL scheme.

mod backend;
mod batch;
mod deadline;
mod errors;
mod layered;
pub mod mysql;
mod pg_wakeups;
pub mod postgres;
mod query;
mod reports;
mod rows;
mod session;
pub mod settings;
pub mod sqlite;
mod wakeups;

pub use backend::{OVERDUE_CAP, QUEUE_COUNTS};
pub use layered::with_queue;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use session::Session;
pub use settings::{DEFAULT_DATABASE_URL, DatabaseSettings};
pub use wakeups::Waiter;

use errors::Meaning;

pub use crate::domain::outcome::ReleaseReason;

use crate::domain::opt_out::OptOutKey;
use crate::domain::outcome::Guarantee;
use crate::domain::report::{DeliveryReport, ReportApplied};
use crate::domain::{
    AttemptRecord, ClaimedSms, EventRecord, NewSms, Outcome, Recipient, SmsRecord, Status,
};

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, the connection broke, or the
    /// server cannot take writes now (read-only after a failover); worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The statement lost a race or ran out of time (lock wait, deadlock,
    /// serialization failure, statement timeout, SQLite's write lock);
    /// running it again can succeed.
    #[error("database busy: {0}")]
    Contended(sqlx::Error),
    /// A call took longer than `database.call_timeout`; its connection was
    /// closed rather than reused. Counts as the database being unavailable.
    #[error(
        "database call timed out after {} (database.call_timeout); its connection was closed",
        humantime::format_duration(*.0)
    )]
    TimedOut(Duration),
    /// The database refuses a value (a NUL byte, a string too long for its
    /// column, a character its encoding lacks): this statement will never succeed.
    #[error("database refused a value: {0}")]
    Refused(sqlx::Error),
    /// Anything else the database refused.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error(
        "unsupported database URL scheme {0:?} (expected postgres://, postgresql://, mysql://, mariadb:// or sqlite://)"
    )]
    UnsupportedUrl(String),
    /// This database cannot hold the outbox (a server too old for the SQL
    /// smsrelay needs, an in-memory SQLite database); the message says why.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Directory(String),
    #[error("row {id}: {message}")]
    BadRow { id: i64, message: String },
}

impl StoreError {
    /// Whether waiting and trying again can help: an outage, a lost race, a timeout.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Contended(_) | StoreError::TimedOut(_)
        )
    }

    /// Whether the database refused a value of the statement: the same
    /// statement will never succeed, the same data without that value may.
    pub fn is_refused_value(&self) -> bool {
        matches!(self, StoreError::Refused(_))
    }

    /// Whether the connection that got this error must not be used again:
    /// it timed out (it may be stuck for minutes) or its server went read-only.
    fn discards_connection(&self) -> bool {
        match self {
            StoreError::TimedOut(_) => true,
            StoreError::Unavailable(e) => errors::read_only(e),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match errors::meaning(&e) {
            Meaning::Unavailable => StoreError::Unavailable(e),
            Meaning::Contended => StoreError::Contended(e),
            Meaning::Refused => StoreError::Refused(e),
            Meaning::Other => StoreError::Database(e),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        // A connection lost while migrating is an outage, not a broken migration.
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => match StoreError::from(inner) {
                StoreError::Database(inner) | StoreError::Refused(inner) => {
                    StoreError::Migrate(sqlx::migrate::MigrateError::Execute(inner))
                }
                other => other,
            },
            other => StoreError::Migrate(other),
        }
    }
}

/// What a claim returned.
#[derive(Debug, Default)]
pub struct Claim {
    /// Rows now `sending` under our lease.
    pub messages: Vec<ClaimedSms>,
    /// Pending rows found past `expires_at` and moved to `failed` by this claim's sweep.
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
    /// Moved to `delivered` / `undelivered`: a delivery report kept for them
    /// shows the provider took the abandoned attempt (neither sent again nor failed).
    pub reported: u64,
    /// Another instance held the reaper lock; nothing was done.
    pub skipped: bool,
}

/// Result of one retention batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    /// Finished messages deleted.
    pub messages: u64,
    /// Their `sms_attempt` rows deleted.
    pub attempts: u64,
    /// Their `sms_event` rows deleted.
    pub events: u64,
    /// Another instance held the retention lock; nothing was done.
    pub skipped: bool,
}

/// The states a message never leaves (but `sent`, which only a delivery
/// report moves): what retention may delete. An SQL list, for `concat!` in
/// each dialect's statement; the partial indexes of migration 0009 say the same.
macro_rules! finished_statuses {
    () => {
        "('sent', 'delivered', 'undelivered', 'declined', 'failed')"
    };
}
pub(crate) use finished_statuses;

/// Columns `GET /sms` may order by, each mapped to fixed SQL (never user text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderBy {
    #[default]
    Id,
    CreatedAt,
    UpdatedAt,
    SentAt,
    Status,
    ClientId,
    StaffId,
}

impl OrderBy {
    /// The SQL column, the same in every dialect.
    pub fn column(self) -> &'static str {
        match self {
            OrderBy::Id => "id",
            OrderBy::CreatedAt => "created_at",
            OrderBy::UpdatedAt => "updated_at",
            OrderBy::SentAt => "sent_at",
            OrderBy::Status => "status",
            OrderBy::ClientId => "client_id",
            OrderBy::StaffId => "staff_id",
        }
    }

    /// Whether the column can be NULL (those sort last in both directions).
    pub fn nullable(self) -> bool {
        matches!(self, OrderBy::SentAt | OrderBy::ClientId | OrderBy::StaffId)
    }
}

/// Filters of `GET /sms`; every set field must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SmsFilter {
    pub client_id: Option<i64>,
    pub staff_id: Option<i64>,
    /// Any of these (empty: any status).
    pub statuses: Vec<Status>,
    /// Exact match on the stored number.
    pub mobile_no: Option<String>,
    /// `created_at >= created_from`.
    pub created_from: Option<OffsetDateTime>,
    /// `created_at < created_to` (exclusive, so a whole day is `[day, day + 1)`).
    pub created_to: Option<OffsetDateTime>,
}

/// Which page of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// Classic paging with a total count; `orderBy` any allowed column, ties broken by id.
    Offset { offset: u64, limit: u32 },
    /// Keyset paging by id (ascending or descending) without a total count:
    /// rows with id after `after_id` in the chosen direction.
    Keyset { after_id: Option<i64>, limit: u32 },
}

/// A `GET /sms` query.
#[derive(Debug, Clone, PartialEq)]
pub struct SmsQuery {
    pub filter: SmsFilter,
    /// For `Paging::Keyset` only `OrderBy::Id` is allowed (callers check).
    pub order_by: OrderBy,
    pub descending: bool,
    pub paging: Paging,
}

/// One page of messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Rows matching the filter, for offset paging; `None` for keyset paging.
    pub total: Option<u64>,
    pub items: Vec<SmsRecord>,
    /// Keyset paging: whether rows remain after the last item.
    pub has_more: bool,
}

/// What the platform's directory says about a client or staff member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No such client / staff member.
    NotFound,
    /// Exists, but no mobile number is on record.
    NoNumber,
    /// The number on record now.
    Found(String),
}

/// The SQL that finds a mobile number in the platform's own tables; `None`
/// uses the dialect's default, which targets Fineract's schema
/// (`SELECT mobile_no FROM m_client WHERE id = $1`, and `m_staff`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryQueries {
    pub client_query: Option<String>,
    pub staff_query: Option<String>,
}

/// Result of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    /// False when the idempotency key was already used: `id` is the earlier row.
    pub created: bool,
}

/// Queue health for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Rows `pending` and `sending` (see [`QUEUE_COUNTS`]; terminal states are not counted).
    pub by_status: Vec<(Status, u64)>,
    /// Pending rows due now.
    pub due: u64,
    /// Age in seconds of the oldest due pending row (0 when none).
    pub oldest_due_age_secs: f64,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub pool_size: u32,
    pub connect_timeout: Duration,
    /// The longest one database call may take, waiting for a connection included.
    pub call_timeout: Duration,
    pub directory: DirectoryQueries,
    /// Who the pool is and how long its statements may run.
    pub session: Session,
}

/// The queue's hot path, as the dispatcher works it: claim, then record.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Fails expired pending rows, in short transactions of a bounded batch
    /// until none are left; then, in one short transaction, claims up to
    /// `batch_size` due rows for `instance` with a lease of `lease`, bumping
    /// the attempt and writing the attempt and event rows. A row past its
    /// `expires_at` is never claimed, swept or not; a claimed row that cannot
    /// be read is declined (attempt `invalid`, naming the column) instead of
    /// returned.
    async fn claim(
        &self,
        instance: &str,
        batch_size: u32,
        lease: Duration,
    ) -> Result<Claim, StoreError>;

    /// Writes outcomes in one statement; each applies only while the row is
    /// still `sending` with that attempt under `instance`'s lease. A row
    /// with a delivery report kept (it came before this outcome) goes to the
    /// report's final status instead, whatever the outcome, with the events
    /// `sending -> sent` and `sent -> delivered | undelivered`: the provider
    /// has the message, so it is not sent again.
    async fn record_outcomes(
        &self,
        instance: &str,
        outcomes: &[Outcome],
    ) -> Result<RecordReport, StoreError>;
}

/// The life of a lease after the claim: handing unsent rows back, recovering
/// the rows of a crashed instance.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Hands claimed rows the provider never took back to `pending`, undoing
    /// their attempt (its row goes too); the event's reason says `why`.
    async fn release(
        &self,
        instance: &str,
        claims: &[(i64, u32)],
        why: ReleaseReason,
    ) -> Result<u64, StoreError>;

    /// Extends the lease of rows `instance` is still sending to `lease` from
    /// now, in one statement. Fenced like outcomes: only a row still
    /// `sending` on that attempt under `instance` changes. Returns how many
    /// did; a row that did not was taken over and is no longer ours.
    async fn renew(
        &self,
        instance: &str,
        claims: &[(i64, u32)],
        lease: Duration,
    ) -> Result<u64, StoreError>;

    /// Returns rows whose lease expired to `pending` (or `failed` when that was
    /// their last attempt), marking the open attempt `abandoned`. A row with
    /// a delivery report kept goes to that report's final status instead
    /// (events `sending -> sent -> delivered | undelivered`). Under
    /// at-most-once every such row fails instead, with a reason starting
    /// `outcome unknown` (the attempt may have reached the provider). Runs in
    /// one instance at a time.
    async fn reap_expired_leases(
        &self,
        max_attempts: u32,
        guarantee: Guarantee,
        limit: u32,
    ) -> Result<ReapReport, StoreError>;
}

/// The messages, as the API and the platform see them.
#[async_trait]
pub trait Messages: Send + Sync + 'static {
    /// Inserts a new pending message, as the platform would. With an
    /// idempotency key already used, inserts nothing and returns the earlier row.
    async fn enqueue(&self, sms: &NewSms) -> Result<Enqueued, StoreError>;

    /// One message.
    async fn get(&self, id: i64) -> Result<Option<SmsRecord>, StoreError>;

    /// A page of messages matching `query`.
    async fn list(&self, query: &SmsQuery) -> Result<Page, StoreError>;

    /// A message's attempts, oldest first.
    async fn attempts(&self, id: i64) -> Result<Vec<AttemptRecord>, StoreError>;

    /// A message's status transitions, oldest first.
    async fn events(&self, id: i64) -> Result<Vec<EventRecord>, StoreError>;

    /// Counts for metrics.
    async fn stats(&self) -> Result<QueueStats, StoreError>;
}

/// The platform's directory of clients and staff.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// The recipient's mobile number, from the platform's directory tables.
    async fn lookup_mobile(&self, recipient: Recipient) -> Result<Lookup, StoreError>;
}

/// The schema and the database's health.
#[async_trait]
pub trait Schema: Send + Sync + 'static {
    /// Applies the embedded migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Answers and has every embedded migration applied.
    async fn ready(&self) -> Result<bool, StoreError>;

    /// Creates the table `smsrelay_demo_directory` holding made-up numbers for
    /// `smsrelay demo` (see [`DEMO_CREATE`]); rows already there are kept.
    async fn create_demo_directory(&self) -> Result<(), StoreError>;

    /// Calls `waiter.wake` soon after the platform commits new messages,
    /// until `stop`, so the dispatcher need not wait for its next poll
    /// (PostgreSQL only while `waiter.idle` says it waits). Where the
    /// database cannot tell (MySQL/MariaDB) it returns at once and the
    /// dispatcher polls. Trouble is logged and retried here; polling covers
    /// any gap.
    async fn watch_inserts(&self, waiter: Waiter<'_>, stop: &CancellationToken) {
        let _ = (waiter, stop);
    }
}

/// Delivery reports, from the providers' callback routes.
#[async_trait]
pub trait Reports: Send + Sync + 'static {
    /// Applies a provider's final delivery report in one transaction: `sent`
    /// becomes `delivered` / `undelivered` with an event; a `pending` or
    /// `sending` message keeps the report (the first one) until its send's
    /// outcome is recorded, which then applies it (see [`Queue::record_outcomes`]);
    /// anything else is left as it is and said so (see [`ReportApplied`]).
    async fn apply_delivery_report(
        &self,
        report: &DeliveryReport,
    ) -> Result<ReportApplied, StoreError>;

    /// The message and attempt `provider` accepted under `provider_message_id`,
    /// for reports that name only the provider's id (Africa's Talking).
    async fn attempt_by_provider_message_id(
        &self,
        provider: &str,
        provider_message_id: &str,
    ) -> Result<Option<(i64, u32)>, StoreError>;

    /// How many messages are `sent` through one of `providers` (the one
    /// that accepted them, kept on the row since migration 0010) for longer
    /// than `window` without a report, by the database's clock; at most
    /// [`OVERDUE_CAP`]. 0 without providers.
    async fn overdue_reports(
        &self,
        providers: &[String],
        window: Duration,
    ) -> Result<u64, StoreError>;
}

/// Recipients who unsubscribed (table `sms_opt_out`), keyed by [`OptOutKey`].
#[async_trait]
pub trait OptOuts: Send + Sync + 'static {
    /// Records that the holder of the number unsubscribed, as `provider`
    /// answered a send of `sms_id`. Returns whether it was new.
    async fn record_opt_out(
        &self,
        number: &OptOutKey,
        provider: &str,
        sms_id: i64,
    ) -> Result<bool, StoreError>;

    /// Which of `numbers` are opted out, in one query.
    async fn opted_out(&self, numbers: &[OptOutKey]) -> Result<Vec<OptOutKey>, StoreError>;

    /// Clears an opt-out (the recipient subscribed again). Returns whether there was one.
    async fn remove_opt_out(&self, number: &OptOutKey) -> Result<bool, StoreError>;
}

/// Housekeeping that keeps the tables from growing without end.
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// Deletes, in one short transaction, up to `limit` finished messages
    /// (see `finished_statuses!`) whose last change (`updated_at`) is more
    /// than `older_than` ago by the database's clock, with their attempt and
    /// event rows. Never a `pending` or `sending` row. Runs in one instance at
    /// a time: when another holds the retention lock it does nothing and says
    /// `skipped`.
    async fn delete_finished(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<PurgeReport, StoreError>;
}

/// The whole outbox, as the application holds it (`Arc<dyn Store>`). Every
/// type with the eight parts is a `Store`.
pub trait Store:
    Queue + Leases + Messages + Directory + Schema + Reports + OptOuts + Retention
{
}

impl<T: Queue + Leases + Messages + Directory + Schema + Reports + OptOuts + Retention> Store
    for T
{
}

/// The database family a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// The dialect of `postgres://`, `postgresql://`, `mysql://`, `mariadb://`
    /// or `sqlite://path` (also `sqlite:path`) URLs.
    pub fn of_url(url: &str) -> Result<Dialect, StoreError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            "sqlite" => Ok(Dialect::Sqlite),
            other => Err(StoreError::UnsupportedUrl(other.to_owned())),
        }
    }
}

/// The demo directory: made-up numbers, clearly marked, never used unless
/// `smsrelay demo` points the directory queries at it. Portable SQL.
pub const DEMO_CREATE: &str = "CREATE TABLE IF NOT EXISTS smsrelay_demo_directory (
    kind VARCHAR(10) NOT NULL,
    id BIGINT NOT NULL,
    mobile_no VARCHAR(50),
    note VARCHAR(100) NOT NULL,
    PRIMARY KEY (kind, id))";

/// The demo rows, after each dialect's "insert unless present" keyword.
macro_rules! demo_rows {
    () => {
        " INTO smsrelay_demo_directory (kind, id, mobile_no, note) VALUES
        ('client', 1, '+254 700 000 001', 'DEMO DATA created by smsrelay demo'),
        ('client', 2, NULL, 'DEMO DATA: a client without a mobile number'),
        ('staff', 1, '+254 700 000 101', 'DEMO DATA created by smsrelay demo')"
    };
}
pub(crate) use demo_rows;

impl Dialect {
    /// The directory queries `smsrelay demo` uses, in this dialect's placeholder style.
    pub fn demo_directory(self) -> DirectoryQueries {
        let placeholder = if self == Dialect::Postgres { "$1" } else { "?" };
        let query = |kind: &str| {
            Some(format!(
                "SELECT mobile_no FROM smsrelay_demo_directory WHERE kind = '{kind}' AND id = {placeholder}"
            ))
        };
        DirectoryQueries {
            client_query: query("client"),
            staff_query: query("staff"),
        }
    }
}

/// Opens the store the URL's scheme names (without connecting eagerly).
pub fn open(options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match Dialect::of_url(&options.url)? {
        Dialect::Postgres => Arc::new(postgres::PgStore::open(options)?),
        Dialect::MySql => Arc::new(mysql::MySqlStore::open(options)?),
        Dialect::Sqlite => Arc::new(sqlite::SqliteStore::open(options)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_picks_the_dialect() {
        for (url, dialect) in [
            ("postgres://u@h/db", Dialect::Postgres),
            ("postgresql://u@h/db", Dialect::Postgres),
            ("mysql://root@127.0.0.1:3306/platform", Dialect::MySql),
            ("mariadb://root@127.0.0.1/platform", Dialect::MySql),
            ("sqlite://smsrelay.db", Dialect::Sqlite),
            ("sqlite:///var/lib/smsrelay/smsrelay.db", Dialect::Sqlite),
            ("sqlite:smsrelay.db", Dialect::Sqlite),
        ] {
            assert_eq!(Dialect::of_url(url).unwrap(), dialect, "{url}");
        }
        let error = Dialect::of_url("mssql://h/db").unwrap_err();
        assert_eq!(
            error.to_string(),
            "unsupported database URL scheme \"mssql\" (expected postgres://, postgresql://, mysql://, mariadb:// or sqlite://)"
        );
        assert!(matches!(
            Dialect::of_url("smsrelay.db"),
            Err(StoreError::UnsupportedUrl(s)) if s.is_empty()
        ));
    }
}
