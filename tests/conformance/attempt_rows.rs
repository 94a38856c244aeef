//! When an attempt's row is written: once, whole, at its outcome, or by the
//! reaper when the instance crashed. The attempt in progress is read from
//! the lease columns, so the history looks the same at every moment. And a
//! row an older smsrelay wrote at the claim (a rolling upgrade) is completed,
//! never doubled.

use std::time::Duration;

use smsrelay::domain::NextState;
use smsrelay::domain::outcome::Guarantee::{AtLeastOnce, AtMostOnce};
use smsrelay::domain::report::{DeliveryReport, ReportApplied, ReportOutcome};

use crate::backends::{TestStore, int, text, time};
use crate::{close, ids, outcome};

conformance!(
    a_crashed_attempt_ends_with_an_abandoned_row_and_its_events,
    a_crashed_attempt_under_at_most_once_ends_abandoned_and_failed,
    an_attempt_row_from_an_older_claim_is_completed_not_doubled,
    an_early_report_and_a_renewal_leave_the_attempt_start_at_the_claim,
);

/// Rows of `sms_attempt` for `id`, as stored (not the in-progress view).
async fn stored_attempts(db: &TestStore, id: i64) -> i64 {
    db.count(
        "SELECT count(*) FROM sms_attempt WHERE sms_id = $1",
        &[int(id)],
    )
    .await
}

/// An instance claims a message and dies: while the lease runs, the history
/// shows the attempt in progress; once reaped, one stored `abandoned` row
/// (its instance, its start, its end) and both events; the next attempt,
/// recorded, gets its own row.
async fn a_crashed_attempt_ends_with_an_abandoned_row_and_its_events(db: TestStore) {
    let id = db.insert(1, "+254712345678", "hello").await;
    let claim = db
        .store
        .claim("crashed-node", 10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(ids(&claim), [id]);
    let claimed_at = db.now().await;
    let in_progress = db.store.attempts(id).await.unwrap();
    assert_eq!(in_progress.len(), 1, "{in_progress:?}");
    assert_eq!(
        (in_progress[0].attempt, in_progress[0].instance.as_str()),
        (1, "crashed-node")
    );
    assert_eq!(in_progress[0].finished_at, None);

    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = db
        .store
        .reap_expired_leases(8, AtLeastOnce, 100)
        .await
        .unwrap();
    assert_eq!((report.requeued, report.failed), (1, 0));
    assert_eq!(stored_attempts(&db, id).await, 1, "one row for the attempt");
    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let abandoned = &attempts[0];
    assert_eq!(
        (
            abandoned.attempt,
            abandoned.instance.as_str(),
            abandoned.outcome.as_deref(),
            abandoned.error.as_deref()
        ),
        (
            1,
            "crashed-node",
            Some("abandoned"),
            Some("lease expired before an outcome was recorded")
        )
    );
    assert!(
        close(abandoned.started_at, claimed_at, Duration::from_secs(5)),
        "started at the claim: {} vs {claimed_at}",
        abandoned.started_at
    );
    let finished = abandoned.finished_at.expect("finished by the reaper");
    assert!(finished >= abandoned.started_at);
    assert_eq!(
        db.transitions(id).await,
        [
            (
                "pending".into(),
                "sending".into(),
                "claimed by crashed-node for attempt 1".into()
            ),
            (
                "sending".into(),
                "pending".into(),
                "lease of crashed-node expired during attempt 1".into()
            ),
        ]
    );

    let again = db
        .store
        .claim("node-b", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((again.messages[0].id, again.messages[0].attempt), (id, 2));
    let report = db
        .store
        .record_outcomes("node-b", &[outcome(id, 2, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    assert_eq!(stored_attempts(&db, id).await, 2);
    let attempts = db.store.attempts(id).await.unwrap();
    let summary: Vec<(u32, &str, Option<&str>)> = attempts
        .iter()
        .map(|a| (a.attempt, a.instance.as_str(), a.outcome.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "crashed-node", Some("abandoned")),
            (2, "node-b", Some("accepted"))
        ]
    );
    assert!(attempts[1].started_at >= finished, "{attempts:?}");
    assert_eq!(db.transitions(id).await.len(), 4);
}

/// Under at-most-once the reaped message fails, and its attempt still gets
/// its `abandoned` row.
async fn a_crashed_attempt_under_at_most_once_ends_abandoned_and_failed(db: TestStore) {
    let id = db.insert(1, "+254712345678", "hello").await;
    db.store
        .claim("crashed-node", 10, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = db
        .store
        .reap_expired_leases(8, AtMostOnce, 100)
        .await
        .unwrap();
    assert_eq!((report.requeued, report.failed), (0, 1));
    assert_eq!(db.status(id).await, "failed");
    assert_eq!(stored_attempts(&db, id).await, 1);
    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(
        (
            attempts[0].instance.as_str(),
            attempts[0].outcome.as_deref()
        ),
        ("crashed-node", Some("abandoned"))
    );
    let last = db.transitions(id).await.pop().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("sending", "failed"));
    assert!(last.2.starts_with("outcome unknown: "), "{}", last.2);
}

/// During a rolling upgrade an older smsrelay may have claimed a row and
/// written its attempt row at the claim: the outcome completes that row, the
/// reaper too, and the history never shows the attempt twice.
async fn an_attempt_row_from_an_older_claim_is_completed_not_doubled(db: TestStore) {
    let recorded = db.insert(1, "+254712345678", "recorded").await;
    let reaped = db.insert(1, "+254712345679", "reaped").await;
    db.store
        .claim("old-node", 1, Duration::from_secs(60))
        .await
        .unwrap();
    db.store
        .claim("old-node", 1, Duration::from_millis(1))
        .await
        .unwrap();
    let started = db.now().await;
    for id in [recorded, reaped] {
        db.exec(
            "INSERT INTO sms_attempt (sms_id, attempt, instance, started_at) VALUES ($1, $2, $3, $4)",
            &[int(id), int(1), text("old-node"), time(started)],
        )
        .await;
        let attempts = db.store.attempts(id).await.unwrap();
        assert_eq!(
            attempts.len(),
            1,
            "shown once while in progress: {attempts:?}"
        );
    }

    let report = db
        .store
        .record_outcomes("old-node", &[outcome(recorded, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reap = db
        .store
        .reap_expired_leases(8, AtLeastOnce, 100)
        .await
        .unwrap();
    assert_eq!(reap.requeued, 1);

    for (id, expected) in [(recorded, "accepted"), (reaped, "abandoned")] {
        assert_eq!(stored_attempts(&db, id).await, 1, "sms {id}");
        let attempts = db.store.attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome.as_deref(), Some(expected));
        assert!(attempts[0].finished_at.is_some());
        assert!(close(
            attempts[0].started_at,
            started,
            Duration::from_secs(1)
        ));
    }
}

/// The attempt's start is read from `sms.updated_at` as the claim left it:
/// a delivery report kept on the row and a lease renewal in between must
/// not move it, whether the outcome or the reaper writes the row.
async fn an_early_report_and_a_renewal_leave_the_attempt_start_at_the_claim(db: TestStore) {
    // Longer than any clock skew the comparison allows, so a moved start shows.
    const PAUSE: Duration = Duration::from_millis(300);
    let recorded = db.insert(1, "+254712345678", "recorded").await;
    let reaped = db.insert(1, "+254712345679", "reaped").await;
    db.store
        .claim("node-a", 1, Duration::from_secs(60))
        .await
        .unwrap();
    db.store
        .claim("crashed-node", 1, Duration::from_secs(60))
        .await
        .unwrap();
    let mut claimed_at = Vec::new();
    for id in [recorded, reaped] {
        claimed_at.push(db.store.get(id).await.unwrap().unwrap().updated_at);
    }
    tokio::time::sleep(PAUSE).await;
    for id in [recorded, reaped] {
        let early = db
            .store
            .apply_delivery_report(&DeliveryReport {
                sms_id: id,
                attempt: 1,
                outcome: ReportOutcome::Delivered,
                reason: "provider status DELIVRD, error 000".into(),
            })
            .await
            .unwrap();
        assert_eq!(early, ReportApplied::Early, "sms {id}");
    }
    tokio::time::sleep(PAUSE).await;
    assert_eq!(
        db.store
            .renew("node-a", &[(recorded, 1)], Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    // The crashed node's last renewal: a lease that is over at once.
    assert_eq!(
        db.store
            .renew("crashed-node", &[(reaped, 1)], Duration::from_millis(1))
            .await
            .unwrap(),
        1
    );
    tokio::time::sleep(PAUSE).await;
    let in_progress = db.store.attempts(recorded).await.unwrap();
    assert!(
        close(
            in_progress[0].started_at,
            claimed_at[0],
            Duration::from_millis(5)
        ),
        "in progress, started at the claim: {} vs {}",
        in_progress[0].started_at,
        claimed_at[0]
    );

    let report = db
        .store
        .record_outcomes("node-a", &[outcome(recorded, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    let reap = db
        .store
        .reap_expired_leases(8, AtLeastOnce, 100)
        .await
        .unwrap();
    assert_eq!(reap.reported, 1);
    for ((id, expected), claimed) in [(recorded, "accepted"), (reaped, "abandoned")]
        .into_iter()
        .zip(claimed_at)
    {
        assert_eq!(db.status(id).await, "delivered", "sms {id}");
        assert_eq!(stored_attempts(&db, id).await, 1, "sms {id}");
        let attempts = db.store.attempts(id).await.unwrap();
        assert_eq!(attempts[0].outcome.as_deref(), Some(expected));
        assert!(
            close(attempts[0].started_at, claimed, Duration::from_millis(5)),
            "sms {id} started at the claim: {} vs {claimed}",
            attempts[0].started_at
        );
    }
}
