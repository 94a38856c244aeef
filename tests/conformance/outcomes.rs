//! Recording outcomes (fenced), the retry schedule, release and lease recovery.

use std::collections::HashMap;
use std::time::Duration;

use smsrelay::domain::NextState;
use smsrelay::domain::outcome::Guarantee::AtLeastOnce;
use smsrelay::store::{ReapReport, ReleaseReason, Store};

use crate::backends::TestStore;
use crate::{close, ids, outcome};

conformance!(
    a_sent_outcome_is_recorded_with_its_history,
    a_retry_is_scheduled_in_the_database,
    declined_and_failed_are_final,
    a_stale_outcome_write_changes_nothing,
    release_hands_unsent_rows_back,
    a_release_keeps_the_attempt_and_says_why,
    the_reaper_requeues_expired_leases,
    the_reaper_fails_exhausted_messages_in_batches,
    concurrent_reapers_recover_each_row_once,
    a_row_changes_once_per_batch,
    an_outcomes_provider_is_recorded_on_its_attempt,
    renewal_extends_only_our_own_fenced_rows,
);

const LEASE: Duration = Duration::from_secs(60);

/// Claims one fresh message for `instance`; returns its id.
async fn claimed(db: &TestStore, instance: &str, lease: Duration) -> i64 {
    let id = db.insert(1, "+254712345678", "hello").await;
    let claim = db.store.claim(instance, 100, lease).await.unwrap();
    assert!(ids(&claim).contains(&id));
    id
}

/// Reaps until nothing is left, as several reaper runs would.
async fn reap_all(store: &dyn Store, max_attempts: u32) -> ReapReport {
    let mut total = ReapReport::default();
    loop {
        let pass = store
            .reap_expired_leases(max_attempts, AtLeastOnce, 100)
            .await
            .unwrap();
        total.requeued += pass.requeued;
        total.failed += pass.failed;
        if !pass.skipped && pass.requeued + pass.failed == 0 {
            return total;
        }
        if pass.skipped {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// An accepted send: `sent`, the provider's id and the attempt's answer recorded.
async fn a_sent_outcome_is_recorded_with_its_history(db: TestStore) {
    let id = claimed(&db, "node-a", LEASE).await;
    let report = db
        .store
        .record_outcomes("node-a", &[outcome(id, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale), (1, 0));

    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "sent");
    assert_eq!(
        sms.provider_message_id.as_deref(),
        Some(format!("prov-{id}").as_str())
    );
    assert_eq!(sms.segments, Some(1));
    assert_eq!(sms.sent_at, Some(sms.updated_at), "sent now");
    assert_eq!(
        (sms.locked_by, sms.lease_expires_at),
        (None, None),
        "lease given up"
    );
    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("accepted"));
    assert_eq!(attempts[0].http_status, Some(200));
    assert_eq!(
        attempts[0].provider_message_id.as_deref(),
        Some(format!("prov-{id}").as_str())
    );
    // Same instant on PostgreSQL and SQLite (one "now" per transaction);
    // MySQL reads UTC_TIMESTAMP(6) per statement, microseconds apart.
    assert!(close(
        attempts[0].finished_at.expect("finished"),
        sms.updated_at,
        Duration::from_secs(1)
    ));
    assert_eq!(
        db.transitions(id).await,
        [
            (
                "pending".into(),
                "sending".into(),
                "claimed by node-a for attempt 1".into()
            ),
            (
                "sending".into(),
                "sent".into(),
                "accepted by provider test".into()
            ),
        ]
    );
    assert!(
        db.store
            .claim("node-a", 10, LEASE)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

/// `Retry(delay)` puts the row back with `next_attempt_at = now + delay`,
/// and it is not claimable before then.
async fn a_retry_is_scheduled_in_the_database(db: TestStore) {
    let soon = claimed(&db, "node-a", LEASE).await;
    let later = claimed(&db, "node-a", LEASE).await;
    let report = db
        .store
        .record_outcomes(
            "node-a",
            &[
                outcome(soon, 1, NextState::Retry(Duration::from_millis(700))),
                outcome(later, 1, NextState::Retry(Duration::from_secs(120))),
            ],
        )
        .await
        .unwrap();
    assert_eq!(report.applied, 2);

    let sms = db.store.get(soon).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "pending");
    assert_eq!(sms.attempts, 1, "the attempt count stays");
    assert_eq!(
        sms.last_error.as_deref(),
        Some("provider answered HTTP 503")
    );
    let next = sms.next_attempt_at.expect("scheduled");
    assert_eq!(next - sms.updated_at, time::Duration::milliseconds(700));
    let attempts = db.store.attempts(soon).await.unwrap();
    assert_eq!(
        (attempts[0].outcome.as_deref(), attempts[0].http_status),
        (Some("transient"), Some(503))
    );
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("provider answered HTTP 503")
    );
    let later_sms = db.store.get(later).await.unwrap().unwrap();
    assert_eq!(
        later_sms.next_attempt_at.unwrap() - later_sms.updated_at,
        time::Duration::seconds(120)
    );

    // Not due yet: nothing to claim.
    assert!(
        db.store
            .claim("node-a", 10, LEASE)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    // Due once the database's clock passes next_attempt_at; the 120s one still waits.
    while db.now().await <= next {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let claim = db.store.claim("node-b", 10, LEASE).await.unwrap();
    assert_eq!(ids(&claim), [soon]);
    assert_eq!(claim.messages[0].attempt, 2);
    let attempts = db.store.attempts(soon).await.unwrap();
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.instance.as_str(), a.outcome.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [(1, "node-a", Some("transient")), (2, "node-b", None)]
    );
    assert_eq!(db.status(later).await, "pending");
}

/// Declined and failed are final: recorded once, never claimed again.
async fn declined_and_failed_are_final(db: TestStore) {
    let declined = claimed(&db, "node-a", LEASE).await;
    let failed = claimed(&db, "node-a", LEASE).await;
    db.store
        .record_outcomes(
            "node-a",
            &[
                outcome(declined, 1, NextState::Declined),
                outcome(failed, 1, NextState::Failed),
            ],
        )
        .await
        .unwrap();

    let sms = db.store.get(declined).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "declined");
    assert_eq!(
        sms.last_error.as_deref(),
        Some("provider refused the message: HTTP 400")
    );
    assert_eq!(sms.sent_at, None);
    let attempt = &db.store.attempts(declined).await.unwrap()[0];
    assert_eq!(
        (attempt.outcome.as_deref(), attempt.http_status),
        (Some("permanent"), Some(400))
    );

    let sms = db.store.get(failed).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "failed");
    assert_eq!(sms.next_attempt_at, None, "no retry scheduled");
    let events = db.transitions(failed).await;
    assert_eq!(
        events.last().unwrap(),
        &(
            "sending".into(),
            "failed".into(),
            "attempts exhausted after 8 sends: provider answered HTTP 502".into()
        )
    );
    assert!(
        db.store
            .claim("node-a", 10, LEASE)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    // A second write for the same attempt finds the row no longer `sending`.
    let again = db
        .store
        .record_outcomes("node-a", &[outcome(declined, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!((again.applied, again.stale), (0, 1));
    assert_eq!(db.status(declined).await, "declined");
}

/// Outcome writes are fenced by (sending, attempt, lease owner): a late or
/// foreign write changes nothing, the owner's applies.
async fn a_stale_outcome_write_changes_nothing(db: TestStore) {
    let id = claimed(&db, "node-a", Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reap_all(db.store.as_ref(), 8).await.requeued, 1);
    let b = db.store.claim("node-b", 10, LEASE).await.unwrap();
    assert_eq!((b.messages[0].id, b.messages[0].attempt), (id, 2));
    let before = (
        db.store.get(id).await.unwrap(),
        db.store.events(id).await.unwrap(),
        db.store.attempts(id).await.unwrap(),
    );

    // A's late answer for attempt 1; the right attempt under the wrong owner;
    // the right owner with the wrong attempt.
    for (instance, attempt) in [("node-a", 1), ("node-a", 2), ("node-b", 1)] {
        let report = db
            .store
            .record_outcomes(instance, &[outcome(id, attempt, NextState::Sent)])
            .await
            .unwrap();
        assert_eq!(
            (report.applied, report.stale),
            (0, 1),
            "{instance} attempt {attempt}"
        );
    }
    let after = (
        db.store.get(id).await.unwrap(),
        db.store.events(id).await.unwrap(),
        db.store.attempts(id).await.unwrap(),
    );
    assert_eq!(
        before, after,
        "the row, its events and its attempts are untouched"
    );

    // A mixed batch: B's own write applies, the stale one in it does not.
    let other = claimed(&db, "node-b", LEASE).await;
    let report = db
        .store
        .record_outcomes(
            "node-b",
            &[
                outcome(id, 2, NextState::Sent),
                outcome(other, 9, NextState::Sent),
            ],
        )
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale), (1, 1));
    assert_eq!(db.status(id).await, "sent");
    assert_eq!(db.status(other).await, "sending");
    let attempts = db.store.attempts(id).await.unwrap();
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.instance.as_str(), a.outcome.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "node-a", Some("abandoned")),
            (2, "node-b", Some("accepted"))
        ]
    );
}

/// Claimed but unsent rows (shutdown) go back to `pending` as if never claimed.
async fn release_hands_unsent_rows_back(db: TestStore) {
    let kept = claimed(&db, "node-a", LEASE).await;
    let released = claimed(&db, "node-a", LEASE).await;
    let before = db.store.get(released).await.unwrap();

    assert_eq!(
        db.store
            .release("node-b", &[(released, 1)], ReleaseReason::Shutdown)
            .await
            .unwrap(),
        0,
        "not B's lease"
    );
    assert_eq!(
        db.store
            .release("node-a", &[(released, 2)], ReleaseReason::Shutdown)
            .await
            .unwrap(),
        0,
        "not that attempt"
    );
    assert_eq!(
        db.store.get(released).await.unwrap(),
        before,
        "refused releases change nothing"
    );

    assert_eq!(
        db.store
            .release("node-a", &[(released, 1)], ReleaseReason::Shutdown)
            .await
            .unwrap(),
        1
    );
    let sms = db.store.get(released).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "pending");
    assert_eq!(sms.attempts, 0, "the attempt is undone");
    assert_eq!((sms.locked_by, sms.lease_expires_at), (None, None));
    assert!(
        db.store.attempts(released).await.unwrap().is_empty(),
        "no request was made"
    );
    assert_eq!(
        db.transitions(released).await,
        [
            (
                "pending".into(),
                "sending".into(),
                "claimed by node-a for attempt 1".into()
            ),
            (
                "sending".into(),
                "pending".into(),
                "released unsent at shutdown".into()
            ),
        ]
    );
    assert_eq!(db.status(kept).await, "sending");
    let again = db.store.claim("node-b", 10, LEASE).await.unwrap();
    assert_eq!(ids(&again), [released]);
    assert_eq!(
        again.messages[0].attempt, 1,
        "the next claim is attempt 1 again"
    );
}

/// A message the provider did not take (paused, throttling) goes back to
/// `pending` on the same attempt count, each event naming why.
async fn a_release_keeps_the_attempt_and_says_why(db: TestStore) {
    let id = claimed(&db, "node-a", LEASE).await;
    assert_eq!(
        db.store
            .release("node-a", &[(id, 1)], ReleaseReason::ProviderPaused)
            .await
            .unwrap(),
        1
    );
    let again = db.store.claim("node-a", 10, LEASE).await.unwrap();
    assert_eq!(again.messages[0].attempt, 1, "the attempt was not spent");
    assert_eq!(
        db.store
            .release("node-a", &[(id, 1)], ReleaseReason::Throttled)
            .await
            .unwrap(),
        1
    );
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!((sms.status.as_str(), sms.attempts), ("pending", 0));
    assert!(db.store.attempts(id).await.unwrap().is_empty());
    let reasons: Vec<String> = db
        .transitions(id)
        .await
        .into_iter()
        .filter(|(_, to, _)| to == "pending")
        .map(|(_, _, reason)| reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "returned unsent, attempt not spent: provider paused (configuration refused or circuit open)",
            "returned unsent, attempt not spent: provider throttling (HTTP 429 / Retry-After)",
        ]
    );
}

/// Expired leases (a crashed instance) go back to `pending`; the open attempt
/// is `abandoned`; live leases are left alone.
async fn the_reaper_requeues_expired_leases(db: TestStore) {
    let crashed = claimed(&db, "crashed-node", Duration::from_millis(1)).await;
    let alive = claimed(&db, "live-node", LEASE).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let report = db
        .store
        .reap_expired_leases(8, AtLeastOnce, 100)
        .await
        .unwrap();
    assert_eq!(
        report,
        ReapReport {
            requeued: 1,
            failed: 0,
            reported: 0,
            skipped: false
        }
    );
    let sms = db.store.get(crashed).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "pending");
    assert_eq!(
        sms.last_error.as_deref(),
        Some("lease of crashed-node expired during attempt 1")
    );
    assert_eq!((sms.locked_by, sms.lease_expires_at), (None, None));
    assert_eq!(
        sms.next_attempt_at,
        Some(sms.updated_at),
        "due again at once"
    );
    let attempt = &db.store.attempts(crashed).await.unwrap()[0];
    assert_eq!(attempt.outcome.as_deref(), Some("abandoned"));
    assert_eq!(
        attempt.error.as_deref(),
        Some("lease expired before an outcome was recorded")
    );
    assert!(attempt.finished_at.is_some());
    assert_eq!(
        db.transitions(crashed).await.last().unwrap(),
        &(
            "sending".into(),
            "pending".into(),
            "lease of crashed-node expired during attempt 1".into()
        )
    );
    assert_eq!(db.status(alive).await, "sending");

    let again = db.store.claim("node-b", 10, LEASE).await.unwrap();
    assert_eq!(
        (again.messages[0].id, again.messages[0].attempt),
        (crashed, 2)
    );
}

/// An abandoned last attempt fails the message; batches respect the limit.
async fn the_reaper_fails_exhausted_messages_in_batches(db: TestStore) {
    let mut expired = Vec::new();
    for _ in 0..5 {
        expired.push(claimed(&db, "crashed-node", Duration::from_millis(1)).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let passes: Vec<u64> = {
        let mut passes = Vec::new();
        for _ in 0..4 {
            let r = db
                .store
                .reap_expired_leases(1, AtLeastOnce, 2)
                .await
                .unwrap();
            assert_eq!(r.requeued, 0);
            passes.push(r.failed);
        }
        passes
    };
    assert_eq!(passes, [2, 2, 1, 0]);
    for id in expired {
        assert_eq!(db.status(id).await, "failed");
        assert_eq!(
            db.transitions(id).await.last().unwrap().2,
            "attempts exhausted: lease of crashed-node expired during attempt 1"
        );
    }
}

/// Reapers on two instances at once recover each row exactly once.
async fn concurrent_reapers_recover_each_row_once(db: TestStore) {
    for _ in 0..30 {
        db.insert(1, "+254712345678", "hello").await;
    }
    assert_eq!(
        db.store
            .claim("crashed-node", 100, Duration::from_millis(1))
            .await
            .unwrap()
            .messages
            .len(),
        30
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let other = db.another_store();
    let (a, b) = tokio::join!(reap_all(db.store.as_ref(), 8), reap_all(other.as_ref(), 8));
    assert_eq!(a.requeued + b.requeued, 30, "{a:?} {b:?}");
    let per_row = db
        .count(
            "SELECT count(*) FROM sms_event WHERE from_status = 'sending' AND to_status = 'pending'",
            &[],
        )
        .await;
    assert_eq!(per_row, 30, "one recovery event per row");
    let abandoned = db
        .count(
            "SELECT count(*) FROM sms_attempt WHERE outcome = 'abandoned'",
            &[],
        )
        .await;
    assert_eq!(abandoned, 30);
    let mut by_status = HashMap::new();
    for status in ["pending", "sending", "failed"] {
        by_status.insert(status, db.count_status(status).await);
    }
    assert_eq!(
        by_status,
        HashMap::from([("pending", 30), ("sending", 0), ("failed", 0)])
    );
}

/// Two outcomes for one row in a batch: the first applies, the second is stale.
async fn a_row_changes_once_per_batch(db: TestStore) {
    let id = claimed(&db, "node-a", LEASE).await;
    let report = db
        .store
        .record_outcomes(
            "node-a",
            &[
                outcome(id, 1, NextState::Sent),
                outcome(id, 1, NextState::Declined),
            ],
        )
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale), (1, 1));
    assert_eq!(db.status(id).await, "sent");
    assert_eq!(
        db.transitions(id).await.len(),
        2,
        "claimed, sent: one event each"
    );
    assert_eq!(
        db.store
            .release("node-a", &[(id, 1), (id, 1)], ReleaseReason::Shutdown)
            .await
            .unwrap(),
        0,
        "no longer sending"
    );
}

/// Each attempt keeps the provider its outcome names; an outcome without one leaves it empty.
async fn an_outcomes_provider_is_recorded_on_its_attempt(db: TestStore) {
    let id = claimed(&db, "node-a", LEASE).await;
    let unnamed = claimed(&db, "node-a", LEASE).await;
    let mut retried = outcome(id, 1, NextState::Retry(Duration::ZERO));
    retried.provider = Some("webhook-primary".into());
    let mut unnamed_sent = outcome(unnamed, 1, NextState::Sent);
    unnamed_sent.provider = None;
    let report = db
        .store
        .record_outcomes("node-a", &[retried, unnamed_sent])
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale), (2, 0));
    let claim = db.store.claim("node-a", 10, LEASE).await.unwrap();
    assert_eq!(ids(&claim), [id]);
    let mut sent = outcome(id, 2, NextState::Sent);
    sent.provider = Some("kannel-backup".into());
    db.store.record_outcomes("node-a", &[sent]).await.unwrap();

    let providers: Vec<Option<String>> = db
        .store
        .attempts(id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.provider)
        .collect();
    assert_eq!(
        providers,
        [Some("webhook-primary".into()), Some("kannel-backup".into())]
    );
    let attempts = db.store.attempts(unnamed).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].provider, None);
}

/// A renewal extends the lease of our rows on their current attempt only:
/// another instance's row, or ours on a stale attempt, still expires.
async fn renewal_extends_only_our_own_fenced_rows(db: TestStore) {
    let short = Duration::from_millis(300);
    let ours = claimed(&db, "node-a", short).await;
    let theirs = claimed(&db, "node-b", short).await;
    let renewed = db
        .store
        .renew(
            "node-a",
            &[(ours, 1), (theirs, 1), (ours, 2), (ours, 1)],
            LEASE,
        )
        .await
        .unwrap();
    assert_eq!(renewed, 1, "only node-a's row on attempt 1 is renewed");
    assert_eq!(
        db.store.renew("node-a", &[(ours, 2)], LEASE).await.unwrap(),
        0,
        "a stale attempt is not renewed"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = reap_all(&*db.store, 8).await;
    assert_eq!((report.requeued, report.failed), (1, 0));
    assert_eq!(
        db.status(ours).await,
        "sending",
        "the renewed lease still holds"
    );
    assert_eq!(
        db.status(theirs).await,
        "pending",
        "the other instance's lease ran out"
    );
    let report = db
        .store
        .record_outcomes("node-a", &[outcome(ours, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale), (1, 0));
}
