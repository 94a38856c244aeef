//! Enqueueing by plain INSERT, claiming, expiry.

use std::time::Duration;

use crate::backends::{NULL_TIME, TestStore, int, text, time};
use crate::{close, ids};

conformance!(
    a_plain_insert_enqueues,
    claims_follow_due_order_and_batch_size,
    a_claim_leases_and_records_the_attempt,
    expired_rows_fail_instead_of_being_sent,
    an_expired_backlog_is_never_claimed,
);

/// The platform's INSERT (the outbox contract) is all it takes to enqueue.
async fn a_plain_insert_enqueues(db: TestStore) {
    let now = db.now().await;
    let client = db
        .insert(42, "+254 712 345 678", "Your loan repayment is due")
        .await;
    let staff = db
        .insert_row(
            "INSERT INTO sms (staff_id, mobile_no, message) VALUES ($1, $2, $3)",
            &[int(7), text("0712345678"), text("Meeting at 10")],
        )
        .await;

    let sms = db.store.get(client).await.unwrap().expect("row exists");
    assert_eq!(sms.status.as_str(), "pending");
    assert_eq!((sms.client_id, sms.staff_id), (Some(42), None));
    assert_eq!(
        sms.mobile_no, "+254 712 345 678",
        "kept as the platform wrote it"
    );
    assert_eq!(sms.message, "Your loan repayment is due");
    assert_eq!(sms.attempts, 0);
    assert!(
        close(sms.created_at, now, Duration::from_secs(5)),
        "{} vs {now}",
        sms.created_at
    );
    assert!(close(sms.updated_at, now, Duration::from_secs(5)));
    assert_eq!(
        (sms.not_before, sms.expires_at, sms.next_attempt_at),
        (None, None, None)
    );
    assert_eq!(
        (sms.locked_by, sms.lease_expires_at, sms.sent_at),
        (None, None, None)
    );
    let sms = db.store.get(staff).await.unwrap().expect("row exists");
    assert_eq!((sms.client_id, sms.staff_id), (None, Some(7)));

    let claim = db
        .store
        .claim("node-a", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ids(&claim), [client, staff]);
    assert!(db.store.get(404).await.unwrap().is_none());
}

/// Due rows are claimed in due order (`not_before`, else creation), a batch at a time.
async fn claims_follow_due_order_and_batch_size(db: TestStore) {
    let now = db.now().await;
    let insert = |seconds_ago: i64| {
        let db = &db;
        async move {
            db.insert_row(
                "INSERT INTO sms (client_id, mobile_no, message, not_before) VALUES ($1, $2, $3, $4)",
                &[int(1), text("+254712345678"), text("hello"), time(now - time::Duration::seconds(seconds_ago))],
            )
            .await
        }
    };
    let a = insert(50).await;
    let b = insert(10).await;
    let c = insert(40).await;
    let d = insert(20).await;
    let e = insert(30).await;
    let tomorrow = db
        .insert_row(
            "INSERT INTO sms (client_id, mobile_no, message, not_before) VALUES ($1, $2, $3, $4)",
            &[
                int(1),
                text("+254712345678"),
                text("later"),
                time(now + time::Duration::days(1)),
            ],
        )
        .await;

    let lease = Duration::from_secs(60);
    let mut first = vec![a, c];
    first.sort_unstable();
    assert_eq!(
        ids(&db.store.claim("node-a", 2, lease).await.unwrap()),
        first
    );
    let mut second = vec![e, d];
    second.sort_unstable();
    assert_eq!(
        ids(&db.store.claim("node-a", 2, lease).await.unwrap()),
        second
    );
    assert_eq!(ids(&db.store.claim("node-a", 2, lease).await.unwrap()), [b]);
    assert!(
        db.store
            .claim("node-a", 2, lease)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(
        db.status(tomorrow).await,
        "pending",
        "not_before in the future waits"
    );
    assert_eq!(db.count_status("sending").await, 5);
}

/// A claim leases the row with the database's clock, bumps the attempt
/// and writes the attempt and event rows.
async fn a_claim_leases_and_records_the_attempt(db: TestStore) {
    let id = db.insert(1, "+254712345678", "hello").await;
    let claim = db
        .store
        .claim("node-a", 10, Duration::from_secs(90))
        .await
        .unwrap();
    let now = db.now().await;
    assert_eq!(claim.expired, 0);
    assert_eq!(claim.messages.len(), 1);
    let claimed = &claim.messages[0];
    assert_eq!((claimed.id, claimed.attempt), (id, 1));
    assert_eq!(
        (claimed.mobile_no.as_str(), claimed.message.as_str()),
        ("+254712345678", "hello")
    );

    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "sending");
    assert_eq!(sms.attempts, 1);
    assert_eq!(sms.locked_by.as_deref(), Some("node-a"));
    let remaining = sms.lease_expires_at.expect("leased") - now;
    assert!(
        remaining > time::Duration::seconds(85) && remaining <= time::Duration::seconds(90),
        "lease ends {remaining} from the database's now"
    );
    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].attempt, attempts[0].instance.as_str()),
        (1, "node-a")
    );
    assert!(close(attempts[0].started_at, now, Duration::from_secs(5)));
    assert_eq!(
        (attempts[0].finished_at, attempts[0].outcome.as_deref()),
        (None, None)
    );
    assert_eq!(
        db.transitions(id).await,
        [(
            "pending".into(),
            "sending".into(),
            "claimed by node-a for attempt 1".into()
        )]
    );
    // Leased rows are not claimed again.
    assert!(
        db.store
            .claim("node-b", 10, Duration::from_secs(90))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

/// Pending rows past `expires_at` fail before the claim looks for work.
async fn expired_rows_fail_instead_of_being_sent(db: TestStore) {
    let now = db.now().await;
    let expired = db
        .insert_row(
            "INSERT INTO sms (client_id, mobile_no, message, expires_at) VALUES ($1, $2, $3, $4)",
            &[
                int(1),
                text("+254712345678"),
                text("too late"),
                time(now - time::Duration::seconds(1)),
            ],
        )
        .await;
    let fresh = db
        .insert_row(
            "INSERT INTO sms (client_id, mobile_no, message, expires_at) VALUES ($1, $2, $3, $4)",
            &[
                int(1),
                text("+254712345678"),
                text("in time"),
                time(now + time::Duration::hours(1)),
            ],
        )
        .await;
    let unlimited = db
        .insert_row(
            "INSERT INTO sms (client_id, mobile_no, message, expires_at) VALUES ($1, $2, $3, $4)",
            &[int(1), text("+254712345678"), text("whenever"), NULL_TIME],
        )
        .await;

    let claim = db
        .store
        .claim("node-a", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claim.expired, 1);
    assert_eq!(ids(&claim), [fresh, unlimited]);
    let sms = db.store.get(expired).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "failed");
    assert_eq!(sms.last_error.as_deref(), Some("expired"));
    assert_eq!(sms.attempts, 0);
    assert!(
        db.store.attempts(expired).await.unwrap().is_empty(),
        "never attempted"
    );
    assert_eq!(
        db.transitions(expired).await,
        [(
            "pending".into(),
            "failed".into(),
            "expired before it could be sent".into()
        )]
    );
    assert_eq!(
        db.store
            .claim("node-a", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .expired,
        0
    );
}

/// `n` one-time codes an hour past their `expires_at`, as after an outage.
pub async fn insert_expired_backlog(db: &TestStore, n: i64) {
    let now = db.now().await;
    db.insert_row(
        "INSERT INTO sms (client_id, mobile_no, message, expires_at) VALUES ($1, $2, $3, $4)",
        &[
            int(1),
            text("+254712345678"),
            text("your code is 123456"),
            time(now - time::Duration::hours(1)),
        ],
    )
    .await;
    // Doubling the expired rows, then topping them up to `n`.
    let copy = "INSERT INTO sms (client_id, mobile_no, message, expires_at) \
                SELECT client_id, mobile_no, message, expires_at FROM sms \
                WHERE expires_at IS NOT NULL LIMIT $1";
    let mut inserted = 1;
    while inserted < n {
        let added = db.exec(copy, &[int(inserted.min(n - inserted))]).await;
        inserted += i64::try_from(added).expect("row count");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM sms WHERE expires_at IS NOT NULL", &[])
            .await,
        n
    );
}

/// An OTP backlog after an outage: 3,000 rows an hour past `expires_at`. Not
/// one of them is handed out for sending; every one ends `failed` as expired,
/// while a fresh row among them is still claimed.
async fn an_expired_backlog_is_never_claimed(db: TestStore) {
    const BACKLOG: i64 = 3_000;
    let fresh = db.insert(1, "+254712345678", "still good").await;
    insert_expired_backlog(&db, BACKLOG).await;

    let mut claimed = Vec::new();
    let mut swept = 0;
    for _ in 0..10 {
        let claim = db
            .store
            .claim("node-a", 100, Duration::from_secs(60))
            .await
            .unwrap();
        swept += claim.expired;
        if claim.messages.is_empty() && claim.expired == 0 {
            break;
        }
        claimed.extend(ids(&claim));
    }
    assert_eq!(claimed, [fresh], "only the fresh row is handed out");
    assert_eq!(swept, BACKLOG as u64);
    assert_eq!(db.count_status("failed").await, BACKLOG);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM sms WHERE status = 'failed' AND last_error = 'expired' AND attempts = 0",
            &[]
        )
        .await,
        BACKLOG
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM sms_event WHERE to_status = 'failed' AND reason = 'expired before it could be sent'",
            &[]
        )
        .await,
        BACKLOG
    );
    assert_eq!(
        db.count("SELECT count(*) FROM sms_attempt", &[]).await,
        0,
        "no expired row has an attempt (the fresh row's is written at its outcome)"
    );
    assert_eq!(db.store.attempts(fresh).await.unwrap().len(), 1);
}
