//! Rows to domain types, once for every dialect. A dialect only says how it
//! reads four kinds of value ([`Columns`]); SQLite stores times as epoch
//! milliseconds, the servers as native timestamps.

use sqlx::Row;
use time::OffsetDateTime;

use super::StoreError;
use super::batch::{parse_status, to_u32};
use crate::domain::{AttemptRecord, ClaimedSms, EventRecord, SmsRecord};

/// The columns of `sms` that [`sms`] reads, in every SELECT of a message.
pub(super) const SMS_COLUMNS: &str = "id, client_id, staff_id, mobile_no, message, status, \
    attempts, segments, created_at, updated_at, not_before, expires_at, next_attempt_at, \
    locked_by, lease_expires_at, sent_at, delivered_at, provider_message_id, last_error";

/// The columns of `sms_attempt` that [`attempt`] reads.
pub(super) const ATTEMPT_COLUMNS: &str = "attempt, instance, started_at, finished_at, outcome, http_status, provider_message_id, error, provider";

/// The columns of `sms_event` that [`event`] reads.
pub(super) const EVENT_COLUMNS: &str = "from_status, to_status, occurred_at, reason";

/// How a dialect's row reads a nullable value of each kind the outbox stores.
pub(super) trait Columns: Row {
    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    /// An INTEGER column (PostgreSQL decodes `integer` only as 32 bits).
    fn int4(&self, column: &str) -> Result<Option<i32>, sqlx::Error>;
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn time(&self, column: &str) -> Result<Option<OffsetDateTime>, sqlx::Error>;
    /// The first column as text, whatever its name (the operator's directory query).
    fn first_text(&self) -> Result<Option<String>, sqlx::Error>;
}

/// `Columns` for a row type whose times decode natively; `$time` maps the
/// raw value otherwise.
macro_rules! columns {
    ($row:ty) => {
        columns!($row, |row, column| row.try_get(column));
    };
    ($row:ty, |$r:ident, $c:ident| $time:expr) => {
        impl Columns for $row {
            fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(column)
            }
            fn int4(&self, column: &str) -> Result<Option<i32>, sqlx::Error> {
                self.try_get(column)
            }
            fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(column)
            }
            fn time(&self, $c: &str) -> Result<Option<OffsetDateTime>, sqlx::Error> {
                let $r = self;
                $time
            }
            fn first_text(&self) -> Result<Option<String>, sqlx::Error> {
                self.try_get(0)
            }
        }
    };
}

columns!(sqlx::postgres::PgRow);
columns!(sqlx::mysql::MySqlRow);
columns!(sqlx::sqlite::SqliteRow, |row, column| {
    let ms: Option<i64> = row.try_get(column)?;
    ms.map(|ms| {
        super::sqlite::from_ms(ms).ok_or_else(|| {
            sqlx::Error::Decode(format!("{ms} is not a time in epoch milliseconds").into())
        })
    })
    .transpose()
});

/// Reads the columns of one row whose id is known, so that any value that
/// cannot be decoded is reported as that row's fault, naming the column.
struct Reader<'r, R> {
    row: &'r R,
    id: i64,
}

impl<R: Columns> Reader<'_, R> {
    fn bad(&self, column: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::BadRow {
            id: self.id,
            message: format!("column {column} cannot be read: {e}"),
        }
    }

    fn required<T>(&self, column: &str, value: Option<T>) -> Result<T, StoreError> {
        value.ok_or_else(|| self.bad(column, "it is NULL"))
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.row.int(column).map_err(|e| self.bad(column, e))
    }

    fn opt_u32(&self, column: &str) -> Result<Option<u32>, StoreError> {
        let value = self.row.int4(column).map_err(|e| self.bad(column, e))?;
        Ok(to_u32(value))
    }

    fn u32(&self, column: &str) -> Result<u32, StoreError> {
        let value = self.opt_u32(column)?;
        self.required(column, value)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        self.row.text(column).map_err(|e| self.bad(column, e))
    }

    fn text(&self, column: &str) -> Result<String, StoreError> {
        let value = self.opt_text(column)?;
        self.required(column, value)
    }

    fn opt_time(&self, column: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.row.time(column).map_err(|e| self.bad(column, e))
    }

    fn time(&self, column: &str) -> Result<OffsetDateTime, StoreError> {
        let value = self.opt_time(column)?;
        self.required(column, value)
    }

    fn status(&self, column: &str) -> Result<crate::domain::Status, StoreError> {
        parse_status(self.id, &self.text(column)?)
    }
}

/// The `id` column of a row; everything else about the row is read after it.
pub(super) fn id<R: Columns>(row: &R) -> Result<i64, StoreError> {
    row.int("id")?.ok_or_else(|| StoreError::BadRow {
        id: 0,
        message: "a row without an id".into(),
    })
}

/// A message, from the [`SMS_COLUMNS`].
pub(super) fn sms<R: Columns>(row: &R) -> Result<SmsRecord, StoreError> {
    let r = Reader { row, id: id(row)? };
    Ok(SmsRecord {
        id: r.id,
        client_id: r.opt_int("client_id")?,
        staff_id: r.opt_int("staff_id")?,
        mobile_no: r.text("mobile_no")?,
        message: r.text("message")?,
        status: r.status("status")?,
        attempts: r.opt_u32("attempts")?.unwrap_or(0),
        segments: r.opt_u32("segments")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        not_before: r.opt_time("not_before")?,
        expires_at: r.opt_time("expires_at")?,
        next_attempt_at: r.opt_time("next_attempt_at")?,
        locked_by: r.opt_text("locked_by")?,
        lease_expires_at: r.opt_time("lease_expires_at")?,
        sent_at: r.opt_time("sent_at")?,
        delivered_at: r.opt_time("delivered_at")?,
        provider_message_id: r.opt_text("provider_message_id")?,
        last_error: r.opt_text("last_error")?,
    })
}

/// A claimed row (`id, attempts, mobile_no, message`); `attempts + bump` is
/// the attempt now running (MySQL reads the row before it bumps the count).
pub(super) fn claimed<R: Columns>(row: &R, bump: u32) -> Result<ClaimedSms, StoreError> {
    let r = Reader { row, id: id(row)? };
    Ok(ClaimedSms {
        id: r.id,
        attempt: r.u32("attempts")? + bump,
        mobile_no: r.text("mobile_no")?,
        message: r.text("message")?,
    })
}

/// One attempt of message `id`, from the [`ATTEMPT_COLUMNS`].
pub(super) fn attempt<R: Columns>(row: &R, id: i64) -> Result<AttemptRecord, StoreError> {
    let r = Reader { row, id };
    Ok(AttemptRecord {
        attempt: r.u32("attempt")?,
        instance: r.text("instance")?,
        started_at: r.time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
        outcome: r.opt_text("outcome")?,
        http_status: r
            .row
            .int4("http_status")
            .map_err(|e| r.bad("http_status", e))?
            .and_then(|s| u16::try_from(s).ok()),
        provider_message_id: r.opt_text("provider_message_id")?,
        error: r.opt_text("error")?,
        provider: r.opt_text("provider")?,
    })
}

/// One status transition of message `id`, from the [`EVENT_COLUMNS`].
pub(super) fn event<R: Columns>(row: &R, id: i64) -> Result<EventRecord, StoreError> {
    let r = Reader { row, id };
    Ok(EventRecord {
        from_status: r.status("from_status")?,
        to_status: r.status("to_status")?,
        occurred_at: r.time("occurred_at")?,
        reason: r.text("reason")?,
    })
}
