//! Per-provider limits and failover end to end: `rate_limit` (segments per
//! second) and `max_in_flight` hold sends back in the provider's gate, and
//! with `[provider] order` an outage of the first provider sends the queue to
//! the next and back once it recovers, each attempt naming its provider.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use smsrelay::Config;
use smsrelay::app::Application;
use smsrelay::dispatch::Dispatcher;
use smsrelay::provider::ProviderKind;
use smsrelay::provider::kannel::KannelSettings;
use smsrelay::secrets::Secret;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::provider_health::{drain, failing_provider, insert_many};
use super::support::*;
use crate::backends::{Backend, TestStore};

/// 400 GSM-7 characters: three segments (153 + 153 + 94).
fn three_segments() -> String {
    "Your repayment schedule has changed. ".repeat(11)[..400].to_owned()
}

/// A provider on loopback that holds each request for `hold`, counting the
/// requests in flight at once; returns its URL and the highest count seen.
async fn counting_provider(hold: Duration) -> (String, Arc<AtomicUsize>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (now, most) = (in_flight.clone(), peak.clone());
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (now, most) = (now.clone(), most.clone());
            async move {
                let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                axum::Json(serde_json::json!({ "id": format!("prov-{}", request["id"]) }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, peak)
}

#[tokio::test]
async fn the_rate_limit_counts_segments_and_holds_sends_back() {
    let db = TestDb::new().await;
    let provider = accepting_provider().await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.concurrency = 8;
    // 10 segments per second, a burst of 10: thirty segments take at least 2 s.
    config.provider.webhook.rate_limit = Some(10.0);
    config.validate().unwrap();
    let dispatcher = dispatcher(&db, &config);
    let text = three_segments();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(db.insert(i, "+254712345678", &text).await);
    }

    let started = Instant::now();
    assert!(drain(&dispatcher, &db, &ids, Duration::from_secs(30)).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "30 segments at 10/s with a burst of 10 took {took:?}"
    );
    let mut accepted = received_ids(&provider).await;
    accepted.sort_unstable();
    assert_eq!(accepted, ids, "each sent once");
    for &id in &ids {
        let sms = db.store.get(id).await.unwrap().unwrap();
        assert_eq!((sms.attempts, sms.segments), (1, Some(3)));
    }
}

#[tokio::test]
async fn the_provider_never_sees_more_than_max_in_flight_requests() {
    let db = TestDb::new().await;
    let (url, peak) = counting_provider(Duration::from_millis(150)).await;
    let mut config = test_config(&db, &url);
    config.dispatch.concurrency = 8;
    config.provider.webhook.max_in_flight = Some(2);
    config.validate().unwrap();
    let dispatcher = dispatcher(&db, &config);
    let ids = insert_many(&db, 12).await;

    assert!(drain(&dispatcher, &db, &ids, Duration::from_secs(30)).await);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "eight sends at once, two requests at a time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_sends_still_waiting_for_the_rate_limit_unspent() {
    let db = TestDb::new().await;
    let provider = accepting_provider().await;
    let mut config = test_config(&db, &provider.uri());
    config.dispatch.concurrency = 8;
    config.dispatch.guarantee = smsrelay::domain::outcome::Guarantee::AtMostOnce;
    config.dispatch.shutdown_grace = Duration::from_secs(5);
    // One segment a second: after the first, each send waits its turn in the gate.
    config.provider.webhook.rate_limit = Some(1.0);
    config.validate().unwrap();
    let ids = insert_many(&db, 6).await;
    let app = Application::from_parts(&config, db.store(), webhook(&config));
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));

    assert!(
        eventually(Duration::from_secs(10), || async {
            !provider.received_requests().await.unwrap().is_empty()
        })
        .await
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(4), running)
        .await
        .expect("waiting sends do not hold shutdown for the grace period")
        .unwrap()
        .unwrap();

    let received = received_ids(&provider).await;
    assert!(received.len() < ids.len(), "the rate limit held some back");
    for &id in &ids {
        let sms = db.store.get(id).await.unwrap().unwrap();
        if received.contains(&id) {
            assert_eq!(sms.status.as_str(), "sent");
        } else {
            // Never offered to the provider: not `interrupted`, not failed
            // (at-most-once), just back in the queue with its attempt.
            assert_eq!((sms.status.as_str(), sms.attempts), ("pending", 0), "{id}");
            assert!(db.store.attempts(id).await.unwrap().is_empty());
        }
    }
}

/// The webhook provider (at `primary`) first, then Kannel (at `secondary`).
fn failover_config(db: &TestDb, primary: &str, secondary: &str) -> Config {
    let mut config = test_config(db, primary);
    config.provider.order = vec![ProviderKind::Webhook, ProviderKind::Kannel];
    config.provider.kannel = Some(KannelSettings {
        url: format!("{secondary}/cgi-bin/sendsms"),
        username: "tester".into(),
        password: Some(Secret::new("foobar")),
        ..KannelSettings::default()
    });
    config.dispatch.concurrency = 1;
    config.validate().expect("failover config is valid");
    config
}

/// (provider, outcome) of every attempt of a message, oldest first.
async fn attempts_by_provider(db: &TestDb, id: i64) -> Vec<(String, String)> {
    db.store
        .attempts(id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| {
            (
                a.provider.unwrap_or_default(),
                a.outcome.unwrap_or_default(),
            )
        })
        .collect()
}

/// Sends one new message; returns its id once it is sent.
async fn send_one(dispatcher: &Dispatcher, db: &TestDb) -> i64 {
    let id = db.insert(7, "+254712345678", "hello").await;
    assert!(drain(dispatcher, db, &[id], Duration::from_secs(10)).await);
    id
}

#[tokio::test]
async fn an_outage_of_the_primary_fails_over_to_the_secondary_and_back() {
    let db = TestDb::new().await;
    let (primary, healthy) = failing_provider(ResponseTemplate::new(503)).await;
    let secondary = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(202).set_body_string("0: Accepted for delivery"))
        .mount(&secondary)
        .await;
    let config = failover_config(&db, &primary.uri(), &secondary.uri());
    let app = Application::with_store(&config, db.store()).unwrap();
    let dispatcher = &app.dispatcher;

    // The primary is down: five 503s open its circuit. The fifth, which
    // opened it, goes on to Kannel at once; the four before it are retried,
    // and the whole queue goes out through Kannel.
    let ids = insert_many(&db, 10).await;
    assert!(drain(dispatcher, &db, &ids, Duration::from_secs(15)).await);
    let mut on_primary = 0;
    for &id in &ids {
        let attempts = attempts_by_provider(&db, id).await;
        let (last, earlier) = attempts.split_last().unwrap();
        assert_eq!(last, &("kannel".into(), "accepted".into()), "message {id}");
        for attempt in earlier {
            assert_eq!(attempt, &("webhook".into(), "transient".into()));
            on_primary += 1;
        }
    }
    assert_eq!(on_primary, 4, "four failures spent an attempt");
    assert_eq!(
        primary.received_requests().await.unwrap().len(),
        5,
        "the breaker opened after five failures"
    );

    // The primary recovers: once its pause ends, its probe succeeds and new
    // messages go to it again.
    healthy.store(true, Ordering::SeqCst);
    let back = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let id = send_one(dispatcher, &db).await;
            if attempts_by_provider(&db, id).await == [("webhook".into(), "accepted".into())] {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the primary takes messages again after recovery");
    let later = insert_many(&db, 5).await;
    assert!(drain(dispatcher, &db, &later, Duration::from_secs(15)).await);
    for &id in &later {
        assert_eq!(
            attempts_by_provider(&db, id).await,
            [("webhook".to_owned(), "accepted".to_owned())]
        );
    }
    assert_eq!(db.status(back).await, "sent");
}

#[tokio::test]
async fn every_members_callback_routes_stay_served() {
    let db = TestDb::new().await;
    let mut config = failover_config(&db, "http://127.0.0.1:9/sms", "http://127.0.0.1:9");
    let kannel = config.provider.kannel.as_mut().unwrap();
    kannel.dlr_url_base = Some("https://sms.example.com".into());
    kannel.callback_secret = Some(Secret::new("0123456789abcdef"));
    config.validate().unwrap();
    let provider = config.provider.build().unwrap();
    let routes = smsrelay::provider::callback_router(
        provider.as_ref(),
        &smsrelay::provider::CallbackContext { store: db.store() },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, routes).await });

    let client = reqwest::Client::new();
    let status = |path: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Kannel's report route answers (refusing a wrong secret) behind the router.
    assert_eq!(status("/callbacks/kannel?sms_id=1&secret=wrong").await, 403);
    assert_eq!(status("/callbacks/twilio").await, 404, "not configured");
}

// The same on every database: the release with its reason, and the provider column.

/// A config on `db` with the webhook provider at `primary`, and, given a
/// `secondary`, Kannel there after it in `[provider] order`.
fn backend_config(db: &TestStore, primary: &str, secondary: Option<&str>) -> Config {
    let mut config = Config::default();
    config.database.url = Some(Secret::new(db.url.clone()));
    config.provider.kind = ProviderKind::Webhook;
    config.provider.webhook.url = Some(primary.to_owned());
    if let Some(secondary) = secondary {
        config.provider.order = vec![ProviderKind::Webhook, ProviderKind::Kannel];
        config.provider.kannel = Some(KannelSettings {
            url: format!("{secondary}/cgi-bin/sendsms"),
            username: "tester".into(),
            password: Some(Secret::new("foobar")),
            ..KannelSettings::default()
        });
    }
    config.dispatch.instance_id = Some("routing-1".into());
    config.dispatch.concurrency = 1;
    config.dispatch.backoff_initial = Duration::from_millis(10);
    config.dispatch.backoff_max = Duration::from_millis(20);
    config.validation.default_region = Some("KE".into());
    config.api.dev_token_file = std::path::PathBuf::new();
    config.validate().expect("test config is valid");
    config
}

/// Runs cycles until every message is `sent`, for at most `within`.
async fn drain_on(app: &Application, db: &TestStore, ids: &[i64], within: Duration) -> bool {
    let stop = tokio_util::sync::CancellationToken::new();
    eventually(within, || async {
        app.dispatcher.run_once(&stop).await.unwrap();
        for &id in ids {
            if db.status(id).await != "sent" {
                return false;
            }
        }
        true
    })
    .await
}

async fn a_429_returns_the_message_unspent(backend: Backend) {
    let Some(db) = TestStore::new(backend).await else {
        return;
    };
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .respond_with(AcceptWithId)
        .mount(&provider)
        .await;
    let config = backend_config(&db, &provider.uri(), None);
    let app = Application::with_store(&config, db.store.clone()).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(db.insert(i, "+254712345678", "hello").await);
    }

    assert!(drain_on(&app, &db, &ids, Duration::from_secs(15)).await);
    assert_eq!(provider.received_requests().await.unwrap().len(), 4);
    let mut throttled = 0;
    for &id in &ids {
        let sms = db.store.get(id).await.unwrap().unwrap();
        assert_eq!(sms.attempts, 1, "{}: message {id}", backend.name());
        let outcomes: Vec<_> = db
            .store
            .attempts(id)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.outcome.unwrap_or_default())
            .collect();
        assert_eq!(outcomes, ["accepted"]);
        throttled += db
            .transitions(id)
            .await
            .iter()
            .filter(|(_, _, reason)| reason.contains("provider throttling"))
            .count();
    }
    // The one that got the 429 and the two the paused gate held back.
    assert_eq!(throttled, 3, "{}", backend.name());
}

async fn the_attempts_show_the_failover_to_the_secondary(backend: Backend) {
    let Some(db) = TestStore::new(backend).await else {
        return;
    };
    let (primary, _healthy) = failing_provider(ResponseTemplate::new(503)).await;
    let secondary = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(202).set_body_string("0: Accepted for delivery"))
        .mount(&secondary)
        .await;
    let config = backend_config(&db, &primary.uri(), Some(&secondary.uri()));
    let app = Application::with_store(&config, db.store.clone()).unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(db.insert(i, "+254712345678", "hello").await);
    }

    assert!(drain_on(&app, &db, &ids, Duration::from_secs(15)).await);
    let mut providers = Vec::new();
    for &id in &ids {
        for a in db.store.attempts(id).await.unwrap() {
            providers.push((
                a.provider.unwrap_or_default(),
                a.outcome.unwrap_or_default(),
            ));
        }
    }
    let count = |p: &str, o: &str| {
        providers
            .iter()
            .filter(|x| (x.0.as_str(), x.1.as_str()) == (p, o))
            .count()
    };
    // The fifth failure opened the circuit and went on to Kannel unspent.
    assert_eq!(
        count("webhook", "transient"),
        4,
        "{}: {providers:?}",
        backend.name()
    );
    assert_eq!(
        count("kannel", "accepted"),
        7,
        "{}: {providers:?}",
        backend.name()
    );
    assert_eq!(providers.len(), 11);
}

on_every_backend!(
    a_429_returns_the_message_unspent,
    the_attempts_show_the_failover_to_the_secondary,
);
