//! `/sms`: list, look up and create messages.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::read_json;
use super::settings::Scope;
use crate::domain::phone::E164;
use crate::domain::validation::validate_message;
use crate::domain::{AttemptRecord, EventRecord, NewSms, Recipient, SmsRecord, Status};
use crate::store::{Lookup, OrderBy, Paging, SmsFilter, SmsQuery};

/// A message as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SmsItem {
    pub id: i64,
    pub client_id: Option<i64>,
    pub staff_id: Option<i64>,
    /// The number as it was on record when the message was created.
    pub mobile_no: String,
    pub message: String,
    #[schema(value_type = String, example = "sent")]
    pub status: Status,
    /// Sends so far, the current one included.
    pub attempts: u32,
    pub segments: Option<u32>,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
}

fn utc(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(time::UtcOffset::UTC)
}

impl From<SmsRecord> for SmsItem {
    fn from(r: SmsRecord) -> Self {
        SmsItem {
            id: r.id,
            client_id: r.client_id,
            staff_id: r.staff_id,
            mobile_no: r.mobile_no,
            message: r.message,
            status: r.status,
            attempts: r.attempts,
            segments: r.segments,
            created_at: utc(r.created_at),
            updated_at: utc(r.updated_at),
            sent_at: r.sent_at.map(utc),
            delivered_at: r.delivered_at.map(utc),
            provider_message_id: r.provider_message_id,
            last_error: r.last_error,
        }
    }
}

/// One page of `GET /sms`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmsPage {
    /// Rows matching the filters (offset paging); null with cursor paging.
    pub total_filtered_records: Option<u64>,
    pub page_items: Vec<SmsItem>,
    /// Cursor paging: pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One send attempt.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptItem {
    pub attempt: u32,
    /// The smsrelay instance that made it.
    pub instance: String,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// accepted, transient, permanent, invalid, abandoned or interrupted; null while in flight.
    pub outcome: Option<String>,
    pub http_status: Option<u16>,
    pub provider_message_id: Option<String>,
    pub error: Option<String>,
    /// The provider the request went to (its `[provider.<name>]`, so with
    /// `provider.order` it shows a failover); null when none was asked.
    pub provider: Option<String>,
}

impl From<AttemptRecord> for AttemptItem {
    fn from(a: AttemptRecord) -> Self {
        AttemptItem {
            attempt: a.attempt,
            instance: a.instance,
            started_at: utc(a.started_at),
            finished_at: a.finished_at.map(utc),
            outcome: a.outcome,
            http_status: a.http_status,
            provider_message_id: a.provider_message_id,
            error: a.error,
            provider: a.provider,
        }
    }
}

/// One status transition.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusChange {
    #[schema(value_type = String)]
    pub from: Status,
    #[schema(value_type = String)]
    pub to: Status,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub reason: String,
}

impl From<EventRecord> for StatusChange {
    fn from(e: EventRecord) -> Self {
        StatusChange {
            from: e.from_status,
            to: e.to_status,
            at: utc(e.occurred_at),
            reason: e.reason,
        }
    }
}

/// A message with its whole history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmsDetail {
    #[serde(flatten)]
    pub item: SmsItem,
    /// Every attempt, oldest first.
    pub attempt_history: Vec<AttemptItem>,
    /// Every status transition, oldest first.
    pub status_history: Vec<StatusChange>,
}

/// `POST /sms`: for a client OR a staff member, never a raw number.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSmsRequest {
    pub message: String,
    #[serde(default, deserialize_with = "whole_number")]
    pub client_id: Option<i64>,
    #[serde(default, deserialize_with = "whole_number")]
    pub staff_id: Option<i64>,
}

/// An integer as JSON Schema counts one: `7` and `7.0` alike (the OpenAPI
/// document says `integer`), but never a fraction or a float too large to be exact.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    number
        .as_i64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= EXACT)
                // Exact: a whole number of at most 2^53 converts without loss.
                .map(|f| f as i64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("must be a whole number from 1 to 2^63-1"))
}

/// The reply to `POST /sms`: the new message, not yet sent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedSms {
    pub resource_id: i64,
    #[serde(flatten)]
    pub item: SmsItem,
}

/// Query parameters of `GET /sms` (documentation; parsing is `parse_list_query`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ListParams {
    /// Rows to skip (offset paging), at most `api.max_offset` (10000 by default; deeper: use `cursor`). Not with `cursor`.
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<u64>,
    /// Page size; default `api.default_limit` (200), larger values are capped at `api.max_limit`.
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<u32>,
    /// Offset paging; cursor paging orders by id (only `id` with `cursor`).
    order_by: Option<String>,
    /// ASC or DESC, in any letter case; with `cursor`, the cursor's own direction.
    sort_order: Option<String>,
    #[param(minimum = 1)]
    client_id: Option<i64>,
    #[param(minimum = 1)]
    staff_id: Option<i64>,
    /// One status or several comma-separated; the parameter may be repeated.
    status: Option<Vec<String>>,
    /// Exact match on the stored number.
    mobile_no: Option<String>,
    /// RFC 3339 timestamp or YYYY-MM-DD (inclusive), UTC years 1000 to 9999.
    created_from: Option<String>,
    /// RFC 3339 timestamp or YYYY-MM-DD (inclusive: a date means the whole day), UTC years 1000 to 9999.
    created_to: Option<String>,
    /// Cursor paging: empty for the first page, then the previous page's `nextCursor`. Not with `offset`.
    cursor: Option<String>,
}

/// Every query parameter `GET /sms` accepts.
pub const LIST_PARAMETERS: [&str; 11] = [
    "offset",
    "limit",
    "orderBy",
    "sortOrder",
    "clientId",
    "staffId",
    "status",
    "mobileNo",
    "createdFrom",
    "createdTo",
    "cursor",
];

fn bad(name: &str, value: &str, message: impl Into<String>) -> ApiError {
    ApiError::parameter(name, Some(value.to_owned()), message)
}

/// Largest accepted `offset`: every database takes it as a signed 64-bit number.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

/// A number written the one canonical way: decimal digits, no sign, no leading zero.
fn canonical_number(value: &str) -> Option<u64> {
    let canonical = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    canonical.then(|| value.parse().ok()).flatten()
}

/// Parses a positive id (1 to 2^63-1), written canonically: `01` and `+1` are not SMS 1.
fn parse_id(name: &str, value: &str) -> Result<i64, ApiError> {
    canonical_number(value)
        .and_then(|n| i64::try_from(n).ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            bad(
                name,
                value,
                format!(
                    "{name} must be an integer from 1 to {}, digits only",
                    i64::MAX
                ),
            )
        })
}

/// The earliest instant a date filter may name: MySQL's DATETIME starts at year 1000.
const EARLIEST: OffsetDateTime = time::macros::datetime!(1000-01-01 0:00 UTC);
/// The latest instant a date filter may name: DATETIME ends with year 9999.
const LATEST: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59.999_999 UTC);

/// RFC 3339, or a date meaning its first instant, in UTC and within what every
/// database stores. With `end_of_day` it is the exclusive upper bound just after
/// the instant or the day; `None` when nothing storable lies beyond it.
fn parse_instant(
    name: &str,
    value: &str,
    end_of_day: bool,
) -> Result<Option<OffsetDateTime>, ApiError> {
    let out_of_range = || {
        bad(
            name,
            value,
            format!("{name} must lie between 1000-01-01 and 9999-12-31 (UTC)"),
        )
    };
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let (first, next) = if let Ok(t) = OffsetDateTime::parse(value, &Rfc3339) {
        let t = t
            .checked_to_offset(time::UtcOffset::UTC)
            .ok_or_else(out_of_range)?;
        (t, t.checked_add(time::Duration::microseconds(1)))
    } else if let Ok(date) = time::Date::parse(value, &format) {
        let first = date.midnight().assume_utc();
        (first, date.next_day().map(|d| d.midnight().assume_utc()))
    } else {
        return Err(bad(
            name,
            value,
            format!("{name} must be an RFC 3339 timestamp or a date (YYYY-MM-DD)"),
        ));
    };
    if !(EARLIEST..=LATEST).contains(&first) {
        return Err(out_of_range());
    }
    Ok(if end_of_day {
        next.filter(|n| *n <= LATEST)
    } else {
        Some(first)
    })
}

/// The `orderBy` names, as documented.
pub const ORDER_BY: [(&str, OrderBy); 7] = [
    ("id", OrderBy::Id),
    ("createdAt", OrderBy::CreatedAt),
    ("updatedAt", OrderBy::UpdatedAt),
    ("sentAt", OrderBy::SentAt),
    ("status", OrderBy::Status),
    ("clientId", OrderBy::ClientId),
    ("staffId", OrderBy::StaffId),
];

fn parse_order_by(value: &str) -> Result<OrderBy, ApiError> {
    ORDER_BY
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, order)| *order)
        .ok_or_else(|| {
            let names: Vec<&str> = ORDER_BY.iter().map(|(name, _)| *name).collect();
            bad(
                "orderBy",
                value,
                format!("orderBy must be one of {}", names.join(", ")),
            )
        })
}

/// `sortOrder`, in any letter case.
pub const SORT_ORDER_PATTERN: &str = "^([Aa][Ss][Cc]|[Dd][Ee][Ss][Cc])$";

/// A cursor: the direction (`a`scending or `d`escending) and the last id seen.
/// Written plainly so that the OpenAPI document can say exactly what is accepted.
pub const CURSOR_PATTERN: &str = "^([ad](0|[1-9][0-9]{0,18}))?$";

fn encode_cursor(descending: bool, last_id: i64) -> String {
    format!("{}{last_id}", if descending { 'd' } else { 'a' })
}

/// `None` for the empty cursor (first page), else the direction and the id to continue after.
fn decode_cursor(value: &str) -> Result<Option<(bool, Option<i64>)>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        bad(
            "cursor",
            value,
            "cursor is not one this API issued (use nextCursor as given)",
        )
    };
    let descending = match value.as_bytes().first() {
        Some(b'a') => false,
        Some(b'd') => true,
        _ => return Err(invalid()),
    };
    let digits = &value[1..];
    if digits.len() > 19 {
        return Err(invalid());
    }
    let id = canonical_number(digits).ok_or_else(invalid)?;
    // Beyond the largest id: nothing comes after it ascending, everything does descending.
    let after = match i64::try_from(id) {
        Ok(id) => Some(id),
        Err(_) if descending => None,
        Err(_) => Some(i64::MAX),
    };
    Ok(Some((descending, after)))
}

/// Parses the raw query of `GET /sms`, naming any parameter it refuses;
/// `max_offset` is `api.max_offset`.
pub fn parse_list_query(
    raw: Option<&str>,
    default_limit: u32,
    max_limit: u32,
    max_offset: u64,
) -> Result<SmsQuery, ApiError> {
    let mut filter = SmsFilter::default();
    let mut offset = None;
    let mut limit = None;
    let mut order_by = None;
    let mut sort_order: Option<bool> = None;
    let mut cursor: Option<Option<(bool, Option<i64>)>> = None;
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let (name, value) = (name.as_ref(), value.as_ref());
        if !LIST_PARAMETERS.contains(&name) {
            return Err(ApiError::parameter(
                name,
                None,
                format!(
                    "unknown query parameter {name:?}; accepted: {}",
                    LIST_PARAMETERS.join(", ")
                ),
            ));
        }
        if name != "status" {
            if seen.iter().any(|s| s == name) {
                return Err(bad(name, value, format!("{name} is given more than once")));
            }
            seen.push(name.to_owned());
        }
        match name {
            "offset" => {
                offset = Some(
                    canonical_number(value)
                        .filter(|n| *n <= MAX_OFFSET)
                        .ok_or_else(|| {
                            bad(
                                name,
                                value,
                                format!(
                                    "offset must be an integer from 0 to {MAX_OFFSET}, digits only"
                                ),
                            )
                        })?,
                )
            }
            "limit" => {
                let n = canonical_number(value)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        bad(
                            name,
                            value,
                            format!(
                                "limit must be an integer from 1 to {}, digits only",
                                u32::MAX
                            ),
                        )
                    })?;
                limit = Some(n.min(max_limit));
            }
            "orderBy" => order_by = Some(parse_order_by(value)?),
            "sortOrder" => {
                sort_order = Some(match value.to_ascii_uppercase().as_str() {
                    "ASC" => false,
                    "DESC" => true,
                    _ => return Err(bad(name, value, "sortOrder must be ASC or DESC")),
                })
            }
            "clientId" => filter.client_id = Some(parse_id(name, value)?),
            "staffId" => filter.staff_id = Some(parse_id(name, value)?),
            "status" => {
                for part in value.split(',') {
                    let status = part
                        .parse::<Status>()
                        .map_err(|e| bad(name, part, e.to_string()))?;
                    if !filter.statuses.contains(&status) {
                        filter.statuses.push(status);
                    }
                }
            }
            // Personal data: never echoed back in an error.
            "mobileNo" => {
                if value.trim().is_empty() {
                    return Err(ApiError::parameter(
                        name,
                        None,
                        "mobileNo must not be empty",
                    ));
                }
                if value.chars().any(char::is_control) {
                    return Err(ApiError::parameter(
                        name,
                        None,
                        "mobileNo must not contain control characters",
                    ));
                }
                filter.mobile_no = Some(value.to_owned())
            }
            "createdFrom" => filter.created_from = parse_instant(name, value, false)?,
            "createdTo" => filter.created_to = parse_instant(name, value, true)?,
            "cursor" => cursor = Some(decode_cursor(value)?),
            _ => unreachable!("every accepted parameter is matched above"),
        }
    }
    // createdTo before createdFrom is an empty range: it matches no row.
    let limit = limit.unwrap_or(default_limit.min(max_limit));
    let Some(cursor) = cursor else {
        let offset = offset.unwrap_or(0);
        if offset > max_offset {
            return Err(too_deep(offset, max_offset));
        }
        return Ok(SmsQuery {
            filter,
            order_by: order_by.unwrap_or_default(),
            descending: sort_order.unwrap_or(false),
            paging: Paging::Offset { offset, limit },
        });
    };
    if offset.is_some() {
        return Err(ApiError::parameter(
            "offset",
            None,
            "offset cannot be combined with cursor",
        ));
    }
    if order_by.is_some_and(|o| o != OrderBy::Id) {
        return Err(ApiError::parameter(
            "orderBy",
            None,
            "cursor paging orders by id only",
        ));
    }
    let descending = match (cursor, sort_order) {
        (Some((from_cursor, _)), Some(asked)) if from_cursor != asked => {
            return Err(ApiError::parameter(
                "sortOrder",
                None,
                "sortOrder differs from the cursor's",
            ));
        }
        (Some((from_cursor, _)), _) => from_cursor,
        (None, asked) => asked.unwrap_or(false),
    };
    Ok(SmsQuery {
        filter,
        order_by: OrderBy::Id,
        descending,
        paging: Paging::Keyset {
            after_id: cursor.and_then(|(_, id)| id),
            limit,
        },
    })
}

/// The 400 for an offset beyond `api.max_offset`: the database would read
/// and throw away every row before the page, so deep pages use the cursor.
fn too_deep(offset: u64, max_offset: u64) -> ApiError {
    bad(
        "offset",
        &offset.to_string(),
        format!(
            "offset {offset} is beyond api.max_offset ({max_offset}): the database would read and discard every row before the page; \
             page through deep results with cursor paging instead (cursor= for the first page, then each page's nextCursor)"
        ),
    )
}

/// List messages, filtered and paged.
#[utoipa::path(
    get, path = "/sms", tag = "sms",
    params(ListParams),
    security(("bearer" = ["sms:read"])),
    responses(
        (status = 200, description = "A page of messages", body = SmsPage),
        (status = 400, description = "A query parameter was refused", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks sms:read", body = ErrorBody),
        (status = 503, description = "Database unavailable, or the query ran longer than api.statement_timeout", body = ErrorBody),
    )
)]
pub async fn list_sms(
    caller: Caller,
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<SmsPage>, ApiError> {
    caller.require(Scope::Read)?;
    let query = parse_list_query(
        raw.as_deref(),
        state.default_limit,
        state.max_limit,
        state.max_offset,
    )?;
    let page = state.reads.list(&query).await?;
    let next_cursor = match query.paging {
        Paging::Keyset { .. } if page.has_more => page
            .items
            .last()
            .map(|last| encode_cursor(query.descending, last.id)),
        _ => None,
    };
    Ok(Json(SmsPage {
        total_filtered_records: page.total,
        page_items: page.items.into_iter().map(SmsItem::from).collect(),
        next_cursor,
    }))
}

/// One message with its attempt and status history.
#[utoipa::path(
    get, path = "/sms/{id}", tag = "sms",
    params(("id" = i64, Path, minimum = 1, description = "The message id")),
    security(("bearer" = ["sms:read"])),
    responses(
        (status = 200, description = "The message and its history", body = SmsDetail),
        (status = 400, description = "The id is not a positive integer written with digits only", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks sms:read", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 503, description = "Database unavailable, or the query ran longer than api.statement_timeout", body = ErrorBody),
    )
)]
pub async fn get_sms(
    caller: Caller,
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SmsDetail>, ApiError> {
    caller.require(Scope::Read)?;
    // A segment that is not UTF-8 once decoded (`/sms/%ff`) is refused like any other bad id.
    let id = match id {
        Ok(Path(id)) => parse_id("id", &id)?,
        Err(_) => {
            return Err(ApiError::parameter(
                "id",
                None,
                "id must be an integer from 1 to 9223372036854775807, digits only",
            ));
        }
    };
    let record =
        state.reads.get(id).await?.ok_or_else(|| {
            ApiError::not_found(format!("SMS with identifier {id} does not exist"))
        })?;
    let attempts = state.reads.attempts(id).await?;
    let events = state.reads.events(id).await?;
    Ok(Json(SmsDetail {
        item: record.into(),
        attempt_history: attempts.into_iter().map(AttemptItem::from).collect(),
        status_history: events.into_iter().map(StatusChange::from).collect(),
    }))
}

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The `Idempotency-Key` header, scoped by token (`<name length>:<name>:<key>`)
/// so two callers cannot collide on a key.
fn idempotency_key(headers: &HeaderMap, caller: &Caller) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::parameter(
            "Idempotency-Key",
            None,
            "Idempotency-Key is given more than once",
        ));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::parameter(
                "Idempotency-Key",
                None,
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            )
        })?;
    // Length-prefixed, so no token name and key can spell another pair's scope.
    Ok(Some(format!("{}:{}:{key}", caller.name.len(), caller.name)))
}

/// Queue an SMS to a client or a staff member; the number comes from the platform's records.
#[utoipa::path(
    post, path = "/sms", tag = "sms",
    request_body = NewSmsRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried POST return the first result instead of sending a second SMS")),
    security(("bearer" = ["sms:send"])),
    responses(
        (status = 201, description = "Queued (not yet sent)", body = CreatedSms),
        (status = 400, description = "A field was refused", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks sms:send", body = ErrorBody),
        (status = 404, description = "No such client or staff member", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "No usable mobile number on record, or Idempotency-Key reused for another request", body = ErrorBody),
        (status = 503, description = "Database unavailable, or the query ran longer than api.statement_timeout", body = ErrorBody),
    )
)]
pub async fn create_sms(
    caller: Caller,
    State(state): State<ApiState>,
    request: Request,
) -> Result<Response, ApiError> {
    // Before the body is even read: a token without the scope learns nothing about it.
    caller.require(Scope::Send)?;
    let idempotency_key = idempotency_key(request.headers(), &caller)?;
    let request: NewSmsRequest = read_json(request, state.body_read_timeout).await?;
    let recipient = match (request.client_id, request.staff_id) {
        (Some(_), Some(_)) => {
            let mut error =
                ApiError::parameter("clientId", None, "give clientId or staffId, not both");
            error.errors.push(
                ApiError::parameter("staffId", None, "give clientId or staffId, not both")
                    .errors
                    .remove(0),
            );
            return Err(error);
        }
        (None, None) => {
            return Err(ApiError::parameter(
                "clientId",
                None,
                "clientId or staffId is required",
            ));
        }
        (Some(id), None) => Recipient::Client(parse_id("clientId", &id.to_string())?),
        (None, Some(id)) => Recipient::Staff(parse_id("staffId", &id.to_string())?),
    };
    // The dispatcher applies the same check to rows the platform INSERTs itself.
    validate_message(&request.message, &state.rules)
        .map_err(|refusal| ApiError::parameter("message", None, refusal.reason))?;

    let (who, id) = match recipient {
        Recipient::Client(id) => ("client", id),
        Recipient::Staff(id) => ("staff member", id),
    };
    let mobile_no = match state.store.lookup_mobile(recipient).await? {
        Lookup::NotFound => return Err(ApiError::not_found(format!("{who} {id} does not exist"))),
        Lookup::NoNumber => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "error.msg.sms.no.mobile.number",
                format!("{who} {id} has no mobile number on record"),
            ));
        }
        Lookup::Found(number) => number,
    };
    if let Err(e) = E164::parse(&mobile_no, state.rules.default_region) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "error.msg.sms.invalid.mobile.number",
            format!("the mobile number on record for {who} {id} cannot be used: {e}"),
        ));
    }
    let enqueued = state
        .store
        .enqueue(&NewSms {
            recipient,
            mobile_no,
            message: request.message.clone(),
            not_before: None,
            expires_at: None,
            idempotency_key,
        })
        .await?;
    // From the primary: a replica may not have the row yet.
    let record = state
        .store
        .get(enqueued.id)
        .await?
        .ok_or_else(ApiError::internal)?;
    if !enqueued.created {
        let same_recipient = match recipient {
            Recipient::Client(id) => record.client_id == Some(id),
            Recipient::Staff(id) => record.staff_id == Some(id),
        };
        if !same_recipient || record.message != request.message {
            return Err(ApiError::parameter(
                "Idempotency-Key",
                None,
                "this Idempotency-Key was already used for a different request",
            )
            .with_status(StatusCode::UNPROCESSABLE_ENTITY));
        }
    } else {
        state.wake.notify_one();
        tracing::info!(sms_id = record.id, caller = %caller.name, "SMS queued through the API");
    }
    let location = format!("/sms/{}", record.id);
    let body = CreatedSms {
        resource_id: record.id,
        item: record.into(),
    };
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response();
    if !enqueued.created {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<SmsQuery, ApiError> {
        parse_list_query(Some(q), 200, 1000, 10_000)
    }

    #[test]
    fn an_integral_float_is_the_whole_number_it_names() {
        // Found by the contract test: a best-effort float parse read this one
        // a half off and refused a schema-valid id.
        for (body, id) in [
            (r#"{"clientId": 7.0, "message": "x"}"#, 7),
            (
                r#"{"clientId": 4012059448757838.0, "message": "x"}"#,
                4_012_059_448_757_838,
            ),
        ] {
            let request: NewSmsRequest = serde_json::from_str(body).unwrap();
            assert_eq!(request.client_id, Some(id), "{body}");
        }
        let fraction =
            serde_json::from_str::<NewSmsRequest>(r#"{"clientId": 7.5, "message": "x"}"#);
        assert!(fraction.is_err());
    }

    #[test]
    fn defaults_are_offset_paging_by_id() {
        let q = parse("").unwrap();
        assert_eq!(
            q.paging,
            Paging::Offset {
                offset: 0,
                limit: 200
            }
        );
        assert_eq!((q.order_by, q.descending), (OrderBy::Id, false));
    }

    #[test]
    fn statuses_repeat_or_comma_separate() {
        let q = parse("status=pending,sent&status=failed&status=sent").unwrap();
        assert_eq!(
            q.filter.statuses,
            [Status::Pending, Status::Sent, Status::Failed]
        );
    }

    #[test]
    fn refusals_name_the_parameter() {
        for (query, parameter) in [
            ("orderBy=id;DROP TABLE sms", "orderBy"),
            ("orderBy=message", "orderBy"),
            ("limit=0", "limit"),
            ("limit=ten", "limit"),
            ("offset=-1", "offset"),
            ("clientId=abc", "clientId"),
            ("status=queued", "status"),
            ("sortOrder=UP", "sortOrder"),
            ("createdFrom=yesterday", "createdFrom"),
            ("cursor=bm9wZQ", "cursor"),
            ("cursor=&offset=5", "offset"),
            ("cursor=&orderBy=status", "orderBy"),
            ("nonsense=1", "nonsense"),
            ("limit=5&limit=6", "limit"),
        ] {
            let error = parse(query).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(error.errors[0].parameter_name, parameter, "{query}");
        }
    }

    #[test]
    fn limit_is_capped_and_dates_cover_whole_days() {
        let q = parse("limit=5000&createdFrom=2026-11-01&createdTo=2026-11-01").unwrap();
        assert_eq!(
            q.paging,
            Paging::Offset {
                offset: 0,
                limit: 1000
            }
        );
        assert_eq!(
            q.filter.created_from,
            Some(time::macros::datetime!(2026-11-01 0:00 UTC))
        );
        assert_eq!(
            q.filter.created_to,
            Some(time::macros::datetime!(2026-11-02 0:00 UTC))
        );
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = encode_cursor(true, 42);
        let q = parse(&format!("cursor={cursor}&limit=10")).unwrap();
        assert!(q.descending);
        assert_eq!(
            q.paging,
            Paging::Keyset {
                after_id: Some(42),
                limit: 10
            }
        );
        let first = parse("cursor=&sortOrder=DESC").unwrap();
        assert_eq!(
            first.paging,
            Paging::Keyset {
                after_id: None,
                limit: 200
            }
        );
    }
}
