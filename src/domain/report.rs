//! Delivery reports: what a provider says became of a message it accepted.
//! Authenticated and parsed by the provider's callback route, applied by the
//! store in one transaction. A report that arrives before the send's outcome
//! is recorded is kept on its row and applied with that outcome.

use super::Status;

/// The final state a report moves a `sent` message to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    Delivered,
    Undelivered,
}

impl ReportOutcome {
    pub fn status(self) -> Status {
        match self {
            ReportOutcome::Delivered => Status::Delivered,
            ReportOutcome::Undelivered => Status::Undelivered,
        }
    }
}

/// One final report for one attempt of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    pub sms_id: i64,
    /// The attempt the provider reports on.
    pub attempt: u32,
    pub outcome: ReportOutcome,
    /// The provider's own status and error code, for the event (no number, no text).
    pub reason: String,
}

/// What applying a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportApplied {
    /// `sent` became `delivered` / `undelivered`, with an event.
    Applied,
    /// Already `delivered` / `undelivered`: a duplicate or a late report;
    /// nothing changes (a message never moves backwards).
    AlreadyFinal,
    /// Still `pending` / `sending`: the send's outcome is not recorded yet.
    /// The report is kept on the row (the first one only: a duplicate or a
    /// contrary one changes nothing) and applied when the outcome of the
    /// attempt in flight is recorded. The provider need not send it again.
    Early,
    /// No such message, an attempt it never had, or one that was never sent
    /// (declined, failed). Nothing changes.
    Unknown,
}

/// What a report does to a message in `status` whose last attempt is `attempts`.
/// Pure, so every dialect decides the same way.
pub fn decide(status: Status, attempts: u32, report: &DeliveryReport) -> ReportApplied {
    if report.attempt == 0 || report.attempt > attempts {
        return ReportApplied::Unknown;
    }
    match status {
        Status::Sent => ReportApplied::Applied,
        Status::Delivered | Status::Undelivered => ReportApplied::AlreadyFinal,
        // The provider answered before our outcome was written; or a retried
        // message has its earlier attempt reported while it waits for the
        // next one: kept until an outcome is recorded.
        Status::Pending | Status::Sending => ReportApplied::Early,
        Status::Declined | Status::Failed => ReportApplied::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(attempt: u32) -> DeliveryReport {
        DeliveryReport {
            sms_id: 1,
            attempt,
            outcome: ReportOutcome::Delivered,
            reason: "kannel report 1".into(),
        }
    }

    #[test]
    fn only_a_sent_message_moves_and_never_backwards() {
        use ReportApplied::*;
        let cases = [
            (Status::Sent, Applied),
            (Status::Delivered, AlreadyFinal),
            (Status::Undelivered, AlreadyFinal),
            (Status::Sending, Early),
            (Status::Pending, Early),
            (Status::Declined, Unknown),
            (Status::Failed, Unknown),
        ];
        for (status, expected) in cases {
            assert_eq!(decide(status, 2, &report(2)), expected, "{status:?}");
            assert_eq!(
                decide(status, 2, &report(1)),
                expected,
                "{status:?}, earlier attempt"
            );
        }
        assert_eq!(
            decide(Status::Sent, 2, &report(3)),
            Unknown,
            "an attempt it never had"
        );
        assert_eq!(decide(Status::Sent, 2, &report(0)), Unknown);
    }
}
