//! Delivery reports: `sent` -> `delivered` / `undelivered` once, never
//! backwards, nothing for a message not sent yet or unknown.

use std::time::Duration;

use smsrelay::domain::NextState;
use smsrelay::domain::report::{DeliveryReport, ReportApplied, ReportOutcome};

use crate::backends::TestStore;
use crate::{ids, outcome};

conformance!(
    a_report_moves_a_sent_message_once_with_an_event,
    a_late_or_contrary_report_never_moves_a_message_backwards,
    a_report_before_the_outcome_is_recorded_changes_nothing,
    a_report_for_an_unknown_message_or_attempt_changes_nothing,
);

fn report(sms_id: i64, attempt: u32, outcome: ReportOutcome) -> DeliveryReport {
    DeliveryReport {
        sms_id,
        attempt,
        outcome,
        reason: "provider status DELIVRD, error 000".into(),
    }
}

/// A message claimed and recorded `sent` (attempt 1).
async fn sent(db: &TestStore) -> i64 {
    let id = db.insert(1, "+254712345678", "hello").await;
    let claim = db
        .store
        .claim("node-a", 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(ids(&claim).contains(&id));
    db.store
        .record_outcomes("node-a", &[outcome(id, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!(db.status(id).await, "sent");
    id
}

async fn a_report_moves_a_sent_message_once_with_an_event(db: TestStore) {
    let delivered = sent(&db).await;
    let applied = db
        .store
        .apply_delivery_report(&report(delivered, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    assert_eq!(applied, ReportApplied::Applied);
    let sms = db.store.get(delivered).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "delivered");
    assert!(sms.delivered_at.is_some());
    let last = db.transitions(delivered).await.pop().unwrap();
    assert_eq!(
        last,
        (
            "sent".to_owned(),
            "delivered".to_owned(),
            "provider status DELIVRD, error 000".to_owned()
        )
    );

    // The duplicate changes nothing, not even the history.
    let events = db.transitions(delivered).await.len();
    let again = db
        .store
        .apply_delivery_report(&report(delivered, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    assert_eq!(again, ReportApplied::AlreadyFinal);
    assert_eq!(db.transitions(delivered).await.len(), events);

    let undelivered = sent(&db).await;
    db.store
        .apply_delivery_report(&report(undelivered, 1, ReportOutcome::Undelivered))
        .await
        .unwrap();
    let sms = db.store.get(undelivered).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "undelivered");
    assert!(sms.delivered_at.is_none());
}

async fn a_late_or_contrary_report_never_moves_a_message_backwards(db: TestStore) {
    let id = sent(&db).await;
    db.store
        .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    let contrary = db
        .store
        .apply_delivery_report(&report(id, 1, ReportOutcome::Undelivered))
        .await
        .unwrap();
    assert_eq!(contrary, ReportApplied::AlreadyFinal);
    assert_eq!(db.status(id).await, "delivered");
}

async fn a_report_before_the_outcome_is_recorded_changes_nothing(db: TestStore) {
    let id = db.insert(1, "+254712345678", "hello").await;
    db.store
        .claim("node-a", 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(db.status(id).await, "sending");
    let events = db.transitions(id).await.len();
    let early = db
        .store
        .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    assert_eq!(early, ReportApplied::NotYetSent);
    assert_eq!(db.status(id).await, "sending");
    assert_eq!(db.transitions(id).await.len(), events);
    // Once the outcome is in, the retried report applies.
    db.store
        .record_outcomes("node-a", &[outcome(id, 1, NextState::Sent)])
        .await
        .unwrap();
    let retried = db
        .store
        .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    assert_eq!(retried, ReportApplied::Applied);
    assert_eq!(db.status(id).await, "delivered");
}

async fn a_report_for_an_unknown_message_or_attempt_changes_nothing(db: TestStore) {
    let id = sent(&db).await;
    for (sms_id, attempt) in [(id + 1000, 1), (id, 2), (id, 0)] {
        let applied = db
            .store
            .apply_delivery_report(&report(sms_id, attempt, ReportOutcome::Delivered))
            .await
            .unwrap();
        assert_eq!(
            applied,
            ReportApplied::Unknown,
            "sms {sms_id} attempt {attempt}"
        );
    }
    assert_eq!(db.status(id).await, "sent");
}
