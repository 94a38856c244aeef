//! The pipelined dispatcher: one slow provider answer holds up neither the
//! other outcomes of its claim nor new claims, and claims run ahead of the
//! sends, with the rows in hand within `concurrency + batch_size`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::*;

const SLOW: Duration = Duration::from_secs(4);

/// Accepts like [`AcceptWithId`]: after [`SLOW`] for message `slow`, after
/// `others` for every other.
struct SlowFor {
    slow: Arc<std::sync::atomic::AtomicI64>,
    others: Duration,
}

impl Respond for SlowFor {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let delay =
            if body["id"].as_i64() == Some(self.slow.load(std::sync::atomic::Ordering::SeqCst)) {
                SLOW
            } else {
                self.others
            };
        AcceptWithId.respond(request).set_delay(delay)
    }
}

/// A provider slow for one message (set through the returned handle).
async fn slow_for_one(others: Duration) -> (MockServer, Arc<std::sync::atomic::AtomicI64>) {
    let slow = Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(SlowFor {
            slow: slow.clone(),
            others,
        })
        .mount(&provider)
        .await;
    (provider, slow)
}

async fn all_sent(db: &TestDb, ids: &[i64]) -> bool {
    for &id in ids {
        if db.status(id).await != "sent" {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_send_does_not_hold_up_the_outcomes_of_its_claim() {
    let db = TestDb::new().await;
    let (provider, slow) = slow_for_one(Duration::ZERO).await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.concurrency = 4;
    let dispatcher = dispatcher(&db, &config);
    let slow_id = db.insert(0, "+254712345678", "slow").await;
    slow.store(slow_id, std::sync::atomic::Ordering::SeqCst);
    let mut others = Vec::new();
    for i in 1..10 {
        others.push(db.insert(i, "+254712345678", "fast").await);
    }

    let started = Instant::now();
    let stop = CancellationToken::new();
    let (report, recorded_in) = tokio::join!(dispatcher.run_once(&stop), async {
        assert!(
            eventually(SLOW, || all_sent(&db, &others)).await,
            "the fast sends are recorded while the slow one is in flight"
        );
        let recorded_in = started.elapsed();
        assert_eq!(db.status(slow_id).await, "sending");
        recorded_in
    });
    eprintln!("nine fast outcomes recorded after {recorded_in:?}, beside a {SLOW:?} send");
    assert!(
        recorded_in < SLOW / 4,
        "recorded after {recorded_in:?}, a fraction of the slow send's {SLOW:?}"
    );
    let report = report.unwrap();
    assert_eq!((report.claimed, report.sent, report.stale), (10, 10, 0));
    assert_eq!(db.status(slow_id).await, "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_messages_are_claimed_and_sent_while_a_slow_send_is_in_flight() {
    let db = TestDb::new().await;
    let (provider, slow) = slow_for_one(Duration::ZERO).await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.concurrency = 4;
    let dispatcher = Arc::new(dispatcher(&db, &config));
    let slow_id = db.insert(0, "+254712345678", "slow").await;
    slow.store(slow_id, std::sync::atomic::Ordering::SeqCst);
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (dispatcher, stop) = (dispatcher.clone(), stop.clone());
        async move { dispatcher.run(stop, || {}).await }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            !provider.received_requests().await.unwrap().is_empty()
        })
        .await
    );

    // The platform inserts more while the slow send is at the provider.
    let inserted = Instant::now();
    let mut later = Vec::new();
    for i in 1..6 {
        later.push(db.insert(i, "+254712345678", "later").await);
    }
    let sent = eventually(SLOW, || all_sent(&db, &later)).await;
    let sent_in = inserted.elapsed();
    let slow_status = db.status(slow_id).await;
    stop.cancel();
    running.await.unwrap();
    assert!(
        sent,
        "the later messages are sent while the slow one is in flight"
    );
    eprintln!("later messages sent {sent_in:?} after their insert, beside a {SLOW:?} send");
    assert!(sent_in < SLOW / 2, "sent after {sent_in:?}");
    assert_eq!(slow_status, "sending", "the slow send was still in flight");
    assert_eq!(
        db.status(slow_id).await,
        "sent",
        "and finished within the grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_in_hand_stay_within_concurrency_plus_one_batch() {
    let db = TestDb::new().await;
    let (provider, _) = slow_for_one(Duration::from_millis(30)).await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.concurrency = 3;
    config.dispatch.batch_size = 5;
    let dispatcher = Arc::new(dispatcher(&db, &config));
    sqlx::query(
        "INSERT INTO sms (client_id, mobile_no, message)
         SELECT g, '+2547' || lpad(g::text, 8, '0'), 'message ' || g FROM generate_series(1, 150) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (dispatcher, stop) = (dispatcher.clone(), stop.clone());
        async move { dispatcher.run(stop, || {}).await }
    });
    let mut most_in_hand = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count("sent").await < 150 && Instant::now() < deadline {
        most_in_hand = most_in_hand.max(db.count("sending").await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    running.await.unwrap();
    assert_eq!(db.count("sent").await, 150);
    assert_eq!(received_ids(&provider).await.len(), 150, "each sent once");
    eprintln!("at most {most_in_hand} rows in hand");
    assert!(
        (6..=8).contains(&most_in_hand),
        "{most_in_hand} rows in hand: more than one batch was claimed while sends were in flight, never more than 3 + 5"
    );
}
