//! Pure types of the SMS outbox: no I/O here.

pub mod opt_out;
pub mod outcome;
pub mod phone;
pub mod report;
pub mod retry;
pub mod segments;
pub mod status;
pub mod text;
pub mod validation;

use std::time::Duration;

use time::OffsetDateTime;

pub use status::Status;

/// Who an SMS is for: a client or a staff member, never a raw number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    Client(i64),
    Staff(i64),
}

/// A new message to enqueue, as the platform would INSERT it.
#[derive(Debug, Clone)]
pub struct NewSms {
    pub recipient: Recipient,
    /// The number as it was at creation time, kept for traceability.
    pub mobile_no: String,
    pub message: String,
    pub not_before: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    /// A client-chosen key (POST /sms `Idempotency-Key`): a retried request finds the first row.
    pub idempotency_key: Option<String>,
}

/// A row this instance claimed: status `sending`, leased to us for `attempt`.
#[derive(Clone)]
pub struct ClaimedSms {
    pub id: i64,
    pub attempt: u32,
    pub mobile_no: String,
    pub message: String,
    /// Random, made at the first claim and kept across retries: what a
    /// provider's idempotency key is built from.
    pub send_key: String,
}

impl std::fmt::Debug for ClaimedSms {
    // Never print the number or the body.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedSms")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("to", &phone::mask(&self.mobile_no))
            .finish_non_exhaustive()
    }
}

/// How one attempt ended, as stored in `sms_attempt.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The provider accepted the message.
    Accepted,
    /// A failure worth retrying (network, timeout, 408/429/5xx).
    Transient,
    /// The provider refused the message for good.
    Permanent,
    /// Validation refused it before any request was made.
    Invalid,
    /// The lease expired before an outcome was recorded (crash or hang).
    Abandoned,
    /// Shutdown cut the request short; it may or may not have reached the provider.
    Interrupted,
    /// The request was written but its answer was lost (timeout, connection
    /// reset): the provider may have the message.
    Unknown,
}

impl AttemptOutcome {
    /// The name stored in `sms_attempt.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Accepted => "accepted",
            AttemptOutcome::Transient => "transient",
            AttemptOutcome::Permanent => "permanent",
            AttemptOutcome::Invalid => "invalid",
            AttemptOutcome::Abandoned => "abandoned",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Unknown => "unknown",
        }
    }
}

/// The status a message moves to after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NextState {
    Sent,
    /// Back to `pending`, due again after this delay.
    Retry(Duration),
    Declined,
    Failed,
}

impl NextState {
    /// The status this leads to.
    pub fn status(self) -> Status {
        match self {
            NextState::Sent => Status::Sent,
            NextState::Retry(_) => Status::Pending,
            NextState::Declined => Status::Declined,
            NextState::Failed => Status::Failed,
        }
    }
}

/// The recorded result of one attempt, written back fenced by (status, attempt, lease owner).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: i64,
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    pub next: NextState,
    pub http_status: Option<u16>,
    pub provider_message_id: Option<String>,
    /// The provider instance the attempt went to (its `[provider.<name>]`
    /// section); `None` when validation refused the message first.
    pub provider: Option<String>,
    /// What went wrong, readable by an operator; never contains the number or body.
    pub error: Option<String>,
    pub segments: Option<u32>,
    /// Why the status changed, for `sms_event.reason`.
    pub reason: String,
}

/// A message as stored, for queries and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct SmsRecord {
    pub id: i64,
    pub client_id: Option<i64>,
    pub staff_id: Option<i64>,
    pub mobile_no: String,
    pub message: String,
    pub status: Status,
    pub attempts: u32,
    pub segments: Option<u32>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub not_before: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    pub next_attempt_at: Option<OffsetDateTime>,
    pub locked_by: Option<String>,
    pub lease_expires_at: Option<OffsetDateTime>,
    pub sent_at: Option<OffsetDateTime>,
    pub delivered_at: Option<OffsetDateTime>,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
}

/// One row of `sms_attempt`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub instance: String,
    pub started_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    pub outcome: Option<String>,
    pub http_status: Option<u16>,
    pub provider_message_id: Option<String>,
    pub error: Option<String>,
    /// The provider this attempt went to, when one was recorded.
    pub provider: Option<String>,
}

/// One row of `sms_event`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub from_status: Status,
    pub to_status: Status,
    pub occurred_at: OffsetDateTime,
    pub reason: String,
}
