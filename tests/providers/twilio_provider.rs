//! The `twilio` provider against a local mock of Twilio's Messages API: the
//! exact request, every documented error code's class, and what the
//! dispatcher makes of them.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use smsrelay::domain::phone::E164;
use smsrelay::provider::twilio::{TwilioProvider, TwilioSettings};
use smsrelay::provider::{OutboundSms, Provider, SendOutcome, Unavailable};
use smsrelay::provider::{ProviderInstance, ProviderKind};
use smsrelay::secrets::Secret;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::support::*;

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-token-77aa";
const MESSAGES: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";

fn settings(base_url: &str) -> TwilioSettings {
    TwilioSettings {
        account_sid: SID.into(),
        auth_token: Some(Secret::new(TOKEN)),
        from: Some("+15005550006".into()),
        base_url: base_url.into(),
        status_callback_url: Some("https://sms.example.com/callbacks/twilio".into()),
        ..TwilioSettings::default()
    }
}

fn instance(timeout: Duration) -> ProviderInstance {
    ProviderInstance {
        name: "twilio".into(),
        timeout,
    }
}

fn provider(settings: &TwilioSettings) -> TwilioProvider {
    TwilioProvider::from_settings(settings, &instance(Duration::from_secs(5)))
        .expect("twilio provider")
}

async fn send(provider: &TwilioProvider, text: &str) -> SendOutcome {
    let to = E164::parse("+254712345678", None).unwrap();
    provider
        .send(&OutboundSms {
            id: 77,
            attempt: 1,
            to: &to,
            message: text,
            segments: 1,
            send_key: "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        })
        .await
}

fn form_of(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

fn created(sid: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(serde_json::json!({
        "sid": sid, "status": "queued", "num_segments": "1", "error_code": null
    }))
}

#[tokio::test]
async fn a_message_is_one_form_post_with_basic_auth_and_the_sid_comes_back() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(created("SM0123456789abcdef0123456789abcdef"))
        .mount(&server)
        .await;
    let outcome = send(
        &provider(&settings(&server.uri())),
        "Malipo yamepokelewa ✓ 100%",
    )
    .await;
    assert_eq!(
        outcome,
        SendOutcome::Accepted {
            provider_message_id: Some("SM0123456789abcdef0123456789abcdef".into()),
            http_status: Some(201)
        }
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"));
    assert_eq!(
        r.headers.get("authorization").unwrap().to_str().unwrap(),
        format!("Basic {basic}")
    );
    assert_eq!(
        r.headers.get("content-type").unwrap().to_str().unwrap(),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        form_of(r),
        vec![
            ("To".to_owned(), "+254712345678".to_owned()),
            ("From".to_owned(), "+15005550006".to_owned()),
            ("Body".to_owned(), "Malipo yamepokelewa ✓ 100%".to_owned()),
            (
                "StatusCallback".to_owned(),
                "https://sms.example.com/callbacks/twilio?sms_id=77&attempt=1".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn a_messaging_service_replaces_from_and_no_callback_is_sent_when_unset() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(created("SMx"))
        .mount(&server)
        .await;
    let mut s = settings(&format!("{}/", server.uri()));
    s.from = None;
    s.messaging_service_sid = Some("MG0123456789abcdef0123456789abcdef".into());
    s.status_callback_url = None;
    send(&provider(&s), "hello").await;
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        form_of(&requests[0]),
        vec![
            ("To".to_owned(), "+254712345678".to_owned()),
            (
                "MessagingServiceSid".to_owned(),
                "MG0123456789abcdef0123456789abcdef".to_owned()
            ),
            ("Body".to_owned(), "hello".to_owned()),
        ]
    );
}

#[derive(Debug, PartialEq)]
enum Class {
    Transient,
    Permanent,
    OptedOut,
    Configuration,
}

fn class_of(outcome: &SendOutcome) -> Class {
    match outcome {
        SendOutcome::ProviderUnavailable {
            error,
            cause: Unavailable::Configuration,
            ..
        } if error.contains("configuration problem") => Class::Configuration,
        SendOutcome::ProviderUnavailable { .. } => {
            panic!("a provider's own answer is never `paused`")
        }
        SendOutcome::Transient { .. } => Class::Transient,
        SendOutcome::Permanent { error, .. } if error.starts_with("opted-out") => Class::OptedOut,
        SendOutcome::Permanent { .. } => Class::Permanent,
        SendOutcome::Unknown { .. } => panic!("an answer's outcome is never unknown"),
        SendOutcome::Accepted { .. } => panic!("an error reply was accepted"),
    }
}

/// Twilio's error body; its `message` quotes the number, as Twilio's often do.
fn twilio_error(status: u16, code: u32) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({
        "code": code,
        "message": format!("The 'To' number +254712345678 is not valid ({code})"),
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    }))
}

#[tokio::test]
async fn every_documented_error_code_is_classified() {
    let cases: &[(u16, u32, Class)] = &[
        (429, 20429, Class::Transient),
        (400, 21611, Class::Transient),
        (400, 30001, Class::Transient),
        (400, 30003, Class::Transient),
        (400, 30008, Class::Transient),
        (400, 21211, Class::Permanent),
        (400, 21612, Class::Permanent),
        (400, 21614, Class::Permanent),
        (400, 21635, Class::Permanent),
        (400, 30005, Class::Permanent),
        (400, 30006, Class::Permanent),
        (400, 21610, Class::OptedOut),
        (401, 20003, Class::Configuration),
        (400, 21606, Class::Configuration),
        (400, 21608, Class::Configuration),
        (400, 21408, Class::Configuration),
        (400, 30034, Class::Configuration),
        (400, 29999, Class::Transient),
    ];
    let server = MockServer::start().await;
    let p = provider(&settings(&server.uri()));
    for (status, code, class) in cases {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(twilio_error(*status, *code))
            .mount(&server)
            .await;
        let outcome = send(&p, "hello").await;
        assert_eq!(&class_of(&outcome), class, "{code}: {outcome:?}");
        let text = format!("{outcome:?}");
        assert!(
            text.contains(&code.to_string()),
            "the code is in the error: {text}"
        );
        assert!(!text.contains("712345678"), "no number in errors: {text}");
        assert!(!text.contains(TOKEN), "{text}");
    }
}

#[tokio::test]
async fn replies_without_a_code_go_by_http_status_and_retry_after_is_kept() {
    let server = MockServer::start().await;
    let p = provider(&settings(&server.uri()));
    let cases: &[(ResponseTemplate, Class)] = &[
        (ResponseTemplate::new(500), Class::Transient),
        (
            ResponseTemplate::new(503).set_body_string("<html>"),
            Class::Transient,
        ),
        (ResponseTemplate::new(401), Class::Configuration),
        (ResponseTemplate::new(404), Class::Configuration),
    ];
    for (reply, class) in cases {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(reply.clone())
            .mount(&server)
            .await;
        let outcome = send(&p, "hello").await;
        assert_eq!(&class_of(&outcome), class, "{outcome:?}");
    }
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(twilio_error(429, 20429).insert_header("Retry-After", "7"))
        .mount(&server)
        .await;
    let outcome = send(&p, "hello").await;
    assert!(
        matches!(outcome, SendOutcome::Transient { retry_after: Some(d), http_status: Some(429), .. } if d == Duration::from_secs(7)),
        "{outcome:?}"
    );
}

/// Answers per recipient: the last digits of `To` pick the reply.
struct ByRecipient;

impl wiremock::Respond for ByRecipient {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: HashMap<String, String> =
            form_urlencoded::parse(&request.body).into_owned().collect();
        let to = form.get("To").cloned().unwrap_or_default();
        match &to[to.len().saturating_sub(2)..] {
            "01" => created("SM00000000000000000000000000000001"),
            "02" => twilio_error(400, 21610),
            "03" => twilio_error(400, 21211),
            _ => twilio_error(401, 20003),
        }
    }
}

#[tokio::test]
async fn the_dispatcher_sends_declines_and_keeps_retrying_as_twilio_answers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(ByRecipient)
        .mount(&server)
        .await;
    let db = TestDb::new().await;
    let mut config = test_config(&db, "http://127.0.0.1:9/unused");
    config.provider.kind = ProviderKind::Twilio;
    config.provider.twilio = Some(settings(&server.uri()));
    config.validate().expect("valid twilio config");
    let provider = config.provider.build().unwrap();
    assert_eq!(provider.name(), "twilio");
    let app = smsrelay::app::Application::from_parts(&config, db.store(), provider);

    let sent = db.insert(1, "+254712345601", "one").await;
    let opted_out = db.insert(2, "+254712345602", "two").await;
    let invalid = db.insert(3, "+254712345603", "three").await;
    let bad_token = db.insert(4, "+254712345604", "four").await;
    app.dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();

    let row = |id| {
        let store = db.store.clone();
        async move {
            smsrelay::store::Messages::get(&*store, id)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let s = row(sent).await;
    assert_eq!(s.status.as_str(), "sent");
    assert_eq!(
        s.provider_message_id.as_deref(),
        Some("SM00000000000000000000000000000001")
    );
    let o = row(opted_out).await;
    assert_eq!(o.status.as_str(), "declined");
    assert!(
        o.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("opted-out"),
        "{o:?}"
    );
    // 21610: the number is on the opt-out list, so the next message to it is never sent.
    let key =
        smsrelay::domain::opt_out::OptOutKey::of(&E164::parse("+254712345602", None).unwrap());
    assert_eq!(
        db.store
            .opted_out(std::slice::from_ref(&key))
            .await
            .unwrap(),
        vec![key]
    );
    assert_eq!(row(invalid).await.status.as_str(), "declined");
    // A rejected token is the operator's to fix: the message is not declined,
    // and goes back to pending without spending its attempt.
    let b = row(bad_token).await;
    assert_eq!((b.status.as_str(), b.attempts), ("pending", 0), "{b:?}");
    let events = smsrelay::store::Messages::events(&*db.store, bad_token)
        .await
        .unwrap();
    assert!(
        events
            .last()
            .is_some_and(|e| e.reason.contains("provider paused")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_timeout_is_an_unknown_outcome_and_names_no_secret() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created("SMlate").set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let p = TwilioProvider::from_settings(
        &settings(&server.uri()),
        &instance(Duration::from_millis(300)),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let outcome = send(&p, "hello").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout holds"
    );
    // The request was written: Twilio may have the message.
    match &outcome {
        SendOutcome::Unknown { error } => {
            assert!(error.contains("timed out"), "{error}");
            assert!(error.contains("may have received it"), "{error}");
            assert!(!error.contains(TOKEN), "{error}");
        }
        other => panic!("a timeout after the request is unknown: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_status_callbacks_move_messages_and_unsigned_ones_are_refused() {
    let twilio = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(created("SM00000000000000000000000000000009"))
        .mount(&twilio)
        .await;
    let db = TestDb::new().await;
    let mut config = test_config(&db, "http://127.0.0.1:9/unused");
    let port = free_port();
    config.api.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let callback = format!("http://127.0.0.1:{port}/callbacks/twilio");
    let mut s = settings(&twilio.uri());
    s.status_callback_url = Some(callback.clone());
    config.provider.kind = ProviderKind::Twilio;
    config.provider.twilio = Some(s);
    config.validate().unwrap();
    let provider = config.provider.build().unwrap();
    let app = smsrelay::app::Application::from_parts(&config, db.store(), provider)
        .with_api(&config)
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));

    let id = db.insert(1, "+254712345678", "hello").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            db.status(id).await == "sent"
        })
        .await
    );
    // The URL Twilio was given, exactly, is what it calls and signs.
    let requests = twilio.received_requests().await.unwrap();
    let given: HashMap<String, String> = form_of(&requests[0]).into_iter().collect();
    let url = given["StatusCallback"].clone();
    assert_eq!(url, format!("{callback}?sms_id={id}&attempt=1"));

    let http = reqwest::Client::new();
    let post = |status: &str, signature: Option<String>| {
        let params = vec![
            ("AccountSid".to_owned(), SID.to_owned()),
            ("ErrorCode".to_owned(), "30003".to_owned()),
            ("From".to_owned(), "+15005550006".to_owned()),
            (
                "MessageSid".to_owned(),
                "SM00000000000000000000000000000009".to_owned(),
            ),
            ("MessageStatus".to_owned(), status.to_owned()),
            ("To".to_owned(), "+254712345678".to_owned()),
        ];
        let mut request = http.post(&url).form(&params);
        if let Some(signature) = signature {
            request = request.header("X-Twilio-Signature", signature);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let sign = |status: &str| {
        let params = vec![
            ("AccountSid".to_owned(), SID.to_owned()),
            ("ErrorCode".to_owned(), "30003".to_owned()),
            ("From".to_owned(), "+15005550006".to_owned()),
            (
                "MessageSid".to_owned(),
                "SM00000000000000000000000000000009".to_owned(),
            ),
            ("MessageStatus".to_owned(), status.to_owned()),
            ("To".to_owned(), "+254712345678".to_owned()),
        ];
        smsrelay::provider::twilio::signature(TOKEN, &url, &params)
    };

    assert_eq!(post("undelivered", None).await, 403, "missing signature");
    assert_eq!(
        post("undelivered", Some("bm90IGl0".into())).await,
        403,
        "bad signature"
    );
    // Signed for another status: the parameters are covered too.
    assert_eq!(post("undelivered", Some(sign("delivered"))).await, 403);
    assert_eq!(
        db.status(id).await,
        "sent",
        "refused callbacks change nothing"
    );

    assert_eq!(post("sent", Some(sign("sent"))).await, 200, "intermediate");
    assert_eq!(db.status(id).await, "sent");
    assert_eq!(post("undelivered", Some(sign("undelivered"))).await, 200);
    assert_eq!(db.status(id).await, "undelivered");
    let last = db.transitions(id).await.pop().unwrap();
    assert_eq!(last, ("sent".to_owned(), "undelivered".to_owned()));
    // Twilio sends duplicates and out of order: neither moves it again.
    assert_eq!(post("undelivered", Some(sign("undelivered"))).await, 200);
    assert_eq!(post("delivered", Some(sign("delivered"))).await, 200);
    assert_eq!(db.status(id).await, "undelivered");
    assert_eq!(
        db.transitions(id).await.len(),
        3,
        "{:?}",
        db.transitions(id).await
    );
    stop.cancel();
}
