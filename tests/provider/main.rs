//! The provider seam through the assembled daemon: a provider's own callback
//! routes are served under `/callbacks/<name>` with its own authentication,
//! behind the API's limits, and without opening the bearer-token routes.

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use smsrelay::provider::{CallbackContext, OutboundSms, Provider, SendOutcome};
use support::*;
use tokio_util::sync::CancellationToken;

/// Accepts every message and answers status queries on its callback route,
/// to callers that present its shared secret.
struct Recorder;

const SECRET: &str = "recorder-shared-secret";

#[async_trait]
impl Provider for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome {
        SendOutcome::Accepted {
            provider_message_id: Some(format!("rec-{}", sms.id)),
            http_status: None,
        }
    }

    fn callback_routes(&self, context: &CallbackContext) -> Option<axum::Router> {
        async fn status(
            State(context): State<CallbackContext>,
            headers: HeaderMap,
            Path(id): Path<i64>,
        ) -> Result<String, StatusCode> {
            if headers
                .get("x-recorder-secret")
                .and_then(|v| v.to_str().ok())
                != Some(SECRET)
            {
                return Err(StatusCode::UNAUTHORIZED);
            }
            match context.store.get(id).await {
                Ok(Some(sms)) => Ok(sms.status.as_str().to_owned()),
                Ok(None) => Err(StatusCode::NOT_FOUND),
                Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE),
            }
        }
        async fn report(body: String) -> String {
            format!("{} bytes", body.len())
        }
        Some(
            axum::Router::new()
                .route("/status/{id}", get(status))
                .route("/report", post(report))
                .with_state(context.clone()),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_routes_are_served_with_their_own_authentication() {
    let db = TestDb::new().await;
    let mock = accepting_provider().await;
    let mut config = test_config(&db, &mock.uri());
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    config.api.body_limit = 1024;
    let (_, digest) = smsrelay::api::auth::new_token();
    config.api.tokens = vec![smsrelay::api::settings::TokenSettings {
        name: "platform".into(),
        scopes: vec![smsrelay::api::settings::Scope::Read],
        sha256: Some(digest),
        token_file: None,
        credential: None,
    }];
    let app = smsrelay::app::Application::from_parts(&config, db.store(), Arc::new(Recorder))
        .with_api(&config)
        .unwrap();
    let base = format!("http://{}", app.api_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));
    let http = reqwest::Client::new();
    let id = db.insert(1, "+254712345678", "Your code is 1234").await;

    // The provider's route answers its own callers, with the store behind it.
    let status = |secret: Option<&'static str>| {
        let mut request = http.get(format!("{base}/callbacks/recorder/status/{id}"));
        if let Some(secret) = secret {
            request = request.header("x-recorder-secret", secret);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            status(Some(SECRET)).await == (StatusCode::OK, "sent".into())
        })
        .await,
        "the callback route reports the message sent: {:?}",
        status(Some(SECRET)).await
    );
    assert_eq!(status(None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(status(Some("wrong")).await.0, StatusCode::UNAUTHORIZED);

    // The API's limits wrap the callback routes too.
    let small = http
        .post(format!("{base}/callbacks/recorder/report"))
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::OK);
    assert_eq!(small.text().await.unwrap(), "100 bytes");
    let large = http
        .post(format!("{base}/callbacks/recorder/report"))
        .body("x".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Callbacks open nothing else: /sms still wants a bearer token.
    let sms = http.get(format!("{base}/sms/{id}")).send().await.unwrap();
    assert_eq!(sms.status(), StatusCode::UNAUTHORIZED);
    // And another provider's path is not routed.
    let other = http
        .get(format!("{base}/callbacks/webhook/status/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    // The mock webhook was never used: the daemon sends through the provider it was given.
    assert!(received_ids(&mock).await.is_empty());
    stop.cancel();
}
