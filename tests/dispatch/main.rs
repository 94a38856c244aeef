//! The dispatcher end to end against a real PostgreSQL and a mock provider on loopback.

#[path = "../support/mod.rs"]
mod support;

#[path = "../support/backends.rs"]
mod backends;

/// One test module per name, running `name(backend)` on SQLite, PostgreSQL and MariaDB/MySQL.
macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                use crate::backends::Backend;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(Backend::Postgres).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    super::$name(Backend::MySql).await
                }
            }
        )+
    };
}

mod ambiguous;
mod db_errors;
mod lease;
mod pipeline;
mod provider_health;
mod routing;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use smsrelay::housekeeping::{ReaperSettings, reap_once};
use smsrelay::store::Retention;
use support::*;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn reaper(max_attempts: u32) -> ReaperSettings {
    ReaperSettings {
        schedule: "* * * * * *".into(),
        max_attempts,
        guarantee: smsrelay::domain::outcome::Guarantee::AtLeastOnce,
        batch: 100,
    }
}

#[tokio::test]
async fn happy_path_sends_records_and_tells_the_whole_story() {
    let db = TestDb::new().await;
    let provider = accepting_provider().await;
    let config = test_config(&db, &provider.uri());
    let dispatcher = dispatcher(&db, &config);
    let id = db
        .insert(42, "+254 712 345 678", "Your loan repayment is due")
        .await;

    let report = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((report.claimed, report.sent), (1, 1));

    // The provider got exactly the message, normalised, with a stable idempotency key.
    let requests = provider.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"id": id, "to": "+254712345678", "message": "Your loan repayment is due"})
    );
    let key = requests[0].headers["idempotency-key"].to_str().unwrap();
    let send_key = key.strip_prefix(&format!("sms-{id}-")).unwrap_or_default();
    assert!(
        send_key.len() == 32 && send_key.bytes().all(|b| b.is_ascii_hexdigit()),
        "key {key}: sms-<id>-<128 random bits in hex>"
    );

    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "sent");
    assert_eq!(sms.attempts, 1);
    assert_eq!(sms.segments, Some(1));
    assert_eq!(
        sms.provider_message_id.as_deref(),
        Some(format!("prov-{id}").as_str())
    );
    assert_eq!(
        sms.mobile_no, "+254 712 345 678",
        "the stored number is kept as it was"
    );
    assert!(sms.sent_at.is_some());
    assert!(sms.locked_by.is_none() && sms.lease_expires_at.is_none());

    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("accepted"));
    assert_eq!(attempts[0].http_status, Some(200));
    assert_eq!(attempts[0].instance, "test-1");
    assert!(attempts[0].finished_at.is_some());
    assert_eq!(
        db.transitions(id).await,
        [
            ("pending".into(), "sending".into()),
            ("sending".into(), "sent".into())
        ]
    );

    // Nothing left to do: a second cycle sends nothing more.
    let again = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again.claimed, 0);
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn transient_failure_is_retried_and_the_history_shows_both_attempts() {
    let db = TestDb::new().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .respond_with(AcceptWithId)
        .mount(&provider)
        .await;
    let config = test_config(&db, &provider.uri());
    let dispatcher = dispatcher(&db, &config);
    let id = db.insert(1, "+254712345678", "hello").await;

    let first = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(first.retried, 1);
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "pending");
    assert!(sms.next_attempt_at.is_some());
    assert_eq!(
        sms.last_error.as_deref(),
        Some("provider answered HTTP 503")
    );

    // backoff_initial is 10ms in tests: the retry becomes due almost at once.
    assert!(
        eventually(Duration::from_secs(5), || async {
            dispatcher
                .run_once(&CancellationToken::new())
                .await
                .unwrap();
            db.status(id).await == "sent"
        })
        .await
    );
    let attempts = db.store.attempts(id).await.unwrap();
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.clone().unwrap(), a.http_status))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "transient".to_owned(), Some(503)),
            (2, "accepted".to_owned(), Some(200))
        ]
    );
    assert_eq!(
        db.transitions(id).await,
        [
            ("pending".into(), "sending".into()),
            ("sending".into(), "pending".into()),
            ("pending".into(), "sending".into()),
            ("sending".into(), "sent".into())
        ]
    );
    assert_eq!(received_ids(&provider).await, [id, id]);
    // Each request says which attempt it is: a receiver can tell the retry from the first send.
    let numbered: Vec<_> = provider
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.headers
                .get("x-smsrelay-attempt")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(numbered, [Some("1".to_owned()), Some("2".to_owned())]);
}

#[tokio::test]
async fn retry_after_from_a_429_is_honoured() {
    let db = TestDb::new().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "120"))
        .mount(&provider)
        .await;
    let config = test_config(&db, &provider.uri());
    let dispatcher = dispatcher(&db, &config);
    let id = db.insert(1, "+254712345678", "hello").await;

    dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    // The 429 is about the provider, not the message: back to pending unspent.
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!((sms.status.as_str(), sms.attempts), ("pending", 0));
    // The provider is paused for its 120 s: nothing is claimed, it hears nothing more.
    assert_eq!(
        dispatcher
            .run_once(&CancellationToken::new())
            .await
            .unwrap()
            .claimed,
        0
    );
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn permanent_rejection_declines_without_retrying() {
    let db = TestDb::new().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400).set_body_string("invalid destination +254712345678"),
        )
        .mount(&provider)
        .await;
    let config = test_config(&db, &provider.uri());
    let dispatcher = dispatcher(&db, &config);
    let id = db.insert(1, "+254712345678", "hello").await;

    let report = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.declined, 1);
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "declined");
    let error = sms.last_error.unwrap();
    assert_eq!(error, "provider refused the message: HTTP 400");
    assert!(
        !error.contains("712345678"),
        "the provider's body (with the number) is not stored"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        dispatcher
            .run_once(&CancellationToken::new())
            .await
            .unwrap()
            .claimed,
        0
    );
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(attempts[0].outcome.as_deref(), Some("permanent"));
    assert_eq!(attempts[0].http_status, Some(400));
}

#[tokio::test]
async fn exhausted_attempts_fail_after_exactly_max_attempts_sends() {
    let db = TestDb::new().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&provider)
        .await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.max_attempts = 3;
    let dispatcher = dispatcher(&db, &config);
    let id = db.insert(1, "+254712345678", "hello").await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            dispatcher
                .run_once(&CancellationToken::new())
                .await
                .unwrap();
            db.status(id).await == "failed"
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(received_ids(&provider).await, [id, id, id]);
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.attempts, 3);
    let events = db.store.events(id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.to_status.as_str(), "failed");
    assert_eq!(
        last.reason,
        "attempts exhausted after 3 sends: provider answered HTTP 502"
    );
}

#[tokio::test]
async fn expired_messages_fail_and_future_ones_wait() {
    let db = TestDb::new().await;
    let provider = accepting_provider().await;
    let config = test_config(&db, &provider.uri());
    let dispatcher = dispatcher(&db, &config);
    let expired: i64 = sqlx::query_scalar(
        "INSERT INTO sms (client_id, mobile_no, message, expires_at)
         VALUES (1, '+254712345678', 'too late', now() - interval '1 second') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let later: i64 = sqlx::query_scalar(
        "INSERT INTO sms (staff_id, mobile_no, message, not_before)
         VALUES (7, '+254712345678', 'tomorrow', now() + interval '1 day') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let report = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((report.expired, report.claimed), (1, 0));
    let sms = db.store.get(expired).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "failed");
    assert_eq!(sms.last_error.as_deref(), Some("expired"));
    assert_eq!(sms.attempts, 0);
    assert_eq!(
        db.transitions(expired).await,
        [("pending".into(), "failed".into())]
    );
    assert_eq!(db.status(later).await, "pending");
    assert!(provider.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn invalid_input_is_declined_with_a_readable_reason_and_never_sent() {
    let db = TestDb::new().await;
    let provider = accepting_provider().await;
    let mut config = test_config(&db, &provider.uri());
    config.validation.max_segments = 2;
    let dispatcher = dispatcher(&db, &config);
    let bad_number = db.insert(1, "not a number", "hello").await;
    let empty = db.insert(1, "+254712345678", "   ").await;
    let too_long = db.insert(1, "+254712345678", &"a".repeat(307)).await;
    let national = db
        .insert(1, "0712 345 678", "national form, default region KE")
        .await;

    let report = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((report.declined, report.sent), (3, 1));

    let reason = |id| {
        let db = &db;
        async move { db.store.get(id).await.unwrap().unwrap().last_error.unwrap() }
    };
    assert_eq!(
        reason(bad_number).await,
        "mobile number could not be parsed"
    );
    assert_eq!(reason(empty).await, "message is empty");
    assert_eq!(
        reason(too_long).await,
        "message needs 3 segments, more than validation.max_segments = 2"
    );
    for id in [bad_number, empty, too_long] {
        assert_eq!(db.status(id).await, "declined");
        let attempts = db.store.attempts(id).await.unwrap();
        assert_eq!(attempts[0].outcome.as_deref(), Some("invalid"));
        assert_eq!(attempts[0].http_status, None);
    }
    // Only the valid one reached the provider, normalised with the default region.
    let requests = provider.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        (body["id"].as_i64(), body["to"].as_str()),
        (Some(national), Some("+254712345678"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_share_5000_messages_and_each_is_sent_exactly_once() {
    let db = TestDb::new().await;
    let provider = accepting_provider().await;
    sqlx::query(
        "INSERT INTO sms (client_id, mobile_no, message)
         SELECT g, '+2547' || lpad(g::text, 8, '0'), 'message ' || g FROM generate_series(1, 5000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.batch_size = 50;
    config.dispatch.concurrency = 8;
    let stop = CancellationToken::new();
    let mut runners = Vec::new();
    for instance in ["node-a", "node-b"] {
        let mut config = config.clone();
        config.dispatch.instance_id = Some(instance.into());
        let dispatcher = Arc::new(dispatcher(&db, &config));
        let stop = stop.clone();
        runners.push(tokio::spawn(
            async move { dispatcher.run(stop, || {}).await },
        ));
    }
    let all_sent = eventually(Duration::from_secs(120), || async {
        db.count("sent").await == 5000
    })
    .await;
    stop.cancel();
    for runner in runners {
        runner.await.unwrap();
    }
    assert!(all_sent, "only {} of 5000 sent", db.count("sent").await);

    let ids = received_ids(&provider).await;
    assert_eq!(
        ids.len(),
        5000,
        "the provider received each message once, no more"
    );
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5000);
    let per_instance: Vec<(String, i64)> = sqlx::query_as(
        "SELECT instance, count(*) FROM sms_attempt GROUP BY instance ORDER BY instance",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        per_instance.len(),
        2,
        "both instances claimed work: {per_instance:?}"
    );
    assert_eq!(
        per_instance.iter().map(|(_, n)| n).sum::<i64>(),
        5000,
        "one attempt per message"
    );
    let max_attempts: i32 = sqlx::query_scalar("SELECT max(attempts) FROM sms")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(max_attempts, 1);
}

#[tokio::test]
async fn expired_lease_is_recovered_and_the_abandoned_attempt_is_recorded() {
    let db = TestDb::new().await;
    let provider = accepting_provider().await;
    let config = test_config(&db, &provider.uri());
    let id = db.insert(1, "+254712345678", "hello").await;

    // An instance claims and then "crashes": it never records an outcome.
    let claim = db
        .store
        .claim("crashed-node", 10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(claim.messages.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;

    let reaped = reap_once(db.store.as_ref(), &reaper(8)).await.unwrap();
    assert_eq!((reaped.requeued, reaped.failed), (1, 0));
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "pending");
    assert_eq!(
        sms.last_error.as_deref(),
        Some("lease of crashed-node expired during attempt 1")
    );

    dispatcher(&db, &config)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(db.status(id).await, "sent");
    let attempts = db.store.attempts(id).await.unwrap();
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.instance.as_str(), a.outcome.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "crashed-node", Some("abandoned")),
            (2, "test-1", Some("accepted"))
        ]
    );
}

#[tokio::test]
async fn reaper_fails_a_message_whose_last_attempt_was_abandoned() {
    let db = TestDb::new().await;
    let id = db.insert(1, "+254712345678", "hello").await;
    db.store
        .claim("crashed-node", 10, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reaped = reap_once(db.store.as_ref(), &reaper(1)).await.unwrap();
    assert_eq!((reaped.requeued, reaped.failed), (0, 1));
    assert_eq!(db.status(id).await, "failed");
}

#[tokio::test]
async fn a_stale_outcome_write_changes_nothing() {
    let db = TestDb::new().await;
    let id = db.insert(1, "+254712345678", "hello").await;
    let store = db.store();

    // Node A claims, its lease runs out, node B takes the message over.
    store
        .claim("node-a", 10, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    reap_once(store.as_ref(), &reaper(8)).await.unwrap();
    let b = store
        .claim("node-b", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(b.messages[0].attempt, 2);
    let before = (
        db.store.get(id).await.unwrap(),
        db.transitions(id).await,
        db.store.attempts(id).await.unwrap(),
    );

    let late = |instance: &str, attempt: u32| smsrelay::domain::Outcome {
        id,
        attempt,
        outcome: smsrelay::domain::AttemptOutcome::Accepted,
        next: smsrelay::domain::NextState::Sent,
        http_status: Some(200),
        provider_message_id: Some(format!("late-{instance}")),
        provider: Some("webhook".into()),
        error: None,
        segments: Some(1),
        reason: "accepted".into(),
    };
    // A's late answer for attempt 1, and a write under the right attempt but the wrong owner.
    let report = store
        .record_outcomes("node-a", &[late("node-a", 1)])
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale), (0, 1));
    let report = store
        .record_outcomes("node-a", &[late("node-a", 2)])
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale), (0, 1));

    let after = (
        db.store.get(id).await.unwrap(),
        db.transitions(id).await,
        db.store.attempts(id).await.unwrap(),
    );
    assert_eq!(
        before, after,
        "the row, its events and its attempts are untouched"
    );
    let row = after.0.unwrap();
    assert_eq!(row.status.as_str(), "sending");
    assert_eq!(row.locked_by.as_deref(), Some("node-b"));

    // B's own write still applies.
    let report = store
        .record_outcomes("node-b", &[late("node-b", 2)])
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale), (1, 0));
    assert_eq!(db.status(id).await, "sent");
}

#[tokio::test]
async fn the_database_refuses_transitions_outside_the_graph() {
    let db = TestDb::new().await;
    let id = db.insert(1, "+254712345678", "hello").await;
    let err = sqlx::query("UPDATE sms SET status = 'delivered' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("pending -> delivered is not allowed"),
        "{err}"
    );
    let err = sqlx::query("INSERT INTO sms (client_id, staff_id, mobile_no, message) VALUES (1, 2, '+254712345678', 'x')")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sms_one_recipient"), "{err}");
    let err = sqlx::query("INSERT INTO sms (mobile_no, message) VALUES ('+254712345678', 'x')")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sms_one_recipient"), "{err}");
    assert_eq!(db.status(id).await, "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_sends_and_releases_the_rest() {
    let db = TestDb::new().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(800)))
        .mount(&provider)
        .await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.batch_size = 10;
    config.dispatch.concurrency = 2;
    config.dispatch.shutdown_grace = Duration::from_secs(5);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(db.insert(i, "+254712345678", "hello").await);
    }
    let app = smsrelay::app::Application::from_parts(&config, db.store(), webhook(&config));
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));

    // Stop while the first two sends are in flight.
    assert!(
        eventually(Duration::from_secs(10), || async {
            provider.received_requests().await.unwrap().len() >= 2
        })
        .await
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("shutdown within the grace period")
        .unwrap()
        .unwrap();

    let received: HashSet<i64> = received_ids(&provider).await.into_iter().collect();
    assert_eq!(received.len(), 2, "no new send started after the stop");
    for id in ids {
        let sms = db.store.get(id).await.unwrap().unwrap();
        if received.contains(&id) {
            assert_eq!(
                sms.status.as_str(),
                "sent",
                "in-flight send {id} finished and was recorded"
            );
        } else {
            assert_eq!(sms.status.as_str(), "pending", "unsent {id} handed back");
            assert_eq!(sms.attempts, 0);
            assert!(db.store.attempts(id).await.unwrap().is_empty());
            assert_eq!(
                db.transitions(id).await,
                [
                    ("pending".into(), "sending".into()),
                    ("sending".into(), "pending".into())
                ]
            );
        }
    }
    assert_eq!(db.count("sending").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_run_loses_nothing() {
    let db = TestDb::new().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(AcceptWithId)
        .mount(&provider)
        .await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.batch_size = 20;
    config.dispatch.lease = Duration::from_secs(10);
    config.database.call_timeout = Duration::from_secs(2);
    config.housekeeping.reaper = "* * * * * *".into();
    sqlx::query(
        "INSERT INTO sms (client_id, mobile_no, message)
         SELECT g, '+2547' || lpad(g::text, 8, '0'), 'message ' || g FROM generate_series(1, 3000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut options = options(&db.url);
    options.pool_size = 5;
    options.connect_timeout = Duration::from_secs(1);
    options.call_timeout = Duration::from_secs(2);
    let store = smsrelay::store::open(&options).unwrap();
    let app = smsrelay::app::Application::from_parts(&config, store, webhook(&config));
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));

    assert!(
        eventually(Duration::from_secs(30), || async {
            db.count("sent").await >= 300
        })
        .await
    );
    db.cut().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.restore().await;

    let all_sent = eventually(Duration::from_secs(90), || async {
        db.count("sent").await == 3000
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(
        all_sent,
        "only {} of 3000 sent after the outage",
        db.count("sent").await
    );
    let ids = received_ids(&provider).await;
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 3000, "every message reached the provider");
    assert_eq!(
        ids.len(),
        3000,
        "no message was sent twice (the outage was shorter than the lease)"
    );
}

#[tokio::test]
async fn claims_use_database_time_for_the_lease() {
    let db = TestDb::new().await;
    db.insert(1, "+254712345678", "hello").await;
    db.store
        .claim("node-a", 10, Duration::from_secs(90))
        .await
        .unwrap();
    let (lease, now): (OffsetDateTime, OffsetDateTime) =
        sqlx::query_as("SELECT lease_expires_at, now() FROM sms")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let remaining = lease - now;
    assert!(
        remaining > time::Duration::seconds(85) && remaining <= time::Duration::seconds(90),
        "{remaining}"
    );
}

#[tokio::test]
async fn only_one_reaper_runs_at_a_time() {
    let db = TestDb::new().await;
    let id = db.insert(1, "+254712345678", "hello").await;
    db.store
        .claim("crashed-node", 10, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Another instance's reaper is mid-run: it holds the lock in its transaction.
    let mut other = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(0x0073_6d73_7265_6170_i64)
        .execute(&mut *other)
        .await
        .unwrap();
    let report = reap_once(db.store.as_ref(), &reaper(8)).await.unwrap();
    assert!(report.skipped);
    assert_eq!(
        db.status(id).await,
        "sending",
        "left to the instance holding the lock"
    );
    other.commit().await.unwrap();

    let report = reap_once(db.store.as_ref(), &reaper(8)).await.unwrap();
    assert!(!report.skipped);
    assert_eq!(db.status(id).await, "pending");
}

#[tokio::test]
async fn only_one_retention_batch_runs_at_a_time() {
    let db = TestDb::new().await;
    let id = db.insert(1, "+254712345678", "hello").await;
    let claim = db
        .store
        .claim("node-a", 10, Duration::from_secs(60))
        .await
        .unwrap();
    let sent = smsrelay::domain::Outcome {
        id,
        attempt: claim.messages[0].attempt,
        outcome: smsrelay::domain::AttemptOutcome::Accepted,
        next: smsrelay::domain::NextState::Sent,
        http_status: Some(200),
        provider_message_id: None,
        provider: None,
        error: None,
        segments: Some(1),
        reason: "accepted".into(),
    };
    db.store.record_outcomes("node-a", &[sent]).await.unwrap();
    sqlx::query("UPDATE sms SET updated_at = now() - interval '100 days' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let retention = Duration::from_secs(90 * 24 * 3600);

    // Another instance's retention batch is mid-run: it holds the lock in its transaction.
    let mut other = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(0x0073_6d73_7265_7465_i64)
        .execute(&mut *other)
        .await
        .unwrap();
    let batch = db.store.delete_finished(retention, 100).await.unwrap();
    assert!(batch.skipped);
    assert_eq!(
        db.status(id).await,
        "sent",
        "left to the instance holding the lock"
    );
    other.commit().await.unwrap();

    let batch = db.store.delete_finished(retention, 100).await.unwrap();
    assert!(!batch.skipped);
    assert_eq!((batch.messages, batch.attempts, batch.events), (1, 1, 2));
}

/// `smsrelay run` schedules retention: an aged finished message and its
/// history go on the next run; an aged pending one is sent, not deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_retention_on_its_schedule() {
    let db = TestDb::new().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(AcceptWithId)
        .mount(&provider)
        .await;
    let mut config = test_config(&db, &provider.uri());
    config.housekeeping.retention_schedule = "* * * * * *".into();
    let old = db.insert(1, "+254712345678", "old").await;
    let claim = db
        .store
        .claim("node-a", 10, Duration::from_secs(60))
        .await
        .unwrap();
    let sent = smsrelay::domain::Outcome {
        id: old,
        attempt: claim.messages[0].attempt,
        outcome: smsrelay::domain::AttemptOutcome::Accepted,
        next: smsrelay::domain::NextState::Sent,
        http_status: Some(200),
        provider_message_id: None,
        provider: None,
        error: None,
        segments: Some(1),
        reason: "accepted".into(),
    };
    db.store.record_outcomes("node-a", &[sent]).await.unwrap();
    let waiting = db.insert(2, "+254712345678", "waiting").await;
    sqlx::query("UPDATE sms SET updated_at = now() - interval '100 days'")
        .execute(&db.pool)
        .await
        .unwrap();

    let app = smsrelay::app::Application::from_parts(&config, db.store.clone(), webhook(&config));
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));
    let gone = eventually(Duration::from_secs(20), || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM sms WHERE id = $1)
                  + (SELECT count(*) FROM sms_event WHERE sms_id = $1)
                  + (SELECT count(*) FROM sms_attempt WHERE sms_id = $1)",
        )
        .bind(old)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        left == 0
    })
    .await;
    let waiting_sent = eventually(Duration::from_secs(20), || async {
        db.status(waiting).await == "sent"
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(gone, "the aged sent message and its history were deleted");
    assert!(
        waiting_sent,
        "the aged pending message was sent, not deleted"
    );
    assert_eq!(received_ids(&provider).await.len(), 1);
}
