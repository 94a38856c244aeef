//! The webhook's request template against a local mock gateway: method,
//! content type and body exactly as configured, every value escaped for the
//! content type; without a template, today's JSON request unchanged.

use std::time::Duration;

use smsrelay::domain::phone::E164;
use smsrelay::provider::webhook::{WebhookProvider, WebhookSettings};
use smsrelay::provider::{OutboundSms, Provider, ProviderInstance, ProviderSection, SendOutcome};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn instance() -> ProviderInstance {
    ProviderInstance {
        name: "webhook".into(),
        timeout: Duration::from_secs(5),
    }
}

/// Sends one message through a webhook with `settings` pointed at a fresh
/// mock gateway; returns the one request the gateway got.
async fn one_request(mut settings: WebhookSettings) -> (SendOutcome, Request) {
    let server = MockServer::start().await;
    Mock::given(path("/sms"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "gw-1"})))
        .mount(&server)
        .await;
    settings.url = Some(format!("{}/sms", server.uri()));
    let provider = WebhookProvider::from_settings(&settings, &instance()).expect("webhook");
    let to = E164::parse("+254712345678", None).unwrap();
    let outcome = provider
        .send(&OutboundSms {
            id: 42,
            attempt: 3,
            to: &to,
            message: "Say \"hi\" & 100% ✓\nbye",
            segments: 1,
            send_key: "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        })
        .await;
    let mut requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    (outcome, requests.remove(0))
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn without_a_template_the_request_is_the_default_json() {
    let (outcome, r) = one_request(WebhookSettings::default()).await;
    assert!(
        matches!(outcome, SendOutcome::Accepted { .. }),
        "{outcome:?}"
    );
    assert_eq!(r.method.as_str(), "POST");
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        header(&r, "idempotency-key").as_deref(),
        Some("sms-42-0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"id": 42, "to": "+254712345678", "message": "Say \"hi\" & 100% ✓\nbye"})
    );
}

#[tokio::test]
async fn a_json_template_is_sent_with_its_method_and_values_escaped_as_json() {
    let (outcome, r) = one_request(WebhookSettings {
        method: Some("PUT".into()),
        body: Some(
            r#"{"msisdn": "{{to}}", "text": "{{message}}", "ref": "{{idempotency_key}}", "try": {{attempt}}, "sms": {{id}}}"#
                .into(),
        ),
        ..WebhookSettings::default()
    })
    .await;
    assert_eq!(
        outcome,
        SendOutcome::Accepted {
            provider_message_id: Some("gw-1".into()),
            http_status: Some(200)
        }
    );
    assert_eq!(r.method.as_str(), "PUT");
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        header(&r, "idempotency-key").as_deref(),
        Some("sms-42-0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"msisdn": "+254712345678", "text": "Say \"hi\" & 100% ✓\nbye", "ref": "sms-42-0f1e2d3c4b5a69788796a5b4c3d2e1f0", "try": 3, "sms": 42})
    );
}

#[tokio::test]
async fn a_form_template_is_percent_encoded() {
    let (_, r) = one_request(WebhookSettings {
        content_type: Some("application/x-www-form-urlencoded".into()),
        body: Some("to={{to}}&text={{message}}&id={{id}}".into()),
        ..WebhookSettings::default()
    })
    .await;
    assert_eq!(r.method.as_str(), "POST");
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let form: Vec<(String, String)> = form_urlencoded::parse(&r.body).into_owned().collect();
    assert_eq!(
        form,
        vec![
            ("to".to_owned(), "+254712345678".to_owned()),
            ("text".to_owned(), "Say \"hi\" & 100% ✓\nbye".to_owned()),
            ("id".to_owned(), "42".to_owned()),
        ]
    );
}

#[test]
fn bad_templates_are_refused_at_load_time_naming_the_key() {
    let cases: Vec<(WebhookSettings, &str)> = vec![
        (
            WebhookSettings {
                body: Some("to={{phone}}".into()),
                content_type: Some("application/x-www-form-urlencoded".into()),
                ..WebhookSettings::default()
            },
            "provider.webhook.body",
        ),
        (
            WebhookSettings {
                body: Some("{{to}}".into()),
                content_type: Some("text/plain".into()),
                ..WebhookSettings::default()
            },
            "provider.webhook.content_type",
        ),
        (
            WebhookSettings {
                body: Some(r#"{"to": "{{to}}"}"#.into()),
                method: Some("GET".into()),
                ..WebhookSettings::default()
            },
            "provider.webhook.method",
        ),
        (
            WebhookSettings {
                body: Some(r#"{"to": "{{to}}"}"#.into()),
                content_type: Some("application/json; x=\n".into()),
                ..WebhookSettings::default()
            },
            "provider.webhook.content_type",
        ),
        (
            WebhookSettings {
                method: Some("PUT".into()),
                ..WebhookSettings::default()
            },
            "provider.webhook.method",
        ),
    ];
    for (mut settings, key) in cases {
        settings.url = Some("http://127.0.0.1:9/sms".into());
        let error = settings.validate(&instance()).unwrap_err().to_string();
        assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
    }
}
