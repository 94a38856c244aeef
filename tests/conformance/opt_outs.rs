//! Opt-outs: a number recorded once, found among others in one query,
//! cleared; the dispatcher declines a message to it before any request and
//! records the number when a provider says "unsubscribed". Reports that name
//! only the provider's message id find their attempt.

use std::sync::Arc;
use std::time::Duration;

use smsrelay::Config;
use smsrelay::domain::NextState;
use smsrelay::domain::opt_out::OptOutKey;
use smsrelay::domain::phone::E164;
use smsrelay::provider::{OutboundSms, Provider, ProviderKind, SendOutcome};
use smsrelay::secrets::Secret;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::backends::TestStore;
use crate::{ids, outcome};

conformance!(
    an_opt_out_is_recorded_once_found_and_removed,
    a_sent_attempt_is_found_by_its_provider_message_id,
    an_opted_out_recipient_is_declined_before_any_request,
    an_unsubscribed_answer_puts_the_number_on_the_list,
);

fn key(number: &str) -> OptOutKey {
    OptOutKey::of(&E164::parse(number, None).unwrap())
}

async fn an_opt_out_is_recorded_once_found_and_removed(db: TestStore) {
    let out = key("+254712345601");
    let other = key("+254712345602");
    assert!(db.store.record_opt_out(&out, "twilio", 7).await.unwrap());
    assert!(
        !db.store.record_opt_out(&out, "infobip", 8).await.unwrap(),
        "a second report of the same number is not new"
    );
    assert_eq!(
        db.store
            .opted_out(&[other.clone(), out.clone()])
            .await
            .unwrap(),
        vec![out.clone()]
    );
    assert!(db.store.opted_out(&[]).await.unwrap().is_empty());
    // Stored under its hash, with who said so and for which message.
    let stored = db
        .count(
            "SELECT count(*) AS n FROM sms_opt_out WHERE number_sha256 = $1 AND provider = 'twilio' AND sms_id = 7",
            &[crate::backends::text(out.as_str())],
        )
        .await;
    assert_eq!(stored, 1);
    assert!(db.store.remove_opt_out(&out).await.unwrap());
    assert!(!db.store.remove_opt_out(&out).await.unwrap());
    assert!(db.store.opted_out(&[out]).await.unwrap().is_empty());
}

async fn a_sent_attempt_is_found_by_its_provider_message_id(db: TestStore) {
    let id = db.insert(1, "+254712345678", "hello").await;
    let claim = db
        .store
        .claim("node-a", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ids(&claim), vec![id]);
    // Before the outcome is recorded the id is not known yet.
    let provider_id = format!("prov-{id}");
    assert_eq!(
        db.store
            .attempt_by_provider_message_id("test", &provider_id)
            .await
            .unwrap(),
        None
    );
    db.store
        .record_outcomes("node-a", &[outcome(id, 1, NextState::Sent)])
        .await
        .unwrap();
    assert_eq!(
        db.store
            .attempt_by_provider_message_id("test", &provider_id)
            .await
            .unwrap(),
        Some((id, 1))
    );
    for (provider, message_id) in [("other", provider_id.as_str()), ("test", "prov-0")] {
        assert_eq!(
            db.store
                .attempt_by_provider_message_id(provider, message_id)
                .await
                .unwrap(),
            None,
            "{provider} {message_id}"
        );
    }
}

/// A config for `db` with the webhook provider at `url`.
fn config(db: &TestStore, url: &str) -> Config {
    let mut config = Config::default();
    config.database.url = Some(Secret::new(db.url.clone()));
    config.provider.kind = ProviderKind::Webhook;
    config.provider.webhook.url = Some(url.to_owned());
    config.dispatch.instance_id = Some("test-1".into());
    config.validation.default_region = Some("KE".into());
    config.validate().expect("test config is valid");
    config
}

async fn an_opted_out_recipient_is_declined_before_any_request(db: TestStore) {
    let server = crate::support::accepting_provider().await;
    let config = config(&db, &server.uri());
    let app = smsrelay::app::Application::from_parts(
        &config,
        db.store.clone(),
        crate::support::webhook(&config),
    );
    db.store
        .record_opt_out(&key("+254712345601"), "twilio", 1)
        .await
        .unwrap();
    // Stored in national form: the same number once normalised.
    let out = db.insert(1, "0712 345 601", "one").await;
    let kept = db.insert(2, "+254712345602", "two").await;
    let report = app
        .dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((report.sent, report.declined), (1, 1));
    assert_eq!(
        crate::support::received_ids(&server).await,
        vec![kept],
        "the opted-out message never reached the provider"
    );
    let sms = db.store.get(out).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "declined");
    assert!(
        sms.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("opted-out"),
        "{sms:?}"
    );
    let (_, to, reason) = db.transitions(out).await.pop().unwrap();
    assert_eq!(to, "declined");
    assert!(reason.starts_with("opted-out: "), "{reason}");
    let attempts = db.store.attempts(out).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].provider, None, "no provider was asked");
}

/// Says "unsubscribed" for every number, as Twilio's 21610 does.
struct Unsubscribed;

#[async_trait::async_trait]
impl Provider for Unsubscribed {
    fn name(&self) -> &str {
        "unsubscribed"
    }
    async fn send(&self, _sms: &OutboundSms<'_>) -> SendOutcome {
        SendOutcome::opted_out("test provider: recipient replied STOP", Some(400))
    }
}

async fn an_unsubscribed_answer_puts_the_number_on_the_list(db: TestStore) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let config = config(&db, &server.uri());
    let app =
        smsrelay::app::Application::from_parts(&config, db.store.clone(), Arc::new(Unsubscribed));
    let first = db.insert(1, "+254712345601", "one").await;
    app.dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    let sms = db.store.get(first).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "declined");
    assert_eq!(
        db.store
            .opted_out(&[key("+254712345601")])
            .await
            .unwrap()
            .len(),
        1,
        "the number is on the list"
    );
    let stored = db
        .count(
            "SELECT count(*) AS n FROM sms_opt_out WHERE provider = 'unsubscribed' AND sms_id = $1",
            &[crate::backends::int(first)],
        )
        .await;
    assert_eq!(stored, 1);
    // Cleared (as `smsrelay opt-out remove` does), the number is sent to again.
    assert!(
        db.store
            .remove_opt_out(&key("+254712345601"))
            .await
            .unwrap()
    );
    let again = db.insert(1, "+254712345601", "two").await;
    app.dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    let attempts = db.store.attempts(again).await.unwrap();
    assert_eq!(
        attempts[0].provider.as_deref(),
        Some("unsubscribed"),
        "offered to the provider again"
    );
}
