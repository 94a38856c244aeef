//! The real dispatcher on each backend, with a mock provider on loopback.

use std::sync::Arc;
use std::time::Duration;

use smsrelay::Config;
use smsrelay::dispatch::Dispatcher;
use smsrelay::provider::ProviderKind;
use smsrelay::provider::webhook::WebhookProvider;
use smsrelay::secrets::Secret;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::backends::TestStore;
use crate::support::{AcceptWithId, accepting_provider, eventually, received_ids};

conformance!(
    the_dispatcher_sends_end_to_end,
    the_dispatcher_retries_a_transient_failure,
    two_dispatchers_send_each_message_exactly_once,
    an_expired_backlog_never_reaches_the_provider,
    rows_with_unsendable_text_are_declined_and_the_rest_sent,
    the_idempotency_key_is_stable_per_message_and_unique_across_databases,
    a_message_soon_after_another_is_sent_without_waiting_for_the_poll,
);

/// A config for `db` with the webhook provider at `provider_url` and fast retries.
pub(crate) fn config(db: &TestStore, provider_url: &str) -> Config {
    let mut config = Config::default();
    config.database.url = Some(Secret::new(db.url.clone()));
    config.provider.kind = ProviderKind::Webhook;
    config.provider.webhook.url = Some(provider_url.to_owned());
    config.provider.timeout = Duration::from_secs(5);
    config.dispatch.instance_id = Some("test-1".into());
    config.dispatch.poll_interval = Duration::from_millis(50);
    config.dispatch.backoff_initial = Duration::from_millis(10);
    config.dispatch.backoff_max = Duration::from_millis(50);
    config.dispatch.lease = Duration::from_secs(30);
    config.validation.default_region = Some("KE".into());
    config.validate().expect("test config is valid");
    config
}

pub(crate) fn dispatcher(db: &TestStore, config: &Config) -> Dispatcher {
    let provider = Arc::new(
        WebhookProvider::from_settings(&config.provider.webhook, &config.provider.instance())
            .expect("webhook provider"),
    );
    let app = smsrelay::app::Application::from_parts(config, db.store.clone(), provider);
    Arc::try_unwrap(app.dispatcher).unwrap_or_else(|_| panic!("dispatcher is not shared yet"))
}

/// INSERT -> claim -> provider -> `sent`, with the whole story recorded.
async fn the_dispatcher_sends_end_to_end(db: TestStore) {
    let provider = accepting_provider().await;
    let config = config(&db, &provider.uri());
    let dispatcher = dispatcher(&db, &config);
    let id = db
        .insert(42, "+254 712 345 678", "Your loan repayment is due")
        .await;

    let report = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((report.claimed, report.sent), (1, 1));
    let requests = provider.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"id": id, "to": "+254712345678", "message": "Your loan repayment is due"})
    );
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "sent");
    assert_eq!(
        sms.provider_message_id.as_deref(),
        Some(format!("prov-{id}").as_str())
    );
    assert_eq!((sms.attempts, sms.segments), (1, Some(1)));
    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(
        (
            attempts.len(),
            attempts[0].outcome.as_deref(),
            attempts[0].http_status
        ),
        (1, Some("accepted"), Some(200))
    );
    let events: Vec<(String, String)> = db
        .transitions(id)
        .await
        .into_iter()
        .map(|(from, to, _)| (from, to))
        .collect();
    assert_eq!(
        events,
        [
            ("pending".into(), "sending".into()),
            ("sending".into(), "sent".into())
        ]
    );
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

/// A 503 is retried after the backoff and then sent; both attempts are recorded.
async fn the_dispatcher_retries_a_transient_failure(db: TestStore) {
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
    let config = config(&db, &provider.uri());
    let dispatcher = dispatcher(&db, &config);
    let id = db.insert(1, "+254712345678", "hello").await;

    assert_eq!(
        dispatcher
            .run_once(&CancellationToken::new())
            .await
            .unwrap()
            .retried,
        1
    );
    assert_eq!(db.status(id).await, "pending");
    assert!(
        eventually(Duration::from_secs(10), || async {
            dispatcher
                .run_once(&CancellationToken::new())
                .await
                .unwrap();
            db.status(id).await == "sent"
        })
        .await
    );
    let summary: Vec<_> = db
        .store
        .attempts(id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.attempt, a.outcome, a.http_status))
        .collect();
    assert_eq!(
        summary,
        [
            (1, Some("transient".into()), Some(503)),
            (2, Some("accepted".into()), Some(200))
        ]
    );
    assert_eq!(received_ids(&provider).await, [id, id]);
}

/// Two dispatchers with their own pools (two instances) share the queue:
/// every message reaches the provider once, and both did some of the work.
async fn two_dispatchers_send_each_message_exactly_once(db: TestStore) {
    const ROWS: i64 = 1000;
    // Literal multi-row INSERTs (test data only): portable and quick.
    for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(250) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| format!("({i}, '+2547{i:08}', 'message {i}')"))
            .collect();
        db.exec(
            &format!(
                "INSERT INTO sms (client_id, mobile_no, message) VALUES {}",
                values.join(", ")
            ),
            &[],
        )
        .await;
    }
    let provider = accepting_provider().await;
    let mut config = config(&db, &provider.uri());
    config.dispatch.batch_size = 25;
    config.dispatch.concurrency = 8;
    let stop = CancellationToken::new();
    let mut runners = Vec::new();
    for instance in ["node-a", "node-b"] {
        let mut config = config.clone();
        config.dispatch.instance_id = Some(instance.into());
        let webhook = Arc::new(
            WebhookProvider::from_settings(&config.provider.webhook, &config.provider.instance())
                .expect("webhook provider"),
        );
        let app = smsrelay::app::Application::from_parts(&config, db.another_store(), webhook);
        let dispatcher = app.dispatcher.clone();
        let stop = stop.clone();
        runners.push(tokio::spawn(
            async move { dispatcher.run(stop, || {}).await },
        ));
    }
    let all_sent = eventually(Duration::from_secs(120), || async {
        db.count_status("sent").await == ROWS
    })
    .await;
    stop.cancel();
    for runner in runners {
        runner.await.unwrap();
    }
    assert!(
        all_sent,
        "only {} of {ROWS} sent",
        db.count_status("sent").await
    );
    let ids = received_ids(&provider).await;
    let unique: std::collections::HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(
        unique.len() as i64,
        ROWS,
        "every message reached the provider"
    );
    assert_eq!(ids.len() as i64, ROWS, "and none of them twice");
    for instance in ["node-a", "node-b"] {
        let n = db
            .count(
                "SELECT count(*) FROM sms_attempt WHERE instance = $1",
                &[crate::backends::text(instance)],
            )
            .await;
        assert!(n > 0, "{instance} did some of the work");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM sms WHERE attempts <> 1", &[])
            .await,
        0,
        "one attempt each"
    );
}

/// 3,000 codes an hour past `expires_at`: the dispatcher sends none of them
/// (the provider sees no request) and every one ends `failed` as expired.
async fn an_expired_backlog_never_reaches_the_provider(db: TestStore) {
    const BACKLOG: i64 = 3_000;
    let provider = accepting_provider().await;
    let config = config(&db, &provider.uri());
    let dispatcher = dispatcher(&db, &config);
    crate::claim::insert_expired_backlog(&db, BACKLOG).await;

    let stop = CancellationToken::new();
    let mut expired = 0;
    for _ in 0..10 {
        let report = dispatcher.run_once(&stop).await.unwrap();
        assert_eq!(report.claimed, 0, "{report:?}");
        expired += report.expired;
        if report.expired == 0 {
            break;
        }
    }
    assert_eq!(expired, BACKLOG as u64);
    assert_eq!(provider.received_requests().await.unwrap().len(), 0);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM sms WHERE status = 'failed' AND last_error = 'expired'",
            &[]
        )
        .await,
        BACKLOG
    );
}

/// Rows the platform INSERTs with a NUL, a control character or only invisible
/// characters are declined with the API's wording; the claim goes on and the
/// good row beside them is sent.
async fn rows_with_unsendable_text_are_declined_and_the_rest_sent(db: TestStore) {
    let provider = accepting_provider().await;
    let config = config(&db, &provider.uri());
    let dispatcher = dispatcher(&db, &config);
    let mut declined = Vec::new();
    // PostgreSQL cannot store a NUL in text at all: the INSERT itself fails there.
    match db
        .try_insert(
            "INSERT INTO sms (client_id, mobile_no, message) VALUES ($1, $2, $3)",
            &[
                crate::backends::int(1),
                crate::backends::text("+254712345678"),
                crate::backends::text("hello\u{0}world"),
            ],
        )
        .await
    {
        Ok(id) => declined.push((
            id,
            "message contains the control character U+0000 at character 6; only newline, tab and carriage return are allowed",
        )),
        Err(e) => assert_eq!(db.backend, crate::backends::Backend::Postgres, "{e}"),
    }
    declined.push((
        db.insert(1, "+254712345678", "ring\u{7}").await,
        "message contains the control character U+0007 at character 5; only newline, tab and carriage return are allowed",
    ));
    declined.push((
        db.insert(1, "+254712345678", "\u{200B}\u{2060}\u{FEFF}")
            .await,
        "message has no visible character (only spaces, zero-width or formatting characters)",
    ));
    let good = db.insert(1, "+254712345678", "Line one\nLine two").await;

    let report = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .expect("the claim succeeds whatever the rows hold");
    assert_eq!((report.declined, report.sent), (declined.len(), 1));
    for (id, reason) in declined {
        let sms = db.store.get(id).await.unwrap().unwrap();
        assert_eq!(sms.status.as_str(), "declined", "{id}");
        assert_eq!(sms.last_error.as_deref(), Some(reason), "{id}");
    }
    assert_eq!(received_ids(&provider).await, [good]);
}

/// Every attempt of one message carries the same `Idempotency-Key`, and the
/// same id in another database (another deployment, or this one restored
/// from a backup) carries a different one: a receiver that drops duplicates
/// by key drops only real duplicates.
async fn the_idempotency_key_is_stable_per_message_and_unique_across_databases(db: TestStore) {
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
    let restored = TestStore::new(db.backend).await.expect("a second database");
    let first = db.insert(1, "+254712345678", "hello").await;
    let again = restored.insert(1, "+254712345678", "hello").await;
    assert_eq!(first, again, "both databases hand out the same first id");

    for store in [&db, &restored] {
        let config = config(store, &provider.uri());
        let dispatcher = dispatcher(store, &config);
        assert!(
            eventually(Duration::from_secs(10), || async {
                dispatcher
                    .run_once(&CancellationToken::new())
                    .await
                    .unwrap();
                store.status(first).await == "sent"
            })
            .await
        );
    }
    let keys: Vec<String> = provider
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys.len(),
        3,
        "a 503, its retry, and the other database's send"
    );
    assert_eq!(keys[0], keys[1], "a retry carries its message's key");
    assert_ne!(
        keys[1], keys[2],
        "the same id in another database is another message"
    );
    assert!(
        keys.iter().all(|k| k.starts_with(&format!("sms-{first}-"))),
        "{keys:?}"
    );
}

/// With a poll 30 s away, a message the platform INSERTs is sent at once:
/// the dispatcher is woken by the database (SQLite `PRAGMA data_version`,
/// PostgreSQL LISTEN/NOTIFY), not by its poll.
pub(crate) async fn a_new_message_wakes_the_dispatcher_before_its_next_poll(db: TestStore) {
    let provider = accepting_provider().await;
    let mut config = config(&db, &provider.uri());
    config.dispatch.poll_interval = Duration::from_secs(30);
    let dispatcher = Arc::new(dispatcher(&db, &config));
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (dispatcher, stop) = (dispatcher.clone(), stop.clone());
        async move { dispatcher.run(stop, || {}).await }
    });
    // Its first poll found nothing; it now waits for the next one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The test's own pool connects now, not within the measured time.
    db.count_status("sent").await;

    let inserted = std::time::Instant::now();
    let id = db.insert(7, "+254712345678", "your code is 123456").await;
    let sent = eventually(Duration::from_secs(2), || async {
        db.status(id).await == "sent"
    })
    .await;
    eprintln!(
        "{:?}: insert to sent in {:?}",
        db.backend,
        inserted.elapsed()
    );
    stop.cancel();
    running.await.unwrap();
    assert!(
        sent,
        "sent within 2 s, long before the next poll (30 s away)"
    );
    assert_eq!(received_ids(&provider).await, [id]);
}

/// Without any wake-up (`wake_on_insert = false`, as behind a pooler, and
/// how MariaDB/MySQL always run) and with a poll 30 s away, a message that
/// follows another one shortly is found by the quick poll after a claim
/// that found rows, not 30 s later.
async fn a_message_soon_after_another_is_sent_without_waiting_for_the_poll(db: TestStore) {
    let provider = accepting_provider().await;
    let mut config = config(&db, &provider.uri());
    config.dispatch.poll_interval = Duration::from_secs(30);
    config.dispatch.wake_on_insert = false;
    let first = db.insert(7, "+254712345678", "first").await;
    let dispatcher = Arc::new(dispatcher(&db, &config));
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (dispatcher, stop) = (dispatcher.clone(), stop.clone());
        async move { dispatcher.run(stop, || {}).await }
    });
    let first_sent = eventually(Duration::from_secs(5), || async {
        db.status(first).await == "sent"
    })
    .await;
    assert!(first_sent, "the first is claimed at start-up");

    tokio::time::sleep(Duration::from_millis(100)).await;
    let inserted = std::time::Instant::now();
    let second = db.insert(7, "+254712345678", "second").await;
    let sent = eventually(Duration::from_secs(2), || async {
        db.status(second).await == "sent"
    })
    .await;
    eprintln!(
        "{:?}: second insert to sent in {:?}",
        db.backend,
        inserted.elapsed()
    );
    stop.cancel();
    running.await.unwrap();
    assert!(sent, "sent within 2 s, not at the poll 30 s away");
    assert_eq!(received_ids(&provider).await, [first, second]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_message_wakes_the_dispatcher_on_sqlite() {
    if let Some(db) = TestStore::new(crate::backends::Backend::Sqlite).await {
        a_new_message_wakes_the_dispatcher_before_its_next_poll(db).await
    }
}
