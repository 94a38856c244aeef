//! The provider's health gate end to end: a provider that cannot take
//! messages (refused token, throttling, an outage) pauses sending instead of
//! declining the backlog or burning its attempts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smsrelay::dispatch::Dispatcher;
use tokio_util::sync::CancellationToken;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::support::*;

/// Answers `failure` until `healthy` is set, then accepts like [`AcceptWithId`].
struct Failing {
    failure: ResponseTemplate,
    healthy: Arc<AtomicBool>,
}

impl Respond for Failing {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if self.healthy.load(Ordering::SeqCst) {
            AcceptWithId.respond(request)
        } else {
            self.failure.clone()
        }
    }
}

/// A mock provider answering `failure` until the returned flag is set.
pub(super) async fn failing_provider(failure: ResponseTemplate) -> (MockServer, Arc<AtomicBool>) {
    let server = MockServer::start().await;
    let healthy = Arc::new(AtomicBool::new(false));
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(Failing {
            failure,
            healthy: healthy.clone(),
        })
        .mount(&server)
        .await;
    (server, healthy)
}

pub(super) async fn insert_many(db: &TestDb, n: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(db.insert(i, "+254712345678", "hello").await);
    }
    ids
}

/// Runs dispatch cycles until every message is `sent` (or `within` runs out).
pub(super) async fn drain(
    dispatcher: &Dispatcher,
    db: &TestDb,
    ids: &[i64],
    within: Duration,
) -> bool {
    eventually(within, || async {
        dispatcher
            .run_once(&CancellationToken::new())
            .await
            .unwrap();
        for &id in ids {
            if db.status(id).await != "sent" {
                return false;
            }
        }
        true
    })
    .await
}

/// Runs dispatch cycles for `period`; returns how many rows they claimed.
async fn cycles_for(dispatcher: &Dispatcher, period: Duration) -> usize {
    let until = Instant::now() + period;
    let mut claimed = 0;
    while Instant::now() < until {
        claimed += dispatcher
            .run_once(&CancellationToken::new())
            .await
            .unwrap()
            .claimed;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    claimed
}

const PAUSED_REASON: &str =
    "returned unsent, attempt not spent: provider paused (configuration refused or circuit open)";

/// Every message's `attempts` and number of attempt rows.
async fn attempts_of(db: &TestDb, ids: &[i64]) -> Vec<(u32, usize)> {
    let mut all = Vec::new();
    for &id in ids {
        let sms = db.store.get(id).await.unwrap().unwrap();
        all.push((sms.attempts, db.store.attempts(id).await.unwrap().len()));
    }
    all
}

/// How many `sending -> pending` events of these messages carry `reason`.
async fn events_with_reason(db: &TestDb, ids: &[i64], reason: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM sms_event WHERE sms_id = ANY($1) AND to_status = 'pending' AND reason = $2",
    )
    .bind(ids)
    .bind(reason)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// (messages with one attempt, messages with two); panics on any other count.
async fn attempt_counts(db: &TestDb, ids: &[i64]) -> (usize, usize) {
    let (mut one, mut two) = (0, 0);
    for &id in ids {
        let sms = db.store.get(id).await.unwrap().unwrap();
        match sms.attempts {
            1 => one += 1,
            2 => two += 1,
            n => panic!("message {id} used {n} attempts"),
        }
    }
    (one, two)
}

#[tokio::test]
async fn a_401_for_10s_then_200_sends_everything_once_without_spending_attempts() {
    let db = TestDb::new().await;
    let (provider, healthy) = failing_provider(ResponseTemplate::new(401)).await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.concurrency = 2;
    let dispatcher = dispatcher(&db, &config);
    let ids = insert_many(&db, 12).await;

    // The token is refused for 10 s: the first sends and the probe after the
    // first pause (5 s) get 401s.
    cycles_for(&dispatcher, Duration::from_secs(10)).await;
    let refused = provider.received_requests().await.unwrap().len();
    assert!(
        refused >= 2,
        "the probe was refused too, got {refused} requests"
    );
    healthy.store(true, Ordering::SeqCst);
    assert!(drain(&dispatcher, &db, &ids, Duration::from_secs(30)).await);

    assert_eq!(
        (db.count("declined").await, db.count("failed").await),
        (0, 0)
    );
    let mut accepted: Vec<i64> = received_ids(&provider).await[refused..].to_vec();
    accepted.sort_unstable();
    assert_eq!(accepted, ids, "every message accepted exactly once");
    // The 401s spent nothing: one attempt each, the accepted one.
    assert_eq!(attempts_of(&db, &ids).await, vec![(1, 1); ids.len()]);
    // Each refused message, and each one the paused gate held back, went
    // back to pending saying why.
    let paused = events_with_reason(&db, &ids, PAUSED_REASON).await;
    let returned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sms_event WHERE sms_id = ANY($1) AND to_status = 'pending'",
    )
    .bind(&ids)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(paused, returned);
    assert!(
        paused >= refused as i64,
        "{paused} returns for {refused} refusals"
    );
}

#[tokio::test]
async fn a_rejected_token_pauses_the_provider_and_declines_nothing() {
    let db = TestDb::new().await;
    let (provider, healthy) = failing_provider(ResponseTemplate::new(401)).await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.concurrency = 2;
    let dispatcher = dispatcher(&db, &config);
    let ids = insert_many(&db, 20).await;

    // The token is refused for 3 s (rotated at the provider, fixed by the operator).
    dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(cycles_for(&dispatcher, Duration::from_secs(3)).await, 0);
    let refused = provider.received_requests().await.unwrap().len();
    assert!(
        (1..=2).contains(&refused),
        "only the sends already out when the 401 came back reach the provider, got {refused}"
    );
    healthy.store(true, Ordering::SeqCst);

    assert!(drain(&dispatcher, &db, &ids, Duration::from_secs(15)).await);
    // Nothing declined or failed; every message accepted exactly once.
    let accepted: Vec<i64> = received_ids(&provider).await[refused..].to_vec();
    let mut sorted = accepted.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ids);
    // The refusals spent nothing: one attempt each, the accepted one.
    assert_eq!(attempt_counts(&db, &ids).await, (20, 0));
}

#[tokio::test]
async fn a_429_pauses_the_whole_provider_for_its_retry_after() {
    let db = TestDb::new().await;
    let (provider, healthy) =
        failing_provider(ResponseTemplate::new(429).insert_header("Retry-After", "2")).await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.concurrency = 1;
    let dispatcher = dispatcher(&db, &config);
    let ids = insert_many(&db, 10).await;

    let started = Instant::now();
    let first = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (first.retried, first.released),
        (0, 10),
        "the 429 spent nothing"
    );
    healthy.store(true, Ordering::SeqCst);
    // No request while the pause lasts, although nine messages are due.
    assert_eq!(
        cycles_for(&dispatcher, Duration::from_millis(1500)).await,
        0
    );
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);

    assert!(drain(&dispatcher, &db, &ids, Duration::from_secs(10)).await);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(provider.received_requests().await.unwrap().len(), 11);
    assert_eq!(attempt_counts(&db, &ids).await, (10, 0));
}

#[tokio::test]
async fn an_outage_opens_the_breaker_and_recovery_closes_it() {
    let db = TestDb::new().await;
    let (provider, healthy) = failing_provider(ResponseTemplate::new(503)).await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.concurrency = 1;
    let dispatcher = dispatcher(&db, &config);
    let ids = insert_many(&db, 20).await;

    // Five failures in a row open the circuit; the other fifteen wait unspent.
    let first = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((first.retried, first.released), (5, 15));
    assert_eq!(cycles_for(&dispatcher, Duration::from_secs(1)).await, 0);
    assert_eq!(provider.received_requests().await.unwrap().len(), 5);

    // The provider recovers; the half-open probe closes the circuit.
    healthy.store(true, Ordering::SeqCst);
    assert!(drain(&dispatcher, &db, &ids, Duration::from_secs(15)).await);
    assert_eq!(provider.received_requests().await.unwrap().len(), 25);
    assert_eq!(attempt_counts(&db, &ids).await, (15, 5));
    for &id in &ids {
        assert_eq!(db.status(id).await, "sent");
    }
}
