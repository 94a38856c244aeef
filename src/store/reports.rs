//! What the dialects share for delivery reports: what a report does to its
//! row, and the report kept on a row that came before the send's outcome,
//! which the outcome write (or the reaper) applies with the events that tell
//! it: `sending -> sent`, then `sent -> delivered | undelivered`.

use std::borrow::Cow;

use super::StoreError;
use super::batch::{EventRow, OutcomeRow, parse_status, to_u32};
use crate::domain::report::{DeliveryReport, ReportApplied};

/// What a delivery report does to the row locked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReportTarget {
    /// `sent` moves to this status, with an event.
    Move(&'static str),
    /// The send's outcome is not recorded yet: keep the report (this final
    /// status) on the row, unless one is kept already.
    Keep(&'static str),
    /// Nothing changes, for this reason.
    Unchanged(ReportApplied),
}

/// What a delivery report does to the row locked for it (`status`,
/// `attempts`, or `None` when there is no such row). Every dialect decides
/// through here, in its own transaction.
pub(super) fn report_target(
    report: &DeliveryReport,
    row: Option<(String, i32)>,
) -> Result<ReportTarget, StoreError> {
    let Some((status, attempts)) = row else {
        return Ok(ReportTarget::Unchanged(ReportApplied::Unknown));
    };
    let status = parse_status(report.sms_id, &status)?;
    let to = report.outcome.status().as_str();
    Ok(
        match crate::domain::report::decide(status, to_u32(Some(attempts)).unwrap_or(0), report) {
            ReportApplied::Applied => ReportTarget::Move(to),
            ReportApplied::Early => ReportTarget::Keep(to),
            unchanged => ReportTarget::Unchanged(unchanged),
        },
    )
}

/// Applies a delivery report in the dialect's open transaction `tx`: locks
/// the row with `lock`, decides through [`report_target`], then runs the
/// dialect's `update` and `event` statements for the target status `to`, or
/// its `keep` statement (which changes nothing when a report is kept already).
macro_rules! apply_report {
    ($tx:ident, $report:expr, $lock:expr, |$to:ident| $update:expr, $event:expr, $keep:expr) => {{
        let row = $lock.bind($report.sms_id).fetch_optional(&mut *$tx).await?;
        match report_target($report, row)? {
            ReportTarget::Move($to) => {
                $update.execute(&mut *$tx).await?;
                $event.execute(&mut *$tx).await?;
                $tx.commit().await?;
                Ok(ReportApplied::Applied)
            }
            ReportTarget::Keep($to) => {
                $keep.execute(&mut *$tx).await?;
                $tx.commit().await?;
                Ok(ReportApplied::Early)
            }
            ReportTarget::Unchanged(unchanged) => Ok(unchanged),
        }
    }};
}
pub(super) use apply_report;

/// The reason of the `sending -> sent` event of an outcome that was not an
/// acceptance but had a report kept: the report shows the provider has the
/// message, so it is not sent again. PostgreSQL's RECORD splices this and
/// [`reported_early`] into SQL string literals: no `'` in either.
macro_rules! taken_as_sent {
    () => {
        "taken as sent: the provider reported on this message before this outcome was recorded: "
    };
}
pub(super) use taken_as_sent;

/// Appended to a kept report's reason in its `sent -> delivered | undelivered` event.
macro_rules! reported_early {
    () => {
        " (reported before the send outcome was recorded)"
    };
}
pub(super) use reported_early;

/// The events of a row the reaper recovers: `sending -> status`, or with a
/// report kept (its final status and reason) `sending -> sent -> final`.
pub(super) fn reap_events<'a>(
    id: i64,
    status: &'a str,
    reason: String,
    last_error: &str,
    kept: Option<(&'a str, &'a str)>,
) -> Vec<EventRow<'a>> {
    match kept {
        None => vec![EventRow {
            id,
            from_status: "sending",
            to_status: status,
            reason: Cow::Owned(reason),
        }],
        Some((to, reported)) => vec![
            EventRow {
                id,
                from_status: "sending",
                to_status: "sent",
                reason: Cow::Owned(format!("{}{last_error}", taken_as_sent!())),
            },
            EventRow {
                id,
                from_status: "sent",
                to_status: to,
                reason: Cow::Owned(format!("{reported}{}", reported_early!())),
            },
        ],
    }
}

/// The events of the applied outcomes `rows`, in order: `sending -> next`;
/// or, where `kept(id)` gives a report kept on the row (its final status and
/// reason), `sending -> sent` then `sent -> final`. The rows' `next_status`
/// is what the outcome alone would do.
pub(super) fn outcome_events<'a>(
    rows: &[&'a OutcomeRow<'a>],
    kept: impl Fn(i64) -> Option<(&'a str, &'a str)>,
) -> Vec<EventRow<'a>> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        match kept(row.id) {
            None => events.push(EventRow {
                id: row.id,
                from_status: "sending",
                to_status: row.next_status,
                reason: Cow::Borrowed(&row.reason),
            }),
            Some((to, reason)) => {
                events.push(EventRow {
                    id: row.id,
                    from_status: "sending",
                    to_status: "sent",
                    reason: if row.next_status == "sent" {
                        Cow::Borrowed(&row.reason)
                    } else {
                        Cow::Owned(format!("{}{}", taken_as_sent!(), row.reason))
                    },
                });
                events.push(EventRow {
                    id: row.id,
                    from_status: "sent",
                    to_status: to,
                    reason: Cow::Owned(format!("{reason}{}", reported_early!())),
                });
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{AttemptOutcome, NextState, Outcome};

    fn outcome(id: i64, outcome: AttemptOutcome, next: NextState, reason: &str) -> Outcome {
        Outcome {
            id,
            attempt: 1,
            outcome,
            next,
            http_status: None,
            provider_message_id: None,
            provider: None,
            error: None,
            segments: None,
            reason: reason.into(),
        }
    }

    #[test]
    fn a_kept_report_adds_its_event_after_the_send() {
        let outcomes = [
            outcome(1, AttemptOutcome::Accepted, NextState::Sent, "accepted"),
            outcome(2, AttemptOutcome::Accepted, NextState::Sent, "accepted"),
            outcome(
                3,
                AttemptOutcome::Transient,
                NextState::Retry(Duration::ZERO),
                "HTTP 503",
            ),
        ];
        let rows: Vec<OutcomeRow> = outcomes.iter().map(OutcomeRow::new).collect();
        let refs: Vec<&OutcomeRow> = rows.iter().collect();
        let events = outcome_events(&refs, |id| (id != 1).then_some(("delivered", "DELIVRD")));
        let told: Vec<(i64, &str, &str, &str)> = events
            .iter()
            .map(|e| (e.id, e.from_status, e.to_status, e.reason.as_ref()))
            .collect();
        assert_eq!(
            told,
            [
                (1, "sending", "sent", "accepted"),
                (2, "sending", "sent", "accepted"),
                (
                    2,
                    "sent",
                    "delivered",
                    "DELIVRD (reported before the send outcome was recorded)"
                ),
                (
                    3,
                    "sending",
                    "sent",
                    "taken as sent: the provider reported on this message before this outcome was recorded: HTTP 503"
                ),
                (
                    3,
                    "sent",
                    "delivered",
                    "DELIVRD (reported before the send outcome was recorded)"
                ),
            ]
        );
        assert!(
            !taken_as_sent!().contains('\''),
            "spliced into SQL literals"
        );
        assert!(
            !reported_early!().contains('\''),
            "spliced into SQL literals"
        );
    }
}
