//! What each attempt's end means for its row, from `domain::outcome::settle`,
//! with one log line per decision worth an operator's attention.

use crate::domain::outcome::{self, AttemptEnd};
use crate::domain::phone::mask;
use crate::domain::{AttemptOutcome, ClaimedSms, NextState, Outcome};

use super::Options;

/// Applies the outcome model to one attempt and logs what it decided.
pub(super) fn settle(options: &Options, sms: &ClaimedSms, end: AttemptEnd<'_>) -> Outcome {
    let rules = outcome::Rules {
        retry: &options.retry,
        guarantee: options.guarantee,
    };
    let outcome = outcome::settle(sms, end, rules, rand::random::<f64>());
    log_outcome(sms, &outcome);
    outcome
}

/// One log line per decision worth an operator's attention (an accepted send is not).
fn log_outcome(sms: &ClaimedSms, o: &Outcome) {
    let error = o.error.as_deref().unwrap_or_default();
    match (o.outcome, o.next) {
        (AttemptOutcome::Invalid, _) => {
            tracing::info!(sms_id = sms.id, to = %mask(&sms.mobile_no), reason = error, "declined before sending");
        }
        (_, NextState::Declined) => {
            tracing::info!(sms_id = sms.id, attempt = sms.attempt, to = %mask(&sms.mobile_no), error, "declined by provider");
        }
        (AttemptOutcome::Unknown, NextState::Retry(after)) => {
            tracing::warn!(sms_id = sms.id, attempt = sms.attempt, error, retry_in = ?after, "the provider may have this message; sending again (at-least-once)");
        }
        (_, NextState::Retry(after)) => {
            tracing::info!(sms_id = sms.id, attempt = sms.attempt, error, retry_in = ?after, "transient failure; will retry");
        }
        (_, NextState::Failed) if error.starts_with("outcome unknown") => {
            tracing::warn!(
                sms_id = sms.id,
                attempt = sms.attempt,
                error,
                "the provider may have this message; failed without resending (at-most-once)"
            );
        }
        (_, NextState::Failed) => {
            tracing::warn!(
                sms_id = sms.id,
                attempt = sms.attempt,
                error,
                "attempts exhausted"
            );
        }
        (_, NextState::Sent) => {}
    }
}
