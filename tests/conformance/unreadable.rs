//! Rows the daemon cannot read, and the longest values the platform writes:
//! nothing the platform INSERTs may stop the queue.

use std::time::Duration;

use crate::backends::{Backend, TestStore, int, text};
use crate::ids;

conformance!(the_platforms_longest_values_are_accepted_and_sent_on,);

const LEASE: Duration = Duration::from_secs(60);

/// SQLite takes a BLOB in a TEXT column and every CHECK lets it pass. Such a
/// row is declined by id with a readable reason, and the rows after it are
/// claimed as usual, in this claim and the next.
#[tokio::test]
async fn sqlite_rows_that_cannot_be_read_are_declined_and_the_queue_goes_on() {
    let Some(db) = TestStore::new(Backend::Sqlite).await else {
        return;
    };
    let blob_number = db
        .insert_row(
            "INSERT INTO sms (client_id, mobile_no, message) VALUES ($1, X'2B32FF3534', $2)",
            &[int(1), text("hello")],
        )
        .await;
    let blob_message = db
        .insert_row(
            "INSERT INTO sms (client_id, mobile_no, message) VALUES ($1, $2, X'C328')",
            &[int(1), text("+254712345678")],
        )
        .await;
    let good = db.insert(1, "+254712345678", "readable").await;

    let claim = db.store.claim("node-a", 10, LEASE).await.unwrap();
    assert_eq!(ids(&claim), [good]);
    for (id, column) in [(blob_number, "mobile_no"), (blob_message, "message")] {
        assert_eq!(db.status(id).await, "declined", "row {id}");
        let reason = format!("invalid: column {column} cannot be read: it holds BLOB, not text");
        assert_eq!(
            db.count(
                "SELECT count(*) FROM sms_event WHERE sms_id = $1 AND from_status = 'sending' \
                 AND to_status = 'declined' AND reason = $2",
                &[int(id), text(reason)],
            )
            .await,
            1,
            "row {id}: {:?}",
            db.transitions(id).await
        );
        let attempts = db.store.attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome.as_deref(), Some("invalid"));
        assert_eq!(
            attempts[0].error,
            Some(format!(
                "column {column} cannot be read: it holds BLOB, not text"
            ))
        );
    }

    let later = db.insert(1, "+254712345678", "after them").await;
    let claim = db.store.claim("node-a", 10, LEASE).await.unwrap();
    assert_eq!(ids(&claim), [later], "the queue goes on");
}

/// The platform's INSERT is never refused for its content: a number longer
/// than any real one, a message longer than 64 KiB, and the API's longest
/// idempotency key (a 64-character token name, `:`, a 200-character key).
/// The rows are then claimed like any other.
async fn the_platforms_longest_values_are_accepted_and_sent_on(db: TestStore) {
    let number = "+254 712 345 678 ".repeat(12);
    let message = "Your statement: ".repeat(5_000);
    let long = db
        .try_insert(
            "INSERT INTO sms (client_id, mobile_no, message) VALUES ($1, $2, $3)",
            &[int(1), text(number.clone()), text(message.clone())],
        )
        .await
        .unwrap_or_else(|e| panic!("a {}-character number is accepted: {e}", number.len()));
    let key = format!("{}:{}", "t".repeat(64), "k".repeat(200));
    let new = smsrelay::domain::NewSms {
        recipient: smsrelay::domain::Recipient::Client(1),
        mobile_no: "+254712345678".into(),
        message: "hello".into(),
        not_before: None,
        expires_at: None,
        idempotency_key: Some(key.clone()),
    };
    let first = db.store.enqueue(&new).await.unwrap();
    let again = db.store.enqueue(&new).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(
        again.id,
        first.id,
        "the {}-character key finds its row",
        key.len()
    );

    let claim = db.store.claim("node-a", 10, LEASE).await.unwrap();
    assert_eq!(ids(&claim), [long, first.id]);
    let claimed = &claim.messages[0];
    assert_eq!(
        (claimed.mobile_no.as_str(), claimed.message.len()),
        (number.as_str(), message.len())
    );
}
