//! Delivery reports: `sent` -> `delivered` / `undelivered` once, never
//! backwards, nothing for an unknown message; a report that arrives while its
//! message is still `sending` is kept and applied with the send's outcome.

use std::time::Duration;

use smsrelay::domain::NextState;
use smsrelay::domain::outcome::Guarantee;
use smsrelay::domain::report::{DeliveryReport, ReportApplied, ReportOutcome};
use smsrelay::housekeeping::{OverdueSettings, refresh_overdue};

use crate::backends::TestStore;
use crate::{ids, outcome};

conformance!(
    a_report_moves_a_sent_message_once_with_an_event,
    a_late_or_contrary_report_never_moves_a_message_backwards,
    an_early_report_is_kept_and_applied_with_the_accepted_outcome,
    an_early_undelivered_report_wins_over_a_later_contrary_one,
    an_early_report_outweighs_an_outcome_that_was_not_accepted,
    a_stale_outcome_does_not_consume_an_early_report,
    a_kept_report_settles_a_message_whose_lease_expired,
    reports_racing_the_outcomes_all_end_delivered,
    a_report_for_an_unknown_message_or_attempt_changes_nothing,
    overdue_reports_count_sent_messages_past_the_window,
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

/// A message claimed for attempt 1 and still `sending`: its send's outcome is not recorded yet.
async fn sending(db: &TestStore) -> i64 {
    let id = db.insert(1, "+254712345678", "hello").await;
    let claim = db
        .store
        .claim("node-a", 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(ids(&claim).contains(&id));
    assert_eq!(db.status(id).await, "sending");
    id
}

/// The (from, to) of each transition.
async fn moves(db: &TestStore, id: i64) -> Vec<(String, String)> {
    db.transitions(id)
        .await
        .into_iter()
        .map(|(from, to, _)| (from, to))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

async fn an_early_report_is_kept_and_applied_with_the_accepted_outcome(db: TestStore) {
    let id = sending(&db).await;
    let events = db.transitions(id).await.len();
    let early = db
        .store
        .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    assert_eq!(early, ReportApplied::Early);
    // Kept, not applied yet: the row is still the dispatcher's, its history unchanged.
    assert_eq!(db.status(id).await, "sending");
    assert_eq!(db.transitions(id).await.len(), events);
    // The provider sends it again: nothing more is kept.
    let duplicate = db
        .store
        .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    assert_eq!(duplicate, ReportApplied::Early);

    let recorded = db
        .store
        .record_outcomes("node-a", &[outcome(id, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!(recorded.applied, 1);
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "delivered");
    assert!(sms.sent_at.is_some() && sms.delivered_at.is_some());
    let history = db.transitions(id).await;
    assert_eq!(
        moves(&db, id).await,
        pairs(&[
            ("pending", "sending"),
            ("sending", "sent"),
            ("sent", "delivered")
        ]),
        "{history:?}"
    );
    assert_eq!(history[1].2, "accepted by provider test");
    assert!(
        history[2]
            .2
            .starts_with("provider status DELIVRD, error 000"),
        "{history:?}"
    );
    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("accepted"));

    // The provider's retry of the same report, after the fact: nothing changes.
    let late = db
        .store
        .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    assert_eq!(late, ReportApplied::AlreadyFinal);
    assert_eq!(db.transitions(id).await.len(), 3);
}

async fn an_early_undelivered_report_wins_over_a_later_contrary_one(db: TestStore) {
    let id = sending(&db).await;
    for outcome in [ReportOutcome::Undelivered, ReportOutcome::Delivered] {
        let early = db
            .store
            .apply_delivery_report(&report(id, 1, outcome))
            .await
            .unwrap();
        assert_eq!(early, ReportApplied::Early);
    }
    db.store
        .record_outcomes("node-a", &[outcome(id, 1, NextState::Sent)])
        .await
        .unwrap();
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "undelivered");
    assert!(sms.delivered_at.is_none());
    assert_eq!(
        moves(&db, id).await,
        pairs(&[
            ("pending", "sending"),
            ("sending", "sent"),
            ("sent", "undelivered")
        ])
    );
}

async fn an_early_report_outweighs_an_outcome_that_was_not_accepted(db: TestStore) {
    // The provider reports on the attempt, so it has the message, whatever the
    // dispatcher saw (a timeout, a 503 after the fact): it is not sent again.
    let id = sending(&db).await;
    db.store
        .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    let retry = outcome(id, 1, NextState::Retry(Duration::ZERO));
    let recorded = db.store.record_outcomes("node-a", &[retry]).await.unwrap();
    assert_eq!(recorded.applied, 1);
    assert_eq!(db.status(id).await, "delivered");
    let history = db.transitions(id).await;
    assert_eq!(
        moves(&db, id).await,
        pairs(&[
            ("pending", "sending"),
            ("sending", "sent"),
            ("sent", "delivered")
        ])
    );
    assert!(
        history[1].2.contains("provider answered HTTP 503"),
        "{history:?}"
    );
    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(attempts[0].outcome.as_deref(), Some("transient"));
    let again = db
        .store
        .claim("node-a", 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!ids(&again).contains(&id), "sent again after its report");
}

async fn a_stale_outcome_does_not_consume_an_early_report(db: TestStore) {
    // Another instance's outcome is refused by the fence; the report stays kept
    // for the owner's.
    let id = sending(&db).await;
    db.store
        .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    let stale = db
        .store
        .record_outcomes("node-b", &[outcome(id, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!(stale.stale, 1);
    assert_eq!(db.status(id).await, "sending");
    db.store
        .record_outcomes("node-a", &[outcome(id, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!(db.status(id).await, "delivered");
}

async fn a_kept_report_settles_a_message_whose_lease_expired(db: TestStore) {
    // The dispatcher died after the provider took the message and reported
    // on it: the reaper neither sends it again nor fails it as unknown.
    for guarantee in [Guarantee::AtLeastOnce, Guarantee::AtMostOnce] {
        let id = db.insert(1, "+254712345678", "hello").await;
        let claim = db
            .store
            .claim("crashed-node", 100, Duration::from_millis(1))
            .await
            .unwrap();
        assert!(ids(&claim).contains(&id));
        let early = db
            .store
            .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
            .await
            .unwrap();
        assert_eq!(early, ReportApplied::Early);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reaped = db
            .store
            .reap_expired_leases(8, guarantee, 100)
            .await
            .unwrap();
        assert_eq!(
            (reaped.requeued, reaped.failed, reaped.reported),
            (0, 0, 1),
            "{guarantee:?}"
        );
        let sms = db.store.get(id).await.unwrap().unwrap();
        assert_eq!(sms.status.as_str(), "delivered", "{guarantee:?}");
        assert!(sms.sent_at.is_some() && sms.delivered_at.is_some());
        assert_eq!((sms.locked_by, sms.lease_expires_at), (None, None));
        let history = db.transitions(id).await;
        assert_eq!(
            moves(&db, id).await,
            pairs(&[
                ("pending", "sending"),
                ("sending", "sent"),
                ("sent", "delivered")
            ]),
            "{history:?}"
        );
        assert!(
            history[1]
                .2
                .contains("lease of crashed-node expired during attempt 1"),
            "{history:?}"
        );
        let attempts = db.store.attempts(id).await.unwrap();
        assert_eq!(attempts[0].outcome.as_deref(), Some("abandoned"));
        let again = db
            .store
            .claim("node-b", 100, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!ids(&again).contains(&id), "sent again after its report");
    }
}

async fn reports_racing_the_outcomes_all_end_delivered(db: TestStore) {
    // Reports through another pool (the API's) while the dispatcher records
    // the outcomes in small batches: whichever commits first, each message
    // ends `delivered` once, with the three events in order.
    const ROWS: usize = 60;
    let mut rows = Vec::new();
    for i in 0..ROWS {
        rows.push(db.insert(i as i64 + 1, "+254712345678", "hello").await);
    }
    let claim = db
        .store
        .claim("node-a", ROWS as u32, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claim.messages.len(), ROWS);
    // Reports from the last row back, outcomes from the first on: they meet
    // in the middle, where each row is raced for.
    let api = db.another_store();
    let reported: Vec<i64> = rows.iter().rev().copied().collect();
    let (first, started) = tokio::sync::oneshot::channel();
    let reports = tokio::spawn(async move {
        let mut answers = Vec::new();
        let mut first = Some(first);
        for id in reported {
            let applied = api
                .apply_delivery_report(&report(id, 1, ReportOutcome::Delivered))
                .await
                .unwrap();
            answers.push(applied);
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
        }
        answers
    });
    started.await.unwrap();
    for chunk in rows.chunks(5) {
        let outcomes: Vec<_> = chunk
            .iter()
            .map(|id| outcome(*id, 1, NextState::Sent))
            .collect();
        let recorded = db.store.record_outcomes("node-a", &outcomes).await.unwrap();
        assert_eq!(recorded.applied, chunk.len() as u64);
        tokio::task::yield_now().await;
    }
    let answers = reports.await.unwrap();
    let early = answers
        .iter()
        .filter(|a| **a == ReportApplied::Early)
        .count();
    eprintln!("{early} of {ROWS} reports came before their outcome");
    for id in rows {
        assert_eq!(db.status(id).await, "delivered", "sms {id}");
        assert_eq!(
            moves(&db, id).await,
            pairs(&[
                ("pending", "sending"),
                ("sending", "sent"),
                ("sent", "delivered")
            ]),
            "sms {id}"
        );
    }
}

async fn overdue_reports_count_sent_messages_past_the_window(db: TestStore) {
    let reporting = ["test".to_owned()];
    let overdue = sent(&db).await;
    // A message of a provider without reports is never overdue.
    let id = db.insert(1, "+254712345678", "hello").await;
    db.store
        .claim("node-a", 100, Duration::from_secs(60))
        .await
        .unwrap();
    let mut quiet = outcome(id, 1, NextState::Sent);
    quiet.provider = Some("log".into());
    db.store.record_outcomes("node-a", &[quiet]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let recent = sent(&db).await;
    let window = Duration::from_secs(1);
    assert_eq!(
        db.store.overdue_reports(&reporting, window).await.unwrap(),
        1
    );
    assert_eq!(db.store.overdue_reports(&[], window).await.unwrap(), 0);
    // What the housekeeping job sets the gauge to; nothing with the window off.
    let settings = OverdueSettings {
        providers: reporting.to_vec(),
        window,
    };
    assert_eq!(refresh_overdue(&*db.store, &settings).await.unwrap(), 1);
    let off = OverdueSettings {
        window: Duration::ZERO,
        ..settings
    };
    assert_eq!(refresh_overdue(&*db.store, &off).await.unwrap(), 0);
    // Once its report is in, it is no longer overdue.
    db.store
        .apply_delivery_report(&report(overdue, 1, ReportOutcome::Delivered))
        .await
        .unwrap();
    assert_eq!(
        db.store.overdue_reports(&reporting, window).await.unwrap(),
        0
    );
    assert_eq!(db.status(recent).await, "sent");
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
