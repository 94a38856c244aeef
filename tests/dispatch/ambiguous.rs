//! Ambiguous sends (the request was written, the answer lost) on every
//! database: recorded as `unknown`; resent under at-least-once, never under
//! at-most-once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use smsrelay::Config;
use smsrelay::app::Application;
use smsrelay::domain::outcome::Guarantee;
use smsrelay::housekeeping::{ReaperSettings, reap_once};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::backends::{Backend, TestStore};

/// A provider on loopback that reads each request and never answers.
/// Returns its URL and how many requests it has received.
async fn hanging_provider() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = socket.read(&mut buffer).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..n]);
                    if seen.windows(4).any(|w| w == b"POST") {
                        counter.fetch_add(1, Ordering::SeqCst);
                        seen.clear();
                    }
                }
            });
        }
    });
    (url, received)
}

fn config(db: &TestStore, provider_url: &str, guarantee: Guarantee) -> Config {
    let mut config = Config::default();
    config.database.url = Some(smsrelay::secrets::Secret::new(db.url.clone()));
    config.provider.kind = smsrelay::provider::ProviderKind::Webhook;
    config.provider.webhook.url = Some(provider_url.to_owned());
    config.provider.timeout = Duration::from_millis(500);
    config.dispatch.instance_id = Some("ambiguous-1".into());
    config.dispatch.backoff_initial = Duration::from_millis(10);
    config.dispatch.backoff_max = Duration::from_millis(20);
    config.dispatch.lease = Duration::from_secs(30);
    config.dispatch.guarantee = guarantee;
    config.validation.default_region = Some("KE".into());
    config.api.dev_token_file = std::path::PathBuf::new();
    config.validate().expect("test config is valid");
    config
}

async fn outcomes(db: &TestStore, id: i64) -> Vec<String> {
    db.store
        .attempts(id)
        .await
        .expect("attempts")
        .into_iter()
        .map(|a| a.outcome.unwrap_or_default())
        .collect()
}

/// Runs cycles until the message has had `sends` attempts or ended.
async fn dispatch(db: &TestStore, config: &Config, id: i64, cycles: usize) {
    let provider = smsrelay::provider::webhook::WebhookProvider::from_settings(
        &config.provider.webhook,
        &config.provider.instance(),
    )
    .expect("webhook provider");
    let app = Application::from_parts(config, db.store.clone(), Arc::new(provider));
    let stop = CancellationToken::new();
    for _ in 0..cycles {
        app.dispatcher.run_once(&stop).await.expect("cycle");
        tokio::time::sleep(Duration::from_millis(50)).await;
        if matches!(db.status(id).await.as_str(), "failed" | "sent") {
            break;
        }
    }
}

async fn at_least_once_resends_an_unknown_outcome(backend: Backend) {
    let Some(db) = TestStore::new(backend).await else {
        return;
    };
    let (url, received) = hanging_provider().await;
    let config = config(&db, &url, Guarantee::AtLeastOnce);
    let id = db.insert(1, "+254712345678", "hello").await;
    dispatch(&db, &config, id, 2).await;
    assert_eq!(received.load(Ordering::SeqCst), 2, "{}", backend.name());
    assert_eq!(outcomes(&db, id).await, ["unknown", "unknown"]);
    let attempts = db.store.attempts(id).await.unwrap();
    let error = attempts[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("the provider may have received it"),
        "the history says what happened: {error}"
    );
    assert_eq!(db.status(id).await, "pending");
}

async fn at_most_once_fails_an_unknown_outcome_without_resending(backend: Backend) {
    let Some(db) = TestStore::new(backend).await else {
        return;
    };
    let (url, received) = hanging_provider().await;
    let config = config(&db, &url, Guarantee::AtMostOnce);
    let id = db.insert(1, "+254712345678", "hello").await;
    dispatch(&db, &config, id, 3).await;
    assert_eq!(db.status(id).await, "failed", "{}", backend.name());
    assert_eq!(received.load(Ordering::SeqCst), 1, "sent exactly once");
    assert_eq!(outcomes(&db, id).await, ["unknown"]);
    let record = db.store.get(id).await.unwrap().unwrap();
    assert!(
        record
            .last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("outcome unknown"),
        "{:?}",
        record.last_error
    );
    // Nothing sends it later either.
    dispatch(&db, &config, id, 2).await;
    assert_eq!(received.load(Ordering::SeqCst), 1);
}

async fn a_refused_connection_is_an_ordinary_transient_failure(backend: Backend) {
    let Some(db) = TestStore::new(backend).await else {
        return;
    };
    // A port nobody listens on: nothing was written, so nothing is ambiguous.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = config(
        &db,
        &format!("http://127.0.0.1:{port}/sms"),
        Guarantee::AtMostOnce,
    );
    let id = db.insert(1, "+254712345678", "hello").await;
    dispatch(&db, &config, id, 1).await;
    assert_eq!(outcomes(&db, id).await, ["transient"], "{}", backend.name());
    assert_eq!(db.status(id).await, "pending", "retried even at-most-once");
}

async fn at_most_once_fails_an_attempt_abandoned_by_a_crash(backend: Backend) {
    let Some(db) = TestStore::new(backend).await else {
        return;
    };
    let id = db.insert(1, "+254712345678", "hello").await;
    // An instance claims it and dies before recording anything.
    let claim = db
        .store
        .claim("crashed-1", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(claim.messages.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reaper = ReaperSettings {
        schedule: "* * * * * *".into(),
        max_attempts: 8,
        guarantee: Guarantee::AtMostOnce,
        batch: 100,
    };
    reap_once(db.store.as_ref(), &reaper).await.unwrap();
    assert_eq!(db.status(id).await, "failed", "{}", backend.name());
    assert_eq!(outcomes(&db, id).await, ["abandoned"]);
    // Said as the dispatcher says an ambiguous send under at-most-once.
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(
        sms.last_error.as_deref(),
        Some("outcome unknown: lease of crashed-1 expired during attempt 1"),
        "{}",
        backend.name()
    );
    let (from, to, reason) = db.transitions(id).await.pop().unwrap();
    assert_eq!((from.as_str(), to.as_str()), ("sending", "failed"));
    assert_eq!(
        reason,
        "outcome unknown: lease of crashed-1 expired during attempt 1; not sent again (dispatch.guarantee = at-most-once)",
        "{}",
        backend.name()
    );
}

on_every_backend!(
    at_least_once_resends_an_unknown_outcome,
    at_most_once_fails_an_unknown_outcome_without_resending,
    a_refused_connection_is_an_ordinary_transient_failure,
    at_most_once_fails_an_attempt_abandoned_by_a_crash,
);
