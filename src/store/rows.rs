//! Rows to domain types, once for every dialect. A dialect only says how it
//! reads four kinds of value ([`Columns`]); SQLite stores times as epoch
//! milliseconds, the servers as native timestamps.

use sqlx::Row;
use time::OffsetDateTime;

use super::batch::{AttemptRef, parse_status, to_u32};
use super::{Claim, Queue, StoreError};
use crate::domain::{
    AttemptOutcome, AttemptRecord, ClaimedSms, EventRecord, NextState, Outcome, SmsRecord,
};

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
    /// The database's name for the type of the value stored in `column`.
    fn stored_type(&self, column: &str) -> Option<String>;
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
            fn stored_type(&self, column: &str) -> Option<String> {
                use sqlx::{TypeInfo, ValueRef};
                let value = self.try_get_raw(column).ok()?;
                Some(value.type_info().name().to_owned())
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

    /// A value that did not decode: a type other than `kind` says which
    /// type the database holds; anything else says what sqlx found wrong.
    fn undecodable(&self, column: &str, kind: &str, e: sqlx::Error) -> StoreError {
        let cause = match e {
            sqlx::Error::ColumnDecode { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        match self.row.stored_type(column) {
            Some(stored) if cause.starts_with("mismatched types") => {
                self.bad(column, format!("it holds {stored}, not {kind}"))
            }
            _ => self.bad(column, cause),
        }
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.row
            .int(column)
            .map_err(|e| self.undecodable(column, "an integer", e))
    }

    fn opt_u32(&self, column: &str) -> Result<Option<u32>, StoreError> {
        let value = self
            .row
            .int4(column)
            .map_err(|e| self.undecodable(column, "an integer", e))?;
        Ok(to_u32(value))
    }

    fn u32(&self, column: &str) -> Result<u32, StoreError> {
        let value = self.opt_u32(column)?;
        self.required(column, value)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        self.row
            .text(column)
            .map_err(|e| self.undecodable(column, "text", e))
    }

    fn text(&self, column: &str) -> Result<String, StoreError> {
        let value = self.opt_text(column)?;
        self.required(column, value)
    }

    fn opt_time(&self, column: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.row
            .time(column)
            .map_err(|e| self.undecodable(column, "a time", e))
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

/// The rows of a claim (`id, attempts, mobile_no, message`): those that
/// could be read, and an `invalid` outcome declining each one that could not
/// (a BLOB in a TEXT column on SQLite, say), so that it cannot come first in
/// the queue again and again. `attempts + bump` is the attempt now running
/// (MySQL reads the row before it bumps the count).
#[derive(Debug, Default)]
pub(super) struct ClaimedRows {
    pub messages: Vec<ClaimedSms>,
    pub unreadable: Vec<Outcome>,
}

impl ClaimedRows {
    pub fn read<R: Columns>(rows: &[R], bump: u32) -> Result<ClaimedRows, StoreError> {
        let mut claimed = ClaimedRows::default();
        for row in rows {
            let r = Reader { row, id: id(row)? };
            let attempt = r.u32("attempts")? + bump;
            match (r.text("mobile_no"), r.text("message")) {
                (Ok(mobile_no), Ok(message)) => claimed.messages.push(ClaimedSms {
                    id: r.id,
                    attempt,
                    mobile_no,
                    message,
                    send_key: r.opt_text("send_key")?.unwrap_or_else(new_send_key),
                }),
                (Err(e), _) | (_, Err(e)) => {
                    let reason = match e {
                        StoreError::BadRow { message, .. } => message,
                        other => other.to_string(),
                    };
                    tracing::warn!(sms_id = r.id, %reason, "declining a row that cannot be read");
                    claimed.unreadable.push(Outcome {
                        id: r.id,
                        attempt,
                        outcome: AttemptOutcome::Invalid,
                        next: NextState::Declined,
                        http_status: None,
                        provider_message_id: None,
                        reason: format!("invalid: {reason}"),
                        error: Some(reason),
                        segments: None,
                        provider: None,
                    });
                }
            }
        }
        claimed.messages.sort_by_key(|m| m.id);
        Ok(claimed)
    }

    /// Every claimed row on its attempt, readable or not.
    pub fn refs(&self) -> Vec<AttemptRef> {
        let mut refs = AttemptRef::claimed(&self.messages);
        refs.extend(self.unreadable.iter().map(|o| AttemptRef {
            id: o.id,
            attempt: i64::from(o.attempt),
            send_key: None,
        }));
        refs
    }

    /// Once the claim is committed: declines the unreadable rows and hands
    /// out the others. The readable rows are ours whatever becomes of the
    /// declines: if those cannot be written now, their leases run out and the
    /// reaper hands the rows back, to be declined on a later claim.
    pub async fn finish(self, queue: &impl Queue, instance: &str, expired: u64) -> Claim {
        if !self.unreadable.is_empty()
            && let Err(e) = queue.record_outcomes(instance, &self.unreadable).await
        {
            tracing::warn!(error = %e, rows = self.unreadable.len(), "could not decline unreadable rows yet");
        }
        Claim {
            messages: self.messages,
            expired,
        }
    }
}

/// A send key for a row claimed the first time where the claim cannot make
/// one in SQL (MySQL reads before it updates): 128 random bits as hex.
fn new_send_key() -> String {
    format!("{:032x}", rand::random::<u128>())
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
            .map_err(|e| r.undecodable("http_status", "an integer", e))?
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
