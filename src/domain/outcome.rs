//! The one outcome model: how an attempt ended (refused by validation,
//! answered by a provider, or lost with its send task) becomes the next state,
//! the attempt's recorded outcome and the reason an operator reads. Pure: the
//! retry policy and the jitter are passed in, so every case can be tested
//! without a clock, a random source or a provider.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::retry::{RetryDecision, RetryPolicy};
use super::{AttemptOutcome, ClaimedSms, NextState, Outcome};

/// What the daemon promises when it cannot tell whether a send reached the
/// provider (`[dispatch] guarantee`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Every message is delivered unless its attempts run out; an ambiguous
    /// send is retried, so the provider may receive it twice.
    #[default]
    AtLeastOnce,
    /// No message is ever sent twice; an ambiguous send ends `failed` with
    /// `outcome unknown`, for a person to decide.
    AtMostOnce,
}

/// How a provider answered one send.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Accepted for delivery.
    Accepted {
        provider_message_id: Option<String>,
        http_status: Option<u16>,
    },
    /// Worth retrying later; `retry_after` is the provider's own request, if any.
    Transient {
        error: String,
        http_status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Refused for good.
    Permanent {
        error: String,
        http_status: Option<u16>,
    },
    /// The request was written but no answer came (timeout, connection reset
    /// after sending): the provider may have the message.
    Unknown { error: String },
    /// The provider cannot take anything right now, through no fault of this
    /// message: its setup is wrong (credentials, URL, account), or the health
    /// gate is holding sends back. Never declines or fails the message.
    ProviderUnavailable {
        error: String,
        http_status: Option<u16>,
        cause: Unavailable,
    },
}

/// Why a provider cannot take messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The provider refused our setup (401/403, a wrong send URL, a suspended
    /// account): an operator must fix the configuration.
    Configuration,
    /// The health gate is holding sends back (paused, or circuit open); the
    /// provider was not asked.
    Paused,
    /// The health gate is holding sends back for a provider's Retry-After;
    /// the provider was not asked.
    Throttled,
}

/// Why a claimed message goes back to `pending` with its attempt undone:
/// nothing the provider decided about it (the event's reason says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    /// Shutdown began before its request started.
    Shutdown,
    /// The provider refused our configuration, or its health gate held the send back.
    ProviderPaused,
    /// The provider answered 429, or its gate is waiting out a Retry-After.
    Throttled,
    /// The opt-out list could not be read, so the batch was not sent.
    OptOutsUnread,
}

impl ReleaseReason {
    /// The reason on the `sending -> pending` event.
    pub fn event_reason(self) -> &'static str {
        match self {
            ReleaseReason::Shutdown => "released unsent at shutdown",
            ReleaseReason::ProviderPaused => {
                "returned unsent, attempt not spent: provider paused (configuration refused or circuit open)"
            }
            ReleaseReason::Throttled => {
                "returned unsent, attempt not spent: provider throttling (HTTP 429 / Retry-After)"
            }
            ReleaseReason::OptOutsUnread => {
                "returned unsent, attempt not spent: the opt-out list could not be read"
            }
        }
    }
}

/// How the reason of a message declined because its recipient unsubscribed
/// begins (the `last_error` and event reason an operator reads).
pub const OPTED_OUT: &str = "opted-out";

impl SendOutcome {
    /// The recipient unsubscribed (replied STOP, is on the provider's
    /// blacklist): a permanent refusal whose error begins with [`OPTED_OUT`].
    /// The dispatcher records the number, so later messages to it are
    /// declined before any send.
    pub fn opted_out(detail: impl std::fmt::Display, http_status: Option<u16>) -> Self {
        SendOutcome::Permanent {
            error: format!("{OPTED_OUT}: {detail}"),
            http_status,
        }
    }

    /// Whether this is a provider's "recipient unsubscribed" answer ([`Self::opted_out`]).
    pub fn is_opted_out(&self) -> bool {
        matches!(self, SendOutcome::Permanent { error, .. } if error.starts_with(OPTED_OUT))
    }

    /// Whether the health gate held the send back: the provider was never asked.
    pub fn was_held_back(&self) -> bool {
        matches!(
            self,
            SendOutcome::ProviderUnavailable {
                cause: Unavailable::Paused | Unavailable::Throttled,
                ..
            }
        )
    }

    /// Whether the provider is throttling us as a whole (HTTP 429).
    pub fn is_throttle(&self) -> bool {
        matches!(
            self,
            SendOutcome::Transient {
                http_status: Some(429),
                ..
            }
        )
    }

    /// Why this answer hands the message back to `pending` with its attempt
    /// undone, if it does: the gate held it back, or the provider refused us
    /// (our configuration, or a 429) rather than the message. None: the
    /// answer is settled as an attempt.
    pub fn unspent(&self) -> Option<ReleaseReason> {
        match self {
            SendOutcome::ProviderUnavailable {
                cause: Unavailable::Throttled,
                ..
            } => Some(ReleaseReason::Throttled),
            SendOutcome::ProviderUnavailable { .. } => Some(ReleaseReason::ProviderPaused),
            answer if answer.is_throttle() => Some(ReleaseReason::Throttled),
            _ => None,
        }
    }
}

/// Why a send task ended without the provider's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Shutdown cut the request short; the provider may have received it.
    Interrupted,
    /// The task failed (a panic); nothing says whether the request went out.
    Crashed,
}

/// How one claimed attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEnd<'a> {
    /// Validation refused the message; no request was made.
    Refused {
        reason: String,
        segments: Option<u32>,
    },
    /// The recipient is on the opt-out list; no request was made.
    OptedOut { segments: u32 },
    /// The provider named `provider` answered.
    Answered {
        provider: &'a str,
        segments: u32,
        answer: SendOutcome,
    },
    /// The request to `provider` started but its answer was lost.
    Lost {
        provider: &'a str,
        segments: u32,
        cause: Lost,
    },
}

/// How attempts are retried, and what an ambiguous one leads to.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub retry: &'a RetryPolicy,
    pub guarantee: Guarantee,
}

/// The next state, attempt outcome and reason for `sms` after `end`.
/// `jitter` in [0, 1] places a retry under the policy's ceiling.
pub fn settle(sms: &ClaimedSms, end: AttemptEnd<'_>, rules: Rules<'_>, jitter: f64) -> Outcome {
    let base = Outcome {
        id: sms.id,
        attempt: sms.attempt,
        outcome: AttemptOutcome::Accepted,
        next: NextState::Sent,
        http_status: None,
        provider_message_id: None,
        provider: None,
        error: None,
        segments: None,
        reason: String::new(),
    };
    match end {
        AttemptEnd::Refused { reason, segments } => Outcome {
            outcome: AttemptOutcome::Invalid,
            next: NextState::Declined,
            segments,
            reason: format!("invalid: {reason}"),
            error: Some(reason),
            ..base
        },
        AttemptEnd::OptedOut { segments } => {
            let error = format!(
                "{OPTED_OUT}: the recipient unsubscribed earlier (a provider said so); not sent"
            );
            Outcome {
                outcome: AttemptOutcome::Invalid,
                next: NextState::Declined,
                segments: Some(segments),
                reason: error.clone(),
                error: Some(error),
                ..base
            }
        }
        AttemptEnd::Answered {
            provider,
            segments,
            answer,
        } => {
            let base = Outcome {
                provider: Some(provider.to_owned()),
                segments: Some(segments),
                ..base
            };
            match answer {
                SendOutcome::Accepted {
                    provider_message_id,
                    http_status,
                } => Outcome {
                    http_status,
                    provider_message_id,
                    reason: format!("accepted by provider {provider}"),
                    ..base
                },
                SendOutcome::Permanent { error, http_status } => Outcome {
                    outcome: AttemptOutcome::Permanent,
                    next: NextState::Declined,
                    http_status,
                    reason: error.clone(),
                    error: Some(error),
                    ..base
                },
                SendOutcome::Transient {
                    error,
                    http_status,
                    retry_after,
                } => retry_or_fail(
                    Outcome {
                        outcome: AttemptOutcome::Transient,
                        http_status,
                        ..base
                    },
                    error,
                    retry_after,
                    rules.retry,
                    jitter,
                ),
                SendOutcome::Unknown { error } => ambiguous(
                    Outcome {
                        outcome: AttemptOutcome::Unknown,
                        ..base
                    },
                    error,
                    rules,
                    jitter,
                ),
                // The dispatcher hands these back unspent (`SendOutcome::unspent`)
                // and never settles them; should one be settled anyway, it is the
                // setup's fault: retried with the error on the row.
                SendOutcome::ProviderUnavailable {
                    error, http_status, ..
                } => retry_or_fail(
                    Outcome {
                        outcome: AttemptOutcome::Transient,
                        http_status,
                        ..base
                    },
                    error,
                    None,
                    rules.retry,
                    jitter,
                ),
            }
        }
        AttemptEnd::Lost {
            provider,
            segments,
            cause,
        } => {
            let (outcome, error) = match cause {
                Lost::Interrupted => (
                    AttemptOutcome::Interrupted,
                    "interrupted by shutdown; the provider may have received it",
                ),
                Lost::Crashed => (AttemptOutcome::Transient, "send task failed unexpectedly"),
            };
            let base = Outcome {
                outcome,
                provider: Some(provider.to_owned()),
                segments: Some(segments),
                ..base
            };
            ambiguous(base, error.to_owned(), rules, jitter)
        }
    }
}

/// An attempt that may have reached the provider: retried under
/// at-least-once, `failed` with `outcome unknown` under at-most-once.
fn ambiguous(base: Outcome, error: String, rules: Rules<'_>, jitter: f64) -> Outcome {
    match rules.guarantee {
        Guarantee::AtLeastOnce => retry_or_fail(base, error, None, rules.retry, jitter),
        Guarantee::AtMostOnce => {
            let error = format!("outcome unknown: {error}");
            Outcome {
                next: NextState::Failed,
                reason: format!("{error}; not sent again (dispatch.guarantee = at-most-once)"),
                error: Some(error),
                ..base
            }
        }
    }
}

/// A failure worth retrying: back to `pending` after the policy's delay, or
/// `failed` once the attempts are used up.
fn retry_or_fail(
    base: Outcome,
    error: String,
    retry_after: Option<Duration>,
    policy: &RetryPolicy,
    jitter: f64,
) -> Outcome {
    match policy.after_transient(base.attempt, jitter, retry_after) {
        RetryDecision::RetryAfter(after) => Outcome {
            next: NextState::Retry(after),
            reason: format!(
                "{error}; retry in {}",
                humantime::format_duration(round_to_millis(after))
            ),
            error: Some(error),
            ..base
        },
        RetryDecision::GiveUp => Outcome {
            next: NextState::Failed,
            reason: format!("attempts exhausted after {} sends: {error}", base.attempt),
            error: Some(error),
            ..base
        },
    }
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
            multiplier: 2.0,
        }
    }

    fn least(retry: &RetryPolicy) -> Rules<'_> {
        Rules {
            retry,
            guarantee: Guarantee::AtLeastOnce,
        }
    }

    fn most(retry: &RetryPolicy) -> Rules<'_> {
        Rules {
            retry,
            guarantee: Guarantee::AtMostOnce,
        }
    }

    fn claimed(attempt: u32) -> ClaimedSms {
        ClaimedSms {
            id: 42,
            attempt,
            mobile_no: "+254700000001".into(),
            message: "hello".into(),
            send_key: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    fn answered(answer: SendOutcome) -> AttemptEnd<'static> {
        AttemptEnd::Answered {
            provider: "webhook",
            segments: 1,
            answer,
        }
    }

    fn transient(retry_after: Option<Duration>) -> SendOutcome {
        SendOutcome::Transient {
            error: "provider answered HTTP 503".into(),
            http_status: Some(503),
            retry_after,
        }
    }

    #[test]
    fn accepted_is_sent_and_names_the_provider() {
        let o = settle(
            &claimed(1),
            answered(SendOutcome::Accepted {
                provider_message_id: Some("p-1".into()),
                http_status: Some(200),
            }),
            least(&policy()),
            0.5,
        );
        assert_eq!((o.id, o.attempt), (42, 1));
        assert_eq!(o.outcome, AttemptOutcome::Accepted);
        assert_eq!(o.next, NextState::Sent);
        assert_eq!(o.provider.as_deref(), Some("webhook"));
        assert_eq!(o.provider_message_id.as_deref(), Some("p-1"));
        assert_eq!(o.http_status, Some(200));
        assert_eq!(o.segments, Some(1));
        assert_eq!(o.error, None);
        assert_eq!(o.reason, "accepted by provider webhook");
    }

    #[test]
    fn permanent_is_declined_with_the_providers_error() {
        let o = settle(
            &claimed(1),
            answered(SendOutcome::Permanent {
                error: "provider refused the message: HTTP 400".into(),
                http_status: Some(400),
            }),
            least(&policy()),
            0.5,
        );
        assert_eq!(o.outcome, AttemptOutcome::Permanent);
        assert_eq!(o.next, NextState::Declined);
        assert_eq!(o.http_status, Some(400));
        assert_eq!(
            o.error.as_deref(),
            Some("provider refused the message: HTTP 400")
        );
        assert_eq!(o.reason, "provider refused the message: HTTP 400");
    }

    #[test]
    fn refusal_is_declined_without_a_provider() {
        let end = AttemptEnd::Refused {
            reason: "message is empty".into(),
            segments: None,
        };
        let o = settle(&claimed(2), end, least(&policy()), 0.5);
        assert_eq!(o.outcome, AttemptOutcome::Invalid);
        assert_eq!(o.next, NextState::Declined);
        assert_eq!(o.provider, None);
        assert_eq!(o.error.as_deref(), Some("message is empty"));
        assert_eq!(o.reason, "invalid: message is empty");
    }

    #[test]
    fn an_opted_out_recipient_is_declined_without_a_provider() {
        let o = settle(
            &claimed(1),
            AttemptEnd::OptedOut { segments: 2 },
            least(&policy()),
            0.5,
        );
        assert_eq!(o.next, NextState::Declined);
        assert_eq!(o.outcome, AttemptOutcome::Invalid);
        assert_eq!(o.provider, None);
        assert_eq!(o.segments, Some(2));
        assert!(o.reason.starts_with("opted-out: "), "{}", o.reason);
        assert!(
            SendOutcome::opted_out("Twilio error 21610", Some(400)).is_opted_out()
                && !SendOutcome::Permanent {
                    error: "refused".into(),
                    http_status: Some(400)
                }
                .is_opted_out()
        );
    }

    #[test]
    fn transient_retries_with_the_jittered_delay() {
        let o = settle(
            &claimed(1),
            answered(transient(None)),
            least(&policy()),
            0.5,
        );
        assert_eq!(o.outcome, AttemptOutcome::Transient);
        assert_eq!(o.next, NextState::Retry(Duration::from_secs(5)));
        assert_eq!(o.http_status, Some(503));
        assert_eq!(o.reason, "provider answered HTTP 503; retry in 5s");
    }

    #[test]
    fn transient_on_the_last_attempt_fails() {
        let o = settle(
            &claimed(3),
            answered(transient(None)),
            least(&policy()),
            0.5,
        );
        assert_eq!(o.outcome, AttemptOutcome::Transient);
        assert_eq!(o.next, NextState::Failed);
        assert_eq!(
            o.reason,
            "attempts exhausted after 3 sends: provider answered HTTP 503"
        );
    }

    #[test]
    fn interrupted_is_recorded_as_such_and_retried() {
        let end = AttemptEnd::Lost {
            provider: "webhook",
            segments: 2,
            cause: Lost::Interrupted,
        };
        let o = settle(&claimed(1), end, least(&policy()), 1.0);
        assert_eq!(o.outcome, AttemptOutcome::Interrupted);
        assert_eq!(o.next, NextState::Retry(Duration::from_secs(10)));
        assert_eq!(o.provider.as_deref(), Some("webhook"));
        assert_eq!(o.segments, Some(2));
        assert_eq!(
            o.error.as_deref(),
            Some("interrupted by shutdown; the provider may have received it")
        );
    }

    #[test]
    fn crashed_task_counts_as_transient() {
        let end = AttemptEnd::Lost {
            provider: "webhook",
            segments: 1,
            cause: Lost::Crashed,
        };
        let o = settle(&claimed(3), end, least(&policy()), 1.0);
        assert_eq!(o.outcome, AttemptOutcome::Transient);
        assert_eq!(o.next, NextState::Failed);
        assert_eq!(
            o.reason,
            "attempts exhausted after 3 sends: send task failed unexpectedly"
        );
    }

    fn unknown() -> SendOutcome {
        SendOutcome::Unknown {
            error: "no answer within the timeout after the request was sent".into(),
        }
    }

    #[test]
    fn unknown_is_recorded_as_such_and_retried_under_at_least_once() {
        let o = settle(&claimed(1), answered(unknown()), least(&policy()), 1.0);
        assert_eq!(o.outcome, AttemptOutcome::Unknown);
        assert_eq!(o.next, NextState::Retry(Duration::from_secs(10)));
        assert_eq!(o.provider.as_deref(), Some("webhook"));
        assert_eq!(
            o.reason,
            "no answer within the timeout after the request was sent; retry in 10s"
        );
    }

    #[test]
    fn unknown_fails_under_at_most_once_whatever_attempts_are_left() {
        let o = settle(&claimed(1), answered(unknown()), most(&policy()), 1.0);
        assert_eq!(o.outcome, AttemptOutcome::Unknown);
        assert_eq!(o.next, NextState::Failed);
        assert_eq!(
            o.error.as_deref(),
            Some("outcome unknown: no answer within the timeout after the request was sent")
        );
        assert!(o.reason.starts_with("outcome unknown: "), "{}", o.reason);
    }

    #[test]
    fn lost_sends_fail_under_at_most_once() {
        for cause in [Lost::Interrupted, Lost::Crashed] {
            let end = AttemptEnd::Lost {
                provider: "webhook",
                segments: 1,
                cause,
            };
            let o = settle(&claimed(1), end, most(&policy()), 1.0);
            assert_eq!(o.next, NextState::Failed, "{cause:?}");
            assert!(o.reason.starts_with("outcome unknown: "), "{}", o.reason);
        }
        // A transient answer is no ambiguity: it is retried in either mode.
        let o = settle(&claimed(1), answered(transient(None)), most(&policy()), 1.0);
        assert_eq!(o.next, NextState::Retry(Duration::from_secs(10)));
    }

    fn any_end() -> impl Strategy<Value = AttemptEnd<'static>> {
        let answer = prop_oneof![
            Just(SendOutcome::Accepted {
                provider_message_id: None,
                http_status: Some(202)
            }),
            Just(SendOutcome::Permanent {
                error: "refused".into(),
                http_status: Some(422)
            }),
            proptest::option::of(0u64..7200).prop_map(|s| transient(s.map(Duration::from_secs))),
            Just(unknown()),
        ];
        prop_oneof![
            Just(AttemptEnd::Refused {
                reason: "bad number".into(),
                segments: None
            }),
            Just(AttemptEnd::OptedOut { segments: 1 }),
            (answer, 1u32..10).prop_map(|(answer, segments)| AttemptEnd::Answered {
                provider: "webhook",
                segments,
                answer
            }),
            prop_oneof![Just(Lost::Interrupted), Just(Lost::Crashed)].prop_map(|cause| {
                AttemptEnd::Lost {
                    provider: "webhook",
                    segments: 1,
                    cause,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_end_is_consistent(
            attempt in 1u32..6,
            jitter in 0.0f64..=1.0,
            end in any_end(),
            at_most_once in proptest::bool::ANY,
        ) {
            let p = policy();
            let rules = if at_most_once { most(&p) } else { least(&p) };
            let o = settle(&claimed(attempt), end.clone(), rules, jitter);
            prop_assert_eq!((o.id, o.attempt), (42, attempt));
            // Only a refusal was never offered to a provider.
            prop_assert_eq!(o.provider.is_none(), matches!(end, AttemptEnd::Refused { .. } | AttemptEnd::OptedOut { .. }));
            prop_assert!(!o.reason.is_empty());
            match o.next {
                NextState::Sent => prop_assert_eq!(o.outcome, AttemptOutcome::Accepted),
                NextState::Declined => prop_assert!(matches!(
                    o.outcome,
                    AttemptOutcome::Permanent | AttemptOutcome::Invalid
                )),
                NextState::Retry(after) => {
                    prop_assert!(attempt < p.max_attempts);
                    prop_assert!(after <= p.ceiling(attempt).max(crate::domain::retry::MAX_RETRY_AFTER));
                }
                NextState::Failed => prop_assert!(
                    attempt >= p.max_attempts || (at_most_once && o.reason.starts_with("outcome unknown: "))
                ),
            }
            // Under at-most-once, what may have reached the provider is never sent again.
            let ambiguous = matches!(
                end,
                AttemptEnd::Lost { .. } | AttemptEnd::Answered { answer: SendOutcome::Unknown { .. }, .. }
            );
            if at_most_once && ambiguous {
                prop_assert_eq!(o.next, NextState::Failed);
            }
            // Every failure says what went wrong; success says nothing.
            prop_assert_eq!(o.error.is_none(), o.outcome == AttemptOutcome::Accepted);
        }
    }
}
