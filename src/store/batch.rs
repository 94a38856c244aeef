//! The batch model of every dialect: a batch (outcomes, claims, releases)
//! travels as ONE JSON parameter that the SQL unpacks into rows
//! (`jsonb_to_recordset` on PostgreSQL, `JSON_TABLE` on MySQL, `json_each` on
//! SQLite), so the statements stay fixed `&'static str` whatever the batch
//! size. Also the small conversions the dialects share.

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use super::StoreError;
use crate::domain::status::UnknownStatus;
use crate::domain::{ClaimedSms, NextState, Outcome, Status};

/// The longest provider message id or provider name stored, in characters:
/// MySQL's `VARCHAR(255)` columns (which would cut it silently), and well
/// under what PostgreSQL's index on `provider_message_id` holds (2,704 bytes).
const MAX_ID_CHARS: usize = 255;

/// The longest error or reason text stored, in characters: 4 bytes each still
/// fit MySQL's `TEXT` (65,535 bytes).
const MAX_TEXT_CHARS: usize = 4000;

/// `value` as every database stores it: a NUL byte (PostgreSQL refuses it in
/// text and in JSON, 22021 / 22P05) becomes U+FFFD, and the text is cut to
/// `max_chars`, so that one odd provider answer cannot fail a batch.
pub(super) fn storable(value: &str, max_chars: usize) -> Cow<'_, str> {
    if !value.contains('\0') && value.chars().nth(max_chars).is_none() {
        return Cow::Borrowed(value);
    }
    Cow::Owned(
        value
            .chars()
            .take(max_chars)
            .map(|c| {
                if c == '\0' {
                    char::REPLACEMENT_CHARACTER
                } else {
                    c
                }
            })
            .collect(),
    )
}

/// One outcome as a JSON object; absent fields become SQL NULL on both
/// dialects (no reliance on how each one maps a JSON `null`). Texts are
/// [`storable`].
#[derive(Debug, Clone, Serialize)]
pub(super) struct OutcomeRow<'a> {
    pub id: i64,
    pub attempt: i64,
    pub next_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_ms: Option<i64>,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<i64>,
    pub reason: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<Cow<'a, str>>,
}

impl<'a> OutcomeRow<'a> {
    pub fn new(o: &'a Outcome) -> Self {
        OutcomeRow {
            id: o.id,
            attempt: i64::from(o.attempt),
            next_status: o.next.status().as_str(),
            retry_ms: match o.next {
                NextState::Retry(after) => Some(millis(after)),
                _ => None,
            },
            outcome: o.outcome.as_str(),
            http_status: o.http_status.map(i64::from),
            provider_message_id: o
                .provider_message_id
                .as_deref()
                .map(|id| storable(id, MAX_ID_CHARS)),
            error: o.error.as_deref().map(|e| storable(e, MAX_TEXT_CHARS)),
            segments: o.segments.map(i64::from),
            reason: storable(&o.reason, MAX_TEXT_CHARS),
            provider: o.provider.as_deref().map(|p| storable(p, MAX_ID_CHARS)),
        }
    }
}

/// A row and the attempt it is expected to be on (release, claim).
#[derive(Debug, Serialize)]
pub(super) struct AttemptRef {
    pub id: i64,
    pub attempt: i64,
    /// A claimed row's send key (MySQL's claim writes it from here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_key: Option<String>,
}

impl AttemptRef {
    /// The `(id, attempt)` pairs of a release or a claim.
    pub fn all<'c>(claims: impl IntoIterator<Item = &'c (i64, u32)>) -> Vec<AttemptRef> {
        claims
            .into_iter()
            .map(|(id, attempt)| AttemptRef {
                id: *id,
                attempt: i64::from(*attempt),
                send_key: None,
            })
            .collect()
    }

    /// The `(id, attempt)` pairs of a renewal as JSON, each row once.
    pub fn distinct_json(claims: &[(i64, u32)]) -> Result<String, StoreError> {
        to_json(&AttemptRef::all(first_per_id(claims, |(id, _)| *id)))
    }

    /// The rows of a claim, on the attempt they are now on.
    pub fn claimed(messages: &[ClaimedSms]) -> Vec<AttemptRef> {
        messages
            .iter()
            .map(|m| AttemptRef {
                id: m.id,
                attempt: i64::from(m.attempt),
                send_key: Some(m.send_key.clone()),
            })
            .collect()
    }
}

/// Expired rows the sweep fails per transaction, so that no sweep holds its
/// locks long, however large the backlog.
pub(super) const EXPIRE_BATCH: u32 = 1000;

/// Transactions of [`EXPIRE_BATCH`] one claim spends on the sweep at most;
/// the claim itself never returns an expired row, so what is left over waits
/// for the next cycle without any risk of being sent.
const EXPIRE_ROUNDS: u32 = 50;

/// Runs `batch` (one sweep transaction, returning how many rows it failed)
/// until a batch comes back short, i.e. none are left; returns the total.
pub(super) async fn sweep_expired<F, Fut>(mut batch: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    for _ in 0..EXPIRE_ROUNDS {
        let expired = batch().await?;
        total += expired;
        if expired < u64::from(EXPIRE_BATCH) {
            break;
        }
    }
    Ok(total)
}

/// What a batch of `sent` outcomes did, from how many changed their row.
pub(super) fn record_report(sent: usize, applied: impl TryInto<u64>) -> super::RecordReport {
    let sent = sent as u64;
    let applied = applied.try_into().unwrap_or(0).min(sent);
    super::RecordReport {
        applied,
        stale: sent - applied,
    }
}

/// The first of several entries for one row: the row can change only once
/// per batch, so later duplicates count as stale (as on PostgreSQL, where the
/// fenced UPDATE changes each row once).
pub(super) fn first_per_id<T>(items: &[T], id: impl Fn(&T) -> i64) -> Vec<&T> {
    let mut seen = HashSet::new();
    items.iter().filter(|item| seen.insert(id(item))).collect()
}

/// JSON text of a batch; serialising these plain structs cannot fail, but
/// say so instead of panicking if it ever did.
pub(super) fn to_json<T: Serialize + ?Sized>(rows: &T) -> Result<String, StoreError> {
    serde_json::to_string(rows).map_err(|e| StoreError::BadRow {
        id: 0,
        message: format!("cannot encode a batch as JSON: {e}"),
    })
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(super) fn to_u32(value: Option<i32>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

/// A stored status name, or a readable error naming the row.
pub(super) fn parse_status(id: i64, raw: &str) -> Result<Status, StoreError> {
    raw.parse().map_err(|e: UnknownStatus| StoreError::BadRow {
        id,
        message: e.to_string(),
    })
}

/// A failing directory query is a configuration problem; say which.
pub(super) fn directory_error(e: StoreError) -> StoreError {
    match e {
        // A lookup cut off by the API's statement timeout is an answer of its own (503).
        e if e.is_statement_timeout() => e,
        StoreError::Database(e) | StoreError::Refused(e) => StoreError::Directory(format!(
            "the [directory] query failed ({e}); set directory.client_query / directory.staff_query for your schema"
        )),
        other => other,
    }
}

/// What a directory row says.
pub(super) fn lookup_from(found: Option<Option<String>>) -> super::Lookup {
    match found {
        None => super::Lookup::NotFound,
        Some(Some(number)) if !number.trim().is_empty() => super::Lookup::Found(number),
        Some(_) => super::Lookup::NoNumber,
    }
}

/// The event reason of a row the reaper recovers, from its `last_error`
/// (MySQL and SQLite; PostgreSQL's REAP says the same in SQL).
pub(super) fn reap_reason(at_most_once: bool, failed: bool, last_error: &str) -> String {
    if at_most_once {
        format!("{last_error}; not sent again (dispatch.guarantee = at-most-once)")
    } else if failed {
        format!("attempts exhausted: {last_error}")
    } else {
        last_error.to_owned()
    }
}

/// One `sms_event` row of an outcome batch, as JSON (MySQL, SQLite).
#[derive(Debug, Serialize)]
pub(super) struct EventRow<'a> {
    pub id: i64,
    pub from_status: &'static str,
    pub to_status: &'a str,
    pub reason: Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AttemptOutcome;

    #[test]
    fn texts_are_cut_and_cleared_of_nul_bytes() {
        assert!(matches!(storable("prov-1", 255), Cow::Borrowed("prov-1")));
        assert_eq!(storable("a\0b", 255), "a\u{FFFD}b");
        assert_eq!(storable("ééééé", 3), "ééé");
    }

    #[test]
    fn absent_values_are_left_out_of_the_json() {
        let outcome = Outcome {
            id: 7,
            attempt: 2,
            outcome: AttemptOutcome::Transient,
            next: NextState::Retry(Duration::from_millis(1500)),
            http_status: None,
            provider_message_id: None,
            provider: None,
            error: Some("provider answered HTTP 503".into()),
            segments: None,
            reason: "retry".into(),
        };
        let json = to_json(&[OutcomeRow::new(&outcome)]).unwrap();
        assert_eq!(
            json,
            r#"[{"id":7,"attempt":2,"next_status":"pending","retry_ms":1500,"outcome":"transient","error":"provider answered HTTP 503","reason":"retry"}]"#
        );
    }
}
