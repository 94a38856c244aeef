//! The `infobip` provider against a local mock of Infobip's SMS API: the
//! exact request, how each documented reply is classified, and its delivery
//! reports through `/callbacks/infobip` on the real API listener.

use std::time::Duration;

use smsrelay::domain::phone::E164;
use smsrelay::provider::infobip::{InfobipProvider, InfobipSettings};
use smsrelay::provider::{
    OutboundSms, Provider, ProviderInstance, ProviderKind, SendOutcome, Unavailable,
};
use smsrelay::secrets::Secret;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

const KEY: &str = "infobip-key-5c1e";
const SECRET: &str = "infobip-callback-0123";

fn settings(base_url: &str) -> InfobipSettings {
    InfobipSettings {
        base_url: base_url.into(),
        api_key: Some(Secret::new(KEY)),
        from: Some("BANK".into()),
        notify_url: Some("https://sms.example.com/".into()),
        callback_secret: Some(Secret::new(SECRET)),
        ..InfobipSettings::default()
    }
}

fn provider(settings: &InfobipSettings) -> InfobipProvider {
    let instance = ProviderInstance {
        name: "infobip".into(),
        timeout: Duration::from_secs(5),
    };
    InfobipProvider::from_settings(settings, &instance).expect("infobip provider")
}

async fn send(provider: &InfobipProvider, text: &str) -> SendOutcome {
    let to = E164::parse("+254712345678", None).unwrap();
    provider
        .send(&OutboundSms {
            id: 77,
            attempt: 2,
            to: &to,
            message: text,
            segments: 1,
            send_key: "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        })
        .await
}

/// Infobip's 200 reply for one message with this status.
fn reply(group: u32, group_name: &str, name: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "bulkId": "BULK-1",
        "messages": [{
            "to": "254712345678",
            "messageId": "IB-MSG-1",
            "status": {"groupId": group, "groupName": group_name, "id": 26, "name": name,
                       "description": "Message sent to next instance"}
        }]
    }))
}

/// Infobip's error body; `text` quotes the request, as it may.
fn request_error(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({
        "requestError": {"serviceException": {"messageId": code, "text": "bad to 254712345678"}}
    }))
}

#[tokio::test]
async fn a_message_is_one_json_post_with_the_app_key_and_the_message_id_comes_back() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/2/text/advanced"))
        .respond_with(reply(1, "PENDING", "PENDING_ACCEPTED"))
        .mount(&server)
        .await;
    let outcome = send(
        &provider(&settings(&format!("{}/", server.uri()))),
        "Malipo ✓ \"100%\"",
    )
    .await;
    assert_eq!(
        outcome,
        SendOutcome::Accepted {
            provider_message_id: Some("IB-MSG-1".into()),
            http_status: Some(200)
        }
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method.as_str(), "POST");
    let header = |name: &str| r.headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(header("authorization"), format!("App {KEY}"));
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("accept"), "application/json");
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"messages": [{
            "destinations": [{"to": "254712345678"}],
            "from": "BANK",
            "text": "Malipo ✓ \"100%\"",
            "notifyUrl": format!("https://sms.example.com/callbacks/infobip?secret={SECRET}"),
            "notifyContentType": "application/json",
            "callbackData": "sms_id=77&attempt=2"
        }]})
    );

    // Without notify_url and from: no report asked for, the account's sender.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(reply(1, "PENDING", "PENDING_ENROUTE"))
        .mount(&server)
        .await;
    let mut plain = settings(&server.uri());
    plain.notify_url = None;
    plain.callback_secret = None;
    plain.from = None;
    send(&provider(&plain), "hello").await;
    let body: serde_json::Value =
        serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"messages": [{
            "destinations": [{"to": "254712345678"}],
            "text": "hello",
            "callbackData": "sms_id=77&attempt=2"
        }]})
    );
}

#[derive(Debug, PartialEq)]
enum Class {
    Accepted,
    Transient,
    Permanent,
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
        SendOutcome::Permanent { .. } => Class::Permanent,
        SendOutcome::Unknown { .. } => panic!("an answer's outcome is never unknown"),
    }
}

#[tokio::test]
async fn every_documented_reply_is_classified() {
    let with_error = |group: u32, name: &str, permanent: bool| {
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"messages": [{
            "messageId": "IB-2",
            "status": {"groupId": group, "groupName": "REJECTED", "id": 12, "name": name},
            "error": {"groupId": 1, "groupName": "HANDSET_ERRORS", "id": 27, "name": "EC_ABSENT_SUBSCRIBER", "permanent": permanent}
        }]}))
    };
    let cases: Vec<(ResponseTemplate, Class)> = vec![
        (reply(1, "PENDING", "PENDING_ACCEPTED"), Class::Accepted),
        (
            reply(3, "DELIVERED", "DELIVERED_TO_OPERATOR"),
            Class::Accepted,
        ),
        (
            reply(5, "REJECTED", "REJECTED_DESTINATION"),
            Class::Permanent,
        ),
        (reply(5, "REJECTED", "REJECTED_DND"), Class::Permanent),
        (
            reply(2, "UNDELIVERABLE", "UNDELIVERABLE_REJECTED_OPERATOR"),
            Class::Permanent,
        ),
        (reply(4, "EXPIRED", "EXPIRED_EXPIRED"), Class::Permanent),
        (
            reply(5, "REJECTED", "REJECTED_NOT_ENOUGH_CREDITS"),
            Class::Configuration,
        ),
        (
            reply(5, "REJECTED", "REJECTED_SENDER"),
            Class::Configuration,
        ),
        (
            reply(5, "REJECTED", "REJECTED_FLOODING_FILTER"),
            Class::Transient,
        ),
        // Infobip's `permanent` flag decides whether a refusal is worth retrying.
        (
            with_error(2, "UNDELIVERABLE_NOT_DELIVERED", false),
            Class::Transient,
        ),
        (
            with_error(2, "UNDELIVERABLE_NOT_DELIVERED", true),
            Class::Permanent,
        ),
        (reply(9, "WHATEVER", "NEW_STATUS"), Class::Transient),
        (
            ResponseTemplate::new(200).set_body_string("<html>"),
            Class::Transient,
        ),
        (request_error(401, "UNAUTHORIZED"), Class::Configuration),
        (request_error(403, "FORBIDDEN"), Class::Configuration),
        (ResponseTemplate::new(404), Class::Configuration),
        (request_error(400, "BAD_REQUEST"), Class::Permanent),
        (request_error(429, "TOO_MANY_REQUESTS"), Class::Transient),
        (request_error(500, "GENERAL_ERROR"), Class::Transient),
        (ResponseTemplate::new(503), Class::Transient),
    ];
    let server = MockServer::start().await;
    let p = provider(&settings(&server.uri()));
    for (reply, class) in cases {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(reply)
            .mount(&server)
            .await;
        let outcome = send(&p, "hello").await;
        assert_eq!(class_of(&outcome), class, "{outcome:?}");
        let text = format!("{outcome:?}");
        assert!(!text.contains("712345678"), "no number in errors: {text}");
        assert!(!text.contains(KEY) && !text.contains(SECRET), "{text}");
    }
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(request_error(429, "TOO_MANY_REQUESTS").insert_header("Retry-After", "9"))
        .mount(&server)
        .await;
    let outcome = send(&p, "hello").await;
    assert!(
        matches!(outcome, SendOutcome::Transient { retry_after: Some(d), http_status: Some(429), .. } if d == Duration::from_secs(9)),
        "{outcome:?}"
    );
}

/// One report result as Infobip POSTs it.
fn result(callback_data: &str, group: u32, group_name: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "bulkId": "BULK-1", "messageId": "IB-MSG-1", "to": "254712345678",
        "sentAt": "2026-12-04T10:00:00.000+0000", "doneAt": "2026-12-04T10:00:05.000+0000",
        "smsCount": 1, "callbackData": callback_data,
        "status": {"groupId": group, "groupName": group_name, "id": 5, "name": name},
        "error": {"groupId": 0, "groupName": "OK", "id": 0, "name": "NO_ERROR", "permanent": false}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_with_the_secret_move_messages_and_others_are_refused() {
    let infobip = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/2/text/advanced"))
        .respond_with(reply(1, "PENDING", "PENDING_ACCEPTED"))
        .mount(&infobip)
        .await;
    let db = TestDb::new().await;
    let mut config = test_config(&db, "http://127.0.0.1:9/unused");
    let port = free_port();
    config.api.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = settings(&infobip.uri());
    s.notify_url = Some(format!("http://127.0.0.1:{port}"));
    config.provider.kind = ProviderKind::Infobip;
    config.provider.infobip = Some(s);
    config.validate().unwrap();
    let provider = config.provider.build().unwrap();
    assert_eq!(provider.name(), "infobip");
    let app = smsrelay::app::Application::from_parts(&config, db.store(), provider)
        .with_api(&config)
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));

    let delivered = db.insert(1, "+254712345678", "one").await;
    let undelivered = db.insert(2, "+254712345679", "two").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            db.status(delivered).await == "sent" && db.status(undelivered).await == "sent"
        })
        .await
    );
    // The URL Infobip was given is the one it reports to.
    let requests = infobip.received_requests().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    let url = body["messages"][0]["notifyUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        url,
        format!("http://127.0.0.1:{port}/callbacks/infobip?secret={SECRET}")
    );

    let http = reqwest::Client::new();
    let post = |url: String, body: serde_json::Value| {
        let request = http.post(url).json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let base = format!("http://127.0.0.1:{port}/callbacks/infobip");
    let good = serde_json::json!({"results": [
        result(&format!("sms_id={delivered}&attempt=1"), 3, "DELIVERED", "DELIVERED_TO_HANDSET"),
        result(&format!("sms_id={undelivered}&attempt=1"), 2, "UNDELIVERABLE", "UNDELIVERABLE_NOT_DELIVERED"),
    ]});
    assert_eq!(post(base.clone(), good.clone()).await, 403, "no secret");
    assert_eq!(
        post(format!("{base}?secret=infobip-callback-0124"), good.clone()).await,
        403
    );
    assert_eq!(
        db.status(delivered).await,
        "sent",
        "refused reports change nothing"
    );
    assert_eq!(
        http.post(&url)
            .body("not json")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    let pending = serde_json::json!({"results": [
        result(&format!("sms_id={delivered}&attempt=1"), 1, "PENDING", "PENDING_ENROUTE"),
    ]});
    assert_eq!(post(url.clone(), pending).await, 200, "intermediate");
    assert_eq!(db.status(delivered).await, "sent");

    assert_eq!(post(url.clone(), good.clone()).await, 200);
    assert_eq!(db.status(delivered).await, "delivered");
    assert_eq!(db.status(undelivered).await, "undelivered");
    let events = smsrelay::store::Messages::events(&*db.store, undelivered)
        .await
        .unwrap();
    assert_eq!(
        events.last().unwrap().reason,
        "infobip status UNDELIVERABLE_NOT_DELIVERED (UNDELIVERABLE)"
    );
    // A duplicate, a contrary late one and one for a message of another application.
    let late = serde_json::json!({"results": [
        result(&format!("sms_id={delivered}&attempt=1"), 2, "UNDELIVERABLE", "UNDELIVERABLE_NOT_DELIVERED"),
        result("their own data", 3, "DELIVERED", "DELIVERED_TO_HANDSET"),
        result("sms_id=999999&attempt=1", 3, "DELIVERED", "DELIVERED_TO_HANDSET"),
    ]});
    assert_eq!(post(url.clone(), good).await, 200);
    assert_eq!(post(url.clone(), late).await, 200);
    assert_eq!(db.status(delivered).await, "delivered");
    assert_eq!(
        db.transitions(delivered).await.len(),
        3,
        "{:?}",
        db.transitions(delivered).await
    );
    stop.cancel();
}
