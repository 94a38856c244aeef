//! Checks made before any request: a row that fails is declined with a reason
//! a person can read, never silently dropped or truncated.

use crate::domain::ClaimedSms;
use crate::domain::phone::{E164, Region};
use crate::domain::segments::count_segments;

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

/// Normalises the number and counts segments.
pub fn validate(sms: &ClaimedSms, rules: &Rules) -> Result<Ready, Refusal> {
    if sms.message.trim().is_empty() {
        return Err(Refusal {
            reason: "message is empty".into(),
            segments: None,
        });
    }
    let count = count_segments(&sms.message);
    if count.segments > rules.max_segments {
        return Err(Refusal {
            reason: format!(
                "message needs {} segments, more than validation.max_segments = {}",
                count.segments, rules.max_segments
            ),
            segments: Some(count.segments),
        });
    }
    let to = E164::parse(&sms.mobile_no, rules.default_region).map_err(|e| Refusal {
        reason: e.to_string(),
        segments: Some(count.segments),
    })?;
    Ok(Ready {
        to,
        segments: count.segments,
    })
}
