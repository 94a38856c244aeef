//! The `africastalking` provider against a local mock of Africa's Talking's
//! SMS API: the exact request, each documented per-recipient status code's
//! class, opt-outs (406 UserInBlacklist) through the dispatcher, and delivery
//! reports through `/callbacks/africastalking` on the real API listener.

use std::collections::HashMap;
use std::time::Duration;

use smsrelay::domain::phone::E164;
use smsrelay::provider::africastalking::{AfricasTalkingProvider, AfricasTalkingSettings};
use smsrelay::provider::{
    OutboundSms, Provider, ProviderInstance, ProviderKind, SendOutcome, Unavailable,
};
use smsrelay::secrets::Secret;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::support::*;

const KEY: &str = "at-api-key-77e0";
const SECRET: &str = "at-callback-secret-0123";

fn settings(base_url: &str) -> AfricasTalkingSettings {
    AfricasTalkingSettings {
        username: "bank".into(),
        api_key: Some(Secret::new(KEY)),
        from: Some("BANK".into()),
        base_url: base_url.into(),
        callback_secret: Some(Secret::new(SECRET)),
        ..AfricasTalkingSettings::default()
    }
}

fn provider(settings: &AfricasTalkingSettings) -> AfricasTalkingProvider {
    let instance = ProviderInstance {
        name: "africastalking".into(),
        timeout: Duration::from_secs(5),
    };
    AfricasTalkingProvider::from_settings(settings, &instance).expect("africastalking provider")
}

async fn send(provider: &AfricasTalkingProvider) -> SendOutcome {
    let to = E164::parse("+254712345678", None).unwrap();
    provider
        .send(&OutboundSms {
            id: 77,
            attempt: 1,
            to: &to,
            message: "Malipo ✓ 100% & more",
            segments: 1,
            send_key: "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        })
        .await
}

/// Africa's Talking's reply (HTTP 201 whatever the recipient's fate).
fn reply(code: u32, status: &str, message_id: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(serde_json::json!({
        "SMSMessageData": {
            "Message": "Sent to 1/1 Total Cost: KES 0.8000",
            "Recipients": [{
                "statusCode": code, "number": "+254712345678", "status": status,
                "cost": "KES 0.8000", "messageId": message_id
            }]
        }
    }))
}

fn form_of(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

#[tokio::test]
async fn a_message_is_one_form_post_with_the_api_key_and_the_message_id_comes_back() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .respond_with(reply(101, "Success", "ATXid_0123abc"))
        .mount(&server)
        .await;
    let outcome = send(&provider(&settings(&format!("{}/", server.uri())))).await;
    assert_eq!(
        outcome,
        SendOutcome::Accepted {
            provider_message_id: Some("ATXid_0123abc".into()),
            http_status: Some(201)
        }
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    let header = |name: &str| r.headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(header("apikey"), KEY);
    assert_eq!(header("accept"), "application/json");
    assert_eq!(header("content-type"), "application/x-www-form-urlencoded");
    assert!(r.headers.get("authorization").is_none());
    assert_eq!(
        form_of(r),
        vec![
            ("username".to_owned(), "bank".to_owned()),
            ("to".to_owned(), "+254712345678".to_owned()),
            ("message".to_owned(), "Malipo ✓ 100% & more".to_owned()),
            ("from".to_owned(), "BANK".to_owned()),
        ]
    );
}

#[derive(Debug, PartialEq)]
enum Class {
    Accepted,
    Transient,
    Permanent,
    OptedOut,
    Configuration,
}

fn class_of(outcome: &SendOutcome) -> Class {
    match outcome {
        SendOutcome::Accepted { .. } => Class::Accepted,
        SendOutcome::ProviderUnavailable {
            error,
            cause: Unavailable::Configuration,
            ..
        } if error.contains("configuration problem") => Class::Configuration,
        SendOutcome::ProviderUnavailable { .. } => panic!("a provider's answer is never `paused`"),
        SendOutcome::Transient { .. } => Class::Transient,
        o if o.is_opted_out() => Class::OptedOut,
        SendOutcome::Permanent { .. } => Class::Permanent,
        SendOutcome::Unknown { .. } => panic!("an answer's outcome is never unknown"),
    }
}

#[tokio::test]
async fn every_documented_status_code_is_classified() {
    let cases: &[(u32, &str, Class)] = &[
        (100, "Processed", Class::Accepted),
        (101, "Sent", Class::Accepted),
        (102, "Queued", Class::Accepted),
        (401, "RiskHold", Class::Configuration),
        (402, "InvalidSenderId", Class::Configuration),
        (405, "InsufficientBalance", Class::Configuration),
        (403, "InvalidPhoneNumber", Class::Permanent),
        (404, "UnsupportedNumberType", Class::Permanent),
        (409, "DoNotDisturb", Class::Permanent),
        (406, "UserInBlacklist", Class::OptedOut),
        (500, "InternalServerError", Class::Transient),
        (501, "GatewayError", Class::Transient),
        (502, "RejectedByGateway", Class::Transient),
        (999, "SomethingNew", Class::Transient),
    ];
    let server = MockServer::start().await;
    let p = provider(&settings(&server.uri()));
    for (code, status, class) in cases {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(reply(*code, status, "None"))
            .mount(&server)
            .await;
        let outcome = send(&p).await;
        assert_eq!(&class_of(&outcome), class, "{code} {status}: {outcome:?}");
        let text = format!("{outcome:?}");
        if *class != Class::Accepted {
            assert!(
                text.contains(&code.to_string()),
                "the code is in the error: {text}"
            );
        }
        assert!(!text.contains("712345678"), "no number in errors: {text}");
        assert!(!text.contains(KEY), "{text}");
    }
    let http_cases: Vec<(ResponseTemplate, Class)> = vec![
        (
            ResponseTemplate::new(401).set_body_string("The supplied authentication is invalid"),
            Class::Configuration,
        ),
        (ResponseTemplate::new(404), Class::Configuration),
        (
            ResponseTemplate::new(400).set_body_string("Invalid phone number: +254712345678"),
            Class::Permanent,
        ),
        (ResponseTemplate::new(500), Class::Transient),
        (
            ResponseTemplate::new(201).set_body_string("<html>"),
            Class::Transient,
        ),
        (
            ResponseTemplate::new(201).set_body_json(serde_json::json!({
                "SMSMessageData": {"Message": "InvalidSenderId", "Recipients": []}
            })),
            Class::Configuration,
        ),
    ];
    for (reply, class) in http_cases {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(reply)
            .mount(&server)
            .await;
        let outcome = send(&p).await;
        assert_eq!(class_of(&outcome), class, "{outcome:?}");
        assert!(!format!("{outcome:?}").contains("712345678"));
    }
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "11"))
        .mount(&server)
        .await;
    let outcome = send(&p).await;
    assert!(
        matches!(outcome, SendOutcome::Transient { retry_after: Some(d), http_status: Some(429), .. } if d == Duration::from_secs(11)),
        "{outcome:?}"
    );
}

/// Answers per recipient: the last two digits of `to` pick the reply.
struct ByRecipient;

impl wiremock::Respond for ByRecipient {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: HashMap<String, String> = form_of(request).into_iter().collect();
        let to = form.get("to").cloned().unwrap_or_default();
        match &to[to.len().saturating_sub(2)..] {
            "06" => reply(406, "UserInBlacklist", "None"),
            tail => reply(101, "Success", &format!("ATXid_{tail}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blacklisted_recipient_is_declined_and_never_sent_to_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .respond_with(ByRecipient)
        .mount(&server)
        .await;
    let db = TestDb::new().await;
    let mut config = test_config(&db, "http://127.0.0.1:9/unused");
    config.provider.kind = ProviderKind::Africastalking;
    config.provider.africastalking = Some(settings(&server.uri()));
    config.validate().unwrap();
    let app = smsrelay::app::Application::from_parts(
        &config,
        db.store(),
        config.provider.build().unwrap(),
    );
    let first = db.insert(1, "+254712345606", "one").await;
    app.dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    let sms = db.store.get(first).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "declined");
    assert!(
        sms.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("opted-out"),
        "{sms:?}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);

    // The same number, stored another way, and another recipient.
    let second = db.insert(1, "0712 345 606", "two").await;
    let other = db.insert(2, "+254712345601", "three").await;
    app.dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(db.status(second).await, "declined");
    assert_eq!(db.status(other).await, "sent");
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2, "only the other recipient was sent to");
    let to: HashMap<String, String> = form_of(&requests[1]).into_iter().collect();
    assert_eq!(to["to"], "+254712345601");
    let reason = db.transitions(second).await;
    assert_eq!(reason.last().unwrap().1, "declined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_with_the_secret_move_messages_by_their_message_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .respond_with(ByRecipient)
        .mount(&server)
        .await;
    let db = TestDb::new().await;
    let mut config = test_config(&db, "http://127.0.0.1:9/unused");
    let port = free_port();
    config.api.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.provider.kind = ProviderKind::Africastalking;
    config.provider.africastalking = Some(settings(&server.uri()));
    config.validate().unwrap();
    let provider = config.provider.build().unwrap();
    assert_eq!(provider.name(), "africastalking");
    let app = smsrelay::app::Application::from_parts(&config, db.store(), provider)
        .with_api(&config)
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));

    let delivered = db.insert(1, "+254712345601", "one").await;
    let failed = db.insert(2, "+254712345602", "two").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            db.status(delivered).await == "sent" && db.status(failed).await == "sent"
        })
        .await
    );
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/callbacks/africastalking");
    let post = |url: String, form: Vec<(&'static str, &'static str)>| {
        let request = http.post(url).form(&form);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let success = vec![
        ("id", "ATXid_01"),
        ("status", "Success"),
        ("phoneNumber", "+254712345601"),
        ("networkCode", "63902"),
    ];
    assert_eq!(post(url.clone(), success.clone()).await, 403, "no secret");
    assert_eq!(
        post(
            format!("{url}?secret=at-callback-secret-0124"),
            success.clone()
        )
        .await,
        403
    );
    assert_eq!(
        db.status(delivered).await,
        "sent",
        "refused reports change nothing"
    );
    let with_secret = format!("{url}?secret={SECRET}");
    assert_eq!(
        post(with_secret.clone(), vec![("status", "Success")]).await,
        400
    );
    assert_eq!(
        post(
            with_secret.clone(),
            vec![("id", "ATXid_01"), ("status", "Buffered")]
        )
        .await,
        200,
        "intermediate"
    );
    assert_eq!(db.status(delivered).await, "sent");
    assert_eq!(post(with_secret.clone(), success.clone()).await, 200);
    assert_eq!(db.status(delivered).await, "delivered");
    let failure = vec![
        ("id", "ATXid_02"),
        ("status", "Failed"),
        ("failureReason", "AbsentSubscriber"),
    ];
    assert_eq!(post(with_secret.clone(), failure).await, 200);
    assert_eq!(db.status(failed).await, "undelivered");
    let events = smsrelay::store::Messages::events(&*db.store, failed)
        .await
        .unwrap();
    assert_eq!(
        events.last().unwrap().reason,
        "africastalking status Failed, failureReason AbsentSubscriber"
    );
    // Duplicates, late contrary reports and unknown ids change nothing.
    assert_eq!(post(with_secret.clone(), success).await, 200);
    assert_eq!(
        post(
            with_secret.clone(),
            vec![("id", "ATXid_01"), ("status", "Rejected")]
        )
        .await,
        200
    );
    assert_eq!(
        post(
            with_secret,
            vec![("id", "ATXid_unknown"), ("status", "Success")]
        )
        .await,
        200
    );
    assert_eq!(db.status(delivered).await, "delivered");
    assert_eq!(db.transitions(delivered).await.len(), 3);
    stop.cancel();
}

/// Answers like [`ByRecipient`], `delay` late.
struct Late(Duration);

impl wiremock::Respond for Late {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        ByRecipient.respond(request).set_delay(self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_beats_the_send_answer_waits_for_its_outcome() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .respond_with(Late(Duration::from_millis(800)))
        .mount(&server)
        .await;
    let db = TestDb::new().await;
    let mut config = test_config(&db, "http://127.0.0.1:9/unused");
    let port = free_port();
    config.api.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.provider.kind = ProviderKind::Africastalking;
    config.provider.africastalking = Some(settings(&server.uri()));
    config.validate().unwrap();
    let provider = config.provider.build().unwrap();
    let app = smsrelay::app::Application::from_parts(&config, db.store(), provider)
        .with_api(&config)
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));

    let id = db.insert(1, "+254712345601", "one").await;
    // The provider has the request and has not answered yet: its report
    // comes first, before the message id is known to us.
    assert!(
        eventually(Duration::from_secs(10), || async {
            !server
                .received_requests()
                .await
                .unwrap_or_default()
                .is_empty()
        })
        .await
    );
    assert_eq!(db.status(id).await, "sending");
    let answer = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/callbacks/africastalking?secret={SECRET}"
        ))
        .form(&[("id", "ATXid_01"), ("status", "Success")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(
        db.status(id).await,
        "delivered",
        "answered only once the report is applied"
    );
    let to: Vec<String> = db
        .transitions(id)
        .await
        .into_iter()
        .map(|(_, to)| to)
        .collect();
    assert_eq!(to, ["sending", "sent", "delivered"]);
    stop.cancel();
}
