//! The checks a message must pass, shared by the API (before a row is written)
//! and the dispatcher (for rows the platform INSERTs directly): one rule, one
//! wording. A row that fails is declined with a reason a person can read,
//! never silently dropped or truncated.

use crate::domain::ClaimedSms;
use crate::domain::phone::{E164, Region};
use crate::domain::segments::count_segments;
use crate::domain::text::check_message;

/// What a message must satisfy to be sent.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub default_region: Option<Region>,
    pub max_segments: u32,
}

/// A claimed message that passed validation.
#[derive(Debug)]
pub struct Ready {
    pub to: E164,
    pub segments: u32,
}

/// Why a message cannot be sent, and its segment count when known.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub segments: Option<u32>,
}

/// Checks the text and its length; returns its segment count.
pub fn validate_message(message: &str, rules: &Rules) -> Result<u32, Refusal> {
    check_message(message).map_err(|e| Refusal {
        reason: e.to_string(),
        segments: None,
    })?;
    let count = count_segments(message);
    if count.segments > rules.max_segments {
        return Err(Refusal {
            reason: format!(
                "message needs {} segments, more than validation.max_segments = {}",
                count.segments, rules.max_segments
            ),
            segments: Some(count.segments),
        });
    }
    Ok(count.segments)
}

/// Checks the text, normalises the number and counts segments.
pub fn validate(sms: &ClaimedSms, rules: &Rules) -> Result<Ready, Refusal> {
    let segments = validate_message(&sms.message, rules)?;
    let to = E164::parse(&sms.mobile_no, rules.default_region).map_err(|e| Refusal {
        reason: e.to_string(),
        segments: Some(segments),
    })?;
    Ok(Ready { to, segments })
}
