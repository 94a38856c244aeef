//! [`Messages`], [`Directory`] and [`Schema`] written once for every dialect,
//! on top of the few primitives a dialect implements ([`Backend`]): how it
//! runs a statement, its placeholders, its migrations, and the handful of
//! statements whose SQL really differs. [`OptOuts`] and the provider-id
//! lookup of reports are portable SQL too.

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

use super::batch::{directory_error, lookup_from};
use super::query::{self, Arg, Style};
use super::rows::{self, ATTEMPT_COLUMNS, Columns, EVENT_COLUMNS, SMS_COLUMNS};
use super::{
    DEMO_CREATE, Directory, DirectoryQueries, Enqueued, Lookup, Messages, OptOuts, Page,
    QueueStats, Schema, SmsQuery, StoreError, Waiter,
};
use crate::domain::opt_out::OptOutKey;
use crate::domain::{AttemptRecord, EventRecord, NewSms, Recipient, SmsRecord, Status};

/// The directory SQL a store runs: the operator's, or the dialect's default
/// (Fineract's `m_client` and `m_staff`).
#[derive(Debug, Clone)]
pub(super) struct DirectorySql {
    client: String,
    staff: String,
}

impl DirectorySql {
    pub fn new(configured: &DirectoryQueries, client: &str, staff: &str) -> Self {
        DirectorySql {
            client: configured
                .client_query
                .clone()
                .unwrap_or_else(|| client.to_owned()),
            staff: configured
                .staff_query
                .clone()
                .unwrap_or_else(|| staff.to_owned()),
        }
    }
}

/// What a dialect provides so that the shared code can run on it.
#[async_trait]
pub(super) trait Backend: Send + Sync + 'static {
    type Row: Columns + Send + Sync;

    /// The embedded migrations.
    const MIGRATOR: &'static Migrator;
    /// Placeholders and NULL ordering.
    const STYLE: Style;
    /// One row with a count `n`: 1 when the table `_sqlx_migrations` exists.
    const MIGRATIONS_TABLE: &'static str;
    /// The demo rows, inserted unless present (see [`super::demo_rows`]).
    const DEMO_INSERT: &'static str;
    /// `s.sent_at` more than the first parameter's milliseconds ago, by the
    /// database's clock (the one `sent_at` was written with).
    const SENT_BEFORE_WINDOW: &'static str;

    /// Runs one statement with `args` bound in order and returns its rows,
    /// within `database.call_timeout`.
    async fn fetch(&self, sql: &str, args: &[Arg]) -> Result<Vec<Self::Row>, StoreError>;

    fn directory(&self) -> &DirectorySql;

    /// Applies the migrations (each dialect has its own cautions).
    async fn apply_migrations(&self) -> Result<(), StoreError>;

    /// See [`Schema::watch_inserts`]; by default the database cannot tell.
    async fn watch_inserts(&self, waiter: Waiter<'_>, stop: &CancellationToken) {
        let _ = (waiter, stop);
    }

    /// Inserts a new row and returns its id, or `None` when its idempotency
    /// key is already used. Here PostgreSQL's and SQLite's
    /// `ON CONFLICT ... DO NOTHING RETURNING id`; MySQL has neither.
    async fn insert(&self, sms: &NewSms) -> Result<Option<i64>, StoreError> {
        let (client_id, staff_id) = match sms.recipient {
            Recipient::Client(id) => (Some(id), None),
            Recipient::Staff(id) => (None, Some(id)),
        };
        let p = Self::STYLE.placeholder;
        let sql = format!(
            "INSERT INTO sms (client_id, staff_id, mobile_no, message, not_before, expires_at, idempotency_key) \
             VALUES ({}, {}, {}, {}, {}, {}, {}) \
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7)
        );
        let rows = self
            .fetch(&sql, &insert_args(sms, client_id, staff_id))
            .await?;
        rows.first().map(rows::id).transpose()
    }

    /// Pending rows due now, and the age in seconds of the oldest of them.
    async fn due_stats(&self) -> Result<(i64, f64), StoreError>;
}

/// The values of an INSERT into `sms`, in column order.
pub(super) fn insert_args(sms: &NewSms, client_id: Option<i64>, staff_id: Option<i64>) -> Vec<Arg> {
    vec![
        Arg::Int(client_id),
        Arg::Int(staff_id),
        Arg::Text(Some(sms.mobile_no.clone())),
        Arg::Text(Some(sms.message.clone())),
        Arg::Time(sms.not_before),
        Arg::Time(sms.expires_at),
        Arg::Text(sms.idempotency_key.clone()),
    ]
}

/// `SELECT {columns} FROM {table} WHERE {key} = <first placeholder> {rest}`.
fn by_key<B: Backend>(columns: &str, table: &str, key: &str, rest: &str) -> String {
    let p = (B::STYLE.placeholder)(1);
    format!("SELECT {columns} FROM {table} WHERE {key} = {p}{rest}")
}

#[async_trait]
impl<B: Backend> Messages for B {
    async fn enqueue(&self, sms: &NewSms) -> Result<Enqueued, StoreError> {
        if let Some(id) = self.insert(sms).await? {
            return Ok(Enqueued { id, created: true });
        }
        let sql = by_key::<B>("id", "sms", "idempotency_key", "");
        let rows = self
            .fetch(&sql, &[Arg::Text(sms.idempotency_key.clone())])
            .await?;
        let id = rows.first().map(rows::id).transpose()?;
        let id = id.ok_or_else(|| StoreError::BadRow {
            id: 0,
            message: "the row holding this idempotency key is gone".into(),
        })?;
        Ok(Enqueued { id, created: false })
    }

    async fn get(&self, id: i64) -> Result<Option<SmsRecord>, StoreError> {
        let sql = by_key::<B>(SMS_COLUMNS, "sms", "id", "");
        let rows = self.fetch(&sql, &[Arg::Int(Some(id))]).await?;
        rows.first().map(rows::sms).transpose()
    }

    async fn list(&self, query: &SmsQuery) -> Result<Page, StoreError> {
        let page = query::list_page(query, B::STYLE);
        let rows = self.fetch(&page.text, &page.args).await?;
        let items = rows.iter().map(rows::sms).collect::<Result<Vec<_>, _>>()?;
        let total = match query::list_count(query, B::STYLE) {
            Some(count) => {
                let rows = self.fetch(&count.text, &count.args).await?;
                Some(count_of(&rows)?)
            }
            None => None,
        };
        Ok(query::page(query, items, total))
    }

    async fn attempts(&self, id: i64) -> Result<Vec<AttemptRecord>, StoreError> {
        let p = B::STYLE.placeholder;
        // An attempt's row is written at its outcome (or by the reaper): the
        // one in progress is read from the lease columns of `sms`, where the
        // claim left its instance and, in `updated_at`, its start. The NOT
        // EXISTS keeps a row an older smsrelay wrote at the claim (a
        // rolling upgrade) from showing twice.
        let sql = format!(
            "SELECT {ATTEMPT_COLUMNS} FROM sms_attempt WHERE sms_id = {} \
             UNION ALL \
             SELECT attempts AS attempt, locked_by AS instance, updated_at AS started_at, \
                    NULL AS finished_at, NULL AS outcome, NULL AS http_status, \
                    NULL AS provider_message_id, NULL AS error, NULL AS provider \
             FROM sms WHERE id = {} AND status = 'sending' AND NOT EXISTS ( \
                 SELECT 1 FROM sms_attempt WHERE sms_id = {} AND attempt = sms.attempts) \
             ORDER BY attempt",
            p(1),
            p(2),
            p(3)
        );
        let key = Arg::Int(Some(id));
        let rows = self.fetch(&sql, &[key.clone(), key.clone(), key]).await?;
        rows.iter().map(|row| rows::attempt(row, id)).collect()
    }

    async fn events(&self, id: i64) -> Result<Vec<EventRecord>, StoreError> {
        let sql = by_key::<B>(EVENT_COLUMNS, "sms_event", "sms_id", " ORDER BY id");
        let rows = self.fetch(&sql, &[Arg::Int(Some(id))]).await?;
        rows.iter().map(|row| rows::event(row, id)).collect()
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let rows = self.fetch(QUEUE_COUNTS, &[]).await?;
        let count = |status: Status| -> Result<(Status, u64), StoreError> {
            let n = match rows.first() {
                Some(row) => row.int(status.as_str())?.unwrap_or(0),
                None => 0,
            };
            Ok((status, u64::try_from(n).unwrap_or(0)))
        };
        let by_status = vec![count(Status::Pending)?, count(Status::Sending)?];
        let (due, oldest) = self.due_stats().await?;
        Ok(QueueStats {
            by_status,
            due: u64::try_from(due).unwrap_or(0),
            oldest_due_age_secs: oldest.max(0.0),
        })
    }
}

/// The rows in the two states a message passes through, read at each
/// `/metrics` scrape. Each count walks its state's index (the partial
/// indexes `sms_due_idx` and `sms_lease_idx` on PostgreSQL and SQLite,
/// `(status, ...)` on MariaDB/MySQL), never the table: the terminal states
/// hold nearly every row, and their totals are not counted here.
pub const QUEUE_COUNTS: &str = "SELECT \
    (SELECT count(*) FROM sms WHERE status = 'pending') AS pending, \
    (SELECT count(*) FROM sms WHERE status = 'sending') AS sending";

/// The `n` of a one-row count.
fn count_of<R: Columns>(rows: &[R]) -> Result<i64, StoreError> {
    Ok(match rows.first() {
        Some(row) => row.int("n")?.unwrap_or(0),
        None => 0,
    })
}

#[async_trait]
impl<B: Backend> Directory for B {
    async fn lookup_mobile(&self, recipient: Recipient) -> Result<Lookup, StoreError> {
        let (sql, id) = match recipient {
            Recipient::Client(id) => (&self.directory().client, id),
            Recipient::Staff(id) => (&self.directory().staff, id),
        };
        // The directory SQL comes from the operator's config, never from a request.
        let rows = self
            .fetch(sql, &[Arg::Int(Some(id))])
            .await
            .map_err(directory_error)?;
        let found = match rows.first() {
            Some(row) => Some(
                row.first_text()
                    .map_err(|e| directory_error(StoreError::from(e)))?,
            ),
            None => None,
        };
        Ok(lookup_from(found))
    }
}

#[async_trait]
impl<B: Backend> Schema for B {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.apply_migrations().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.fetch("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn ready(&self) -> Result<bool, StoreError> {
        let latest = B::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        if count_of(&self.fetch(B::MIGRATIONS_TABLE, &[]).await?)? == 0 {
            // Reachable but not migrated.
            return Ok(false);
        }
        let rows = self
            .fetch(
                "SELECT max(version) AS n FROM _sqlx_migrations WHERE success",
                &[],
            )
            .await?;
        Ok(count_of(&rows)? >= latest)
    }

    async fn create_demo_directory(&self) -> Result<(), StoreError> {
        self.fetch(DEMO_CREATE, &[]).await?;
        self.fetch(B::DEMO_INSERT, &[]).await?;
        Ok(())
    }

    async fn watch_inserts(&self, waiter: Waiter<'_>, stop: &CancellationToken) {
        Backend::watch_inserts(self, waiter, stop).await
    }
}

/// `(p1, p2, ..., pn)` in the dialect's placeholder style.
fn placeholders<B: Backend>(n: usize) -> String {
    let list: Vec<String> = (1..=n).map(B::STYLE.placeholder).collect();
    format!("({})", list.join(", "))
}

#[async_trait]
impl<B: Backend> OptOuts for B {
    async fn record_opt_out(
        &self,
        number: &OptOutKey,
        provider: &str,
        sms_id: i64,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO sms_opt_out (number_sha256, provider, sms_id) VALUES {}",
            placeholders::<B>(3)
        );
        let args = [
            Arg::Text(Some(number.as_str().to_owned())),
            Arg::Text(Some(provider.to_owned())),
            Arg::Int(Some(sms_id)),
        ];
        // A plain INSERT on every dialect: the primary key refuses a number
        // already recorded (by this send's duplicate, or another instance).
        match self.fetch(&sql, &args).await {
            Ok(_) => Ok(true),
            Err(
                StoreError::Database(sqlx::Error::Database(e))
                | StoreError::Refused(sqlx::Error::Database(e)),
            ) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn opted_out(&self, numbers: &[OptOutKey]) -> Result<Vec<OptOutKey>, StoreError> {
        if numbers.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT number_sha256 FROM sms_opt_out WHERE number_sha256 IN {}",
            placeholders::<B>(numbers.len())
        );
        let args: Vec<Arg> = numbers
            .iter()
            .map(|n| Arg::Text(Some(n.as_str().to_owned())))
            .collect();
        let rows = self.fetch(&sql, &args).await?;
        rows.iter()
            .map(|row| {
                Ok(OptOutKey::from_stored(
                    row.text("number_sha256")?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn remove_opt_out(&self, number: &OptOutKey) -> Result<bool, StoreError> {
        let key = [Arg::Text(Some(number.as_str().to_owned()))];
        let found = self
            .fetch(
                &by_key::<B>("number_sha256", "sms_opt_out", "number_sha256", ""),
                &key,
            )
            .await?;
        let p = (B::STYLE.placeholder)(1);
        self.fetch(
            &format!("DELETE FROM sms_opt_out WHERE number_sha256 = {p}"),
            &key,
        )
        .await?;
        Ok(!found.is_empty())
    }
}

/// [`super::Reports::attempt_by_provider_message_id`] for any dialect: the
/// accepted attempt carrying that id (indexed by migration 0005).
pub(super) async fn attempt_by_provider_message_id<B: Backend>(
    backend: &B,
    provider: &str,
    provider_message_id: &str,
) -> Result<Option<(i64, u32)>, StoreError> {
    let p = B::STYLE.placeholder;
    let sql = format!(
        "SELECT sms_id, attempt FROM sms_attempt \
         WHERE provider_message_id = {} AND provider = {} AND outcome = 'accepted' \
         ORDER BY attempt DESC LIMIT 1",
        p(1),
        p(2)
    );
    let rows = backend
        .fetch(
            &sql,
            &[
                Arg::Text(Some(provider_message_id.to_owned())),
                Arg::Text(Some(provider.to_owned())),
            ],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let sms_id = row.int("sms_id")?.unwrap_or(0);
    let attempt = row.int4("attempt")?.unwrap_or(0);
    Ok(Some((sms_id, u32::try_from(attempt).unwrap_or(0))))
}

/// The most [`overdue_reports`] counts: it reads no more rows than this
/// however many are overdue, and the gauge says "at least" beyond it.
pub const OVERDUE_CAP: u32 = 100_000;

/// [`super::Reports::overdue_reports`] for any dialect: one range of the
/// index of `sent` rows (`sms_sent_idx`, migration 0010) per provider, from
/// the oldest, so it reads the overdue rows and no others.
pub(super) async fn overdue_reports<B: Backend>(
    backend: &B,
    providers: &[String],
    window: std::time::Duration,
) -> Result<u64, StoreError> {
    if providers.is_empty() {
        return Ok(0);
    }
    let p = B::STYLE.placeholder;
    let names: Vec<String> = (0..providers.len()).map(|i| p(i + 2)).collect();
    let sql = format!(
        "SELECT count(*) AS n FROM (\
         SELECT 1 AS one FROM sms s \
         WHERE s.status = 'sent' AND {} AND s.provider IN ({}) \
         LIMIT {OVERDUE_CAP}) AS overdue",
        B::SENT_BEFORE_WINDOW,
        names.join(", ")
    );
    let mut args = vec![Arg::Int(Some(
        i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
    ))];
    args.extend(providers.iter().map(|name| Arg::Text(Some(name.clone()))));
    let rows = backend.fetch(&sql, &args).await?;
    let n = match rows.first() {
        Some(row) => row.int("n")?.unwrap_or(0),
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}
