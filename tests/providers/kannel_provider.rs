//! The `kannel` provider: its exact sendsms request and how it classifies each
//! smsbox answer (against a mock), then the real thing: messages sent through
//! the dispatcher reach fakesmsc behind a real bearerbox + smsbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use smsrelay::Config;
use smsrelay::domain::phone::E164;
use smsrelay::provider::kannel::{KannelProvider, KannelSettings};
use smsrelay::provider::{OutboundSms, Provider, SendOutcome, Unavailable};
use smsrelay::provider::{ProviderInstance, ProviderKind};
use smsrelay::secrets::Secret;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::kannel::{self, Kannel};
use crate::support::*;

const SECRET: &str = "s3cr3t-callback-0123";
const PASSWORD: &str = "kannel-pw-9f8e";

fn settings(url: &str) -> KannelSettings {
    KannelSettings {
        url: url.to_owned(),
        username: "bank".into(),
        password: Some(Secret::new(PASSWORD)),
        from: Some("BANK".into()),
        dlr_url_base: Some("https://sms.example.com/relay/".into()),
        callback_secret: Some(Secret::new(SECRET)),
        ..KannelSettings::default()
    }
}

fn instance() -> ProviderInstance {
    ProviderInstance {
        name: "kannel".into(),
        timeout: Duration::from_secs(5),
    }
}

fn provider(settings: &KannelSettings) -> KannelProvider {
    KannelProvider::from_settings(settings, &instance()).expect("kannel provider")
}

async fn send(provider: &KannelProvider, text: &str) -> SendOutcome {
    let to = E164::parse("+254712345678", None).unwrap();
    provider
        .send(&OutboundSms {
            id: 4217,
            attempt: 2,
            to: &to,
            message: text,
            segments: 1,
            send_key: "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        })
        .await
}

/// The query of the one request the mock received, decoded.
async fn only_query(server: &MockServer) -> HashMap<String, String> {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "exactly one request");
    assert_eq!(requests[0].method.as_str(), "GET");
    assert_eq!(requests[0].url.path(), "/cgi-bin/sendsms");
    assert!(requests[0].body.is_empty());
    requests[0].url.query_pairs().into_owned().collect()
}

fn expected(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn mock_answering(status: u16, body: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/cgi-bin/sendsms"))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn gsm_text_goes_as_one_get_with_credentials_sender_and_delivery_report_url() {
    let server = mock_answering(202, "0: Accepted for delivery").await;
    let p = provider(&settings(&format!("{}/cgi-bin/sendsms", server.uri())));
    let outcome = send(&p, "Repayment of KES 1,500 due {today} @ 5€").await;
    assert_eq!(
        outcome,
        SendOutcome::Accepted {
            provider_message_id: None,
            http_status: Some(202)
        }
    );
    let dlr_url = format!(
        "https://sms.example.com/relay/callbacks/kannel?sms_id=4217&attempt=2&secret={SECRET}&type=%d"
    );
    assert_eq!(
        only_query(&server).await,
        expected(&[
            ("username", "bank"),
            ("password", PASSWORD),
            ("from", "BANK"),
            ("to", "+254712345678"),
            ("text", "Repayment of KES 1,500 due {today} @ 5€"),
            ("charset", "UTF-8"),
            ("dlr-mask", "31"),
            ("dlr-url", &dlr_url),
        ]),
        "GSM-7 text (extension characters included) is sent without coding=2"
    );
}

#[tokio::test]
async fn non_gsm_text_is_sent_as_ucs2() {
    let server = mock_answering(202, "0: Accepted for delivery").await;
    let mut s = settings(&format!("{}/cgi-bin/sendsms", server.uri()));
    s.from = None;
    s.dlr_url_base = None;
    s.callback_secret = None;
    send(&provider(&s), "Платёж получен ✓").await;
    assert_eq!(
        only_query(&server).await,
        expected(&[
            ("username", "bank"),
            ("password", PASSWORD),
            ("to", "+254712345678"),
            ("text", "Платёж получен ✓"),
            ("charset", "UTF-8"),
            ("coding", "2"),
        ]),
        "no from and no delivery report when they are not configured"
    );
}

/// What each smsbox answer means, as the dispatcher will see it.
#[derive(Debug, PartialEq)]
enum Class {
    Accepted,
    /// Retried; the error says it is the setup's fault, not the message's.
    Configuration,
    Transient,
    Permanent,
}

fn class_of(outcome: &SendOutcome) -> Class {
    match outcome {
        SendOutcome::Accepted { .. } => Class::Accepted,
        SendOutcome::ProviderUnavailable {
            error,
            cause: Unavailable::Configuration,
            ..
        } if error.contains("configuration problem") => Class::Configuration,
        SendOutcome::ProviderUnavailable { .. } => {
            panic!("a provider's own answer is never `paused`")
        }
        SendOutcome::Transient { .. } => Class::Transient,
        SendOutcome::Permanent { .. } => Class::Permanent,
        SendOutcome::Unknown { .. } => panic!("an answer's outcome is never unknown"),
    }
}

#[tokio::test]
async fn every_documented_answer_is_classified() {
    let cases: &[(u16, &str, Class)] = &[
        (202, "0: Accepted for delivery", Class::Accepted),
        (202, "3: Queued for later delivery", Class::Accepted),
        (202, "Sent.", Class::Accepted),
        (
            403,
            "Authorization failed for sendsms",
            Class::Configuration,
        ),
        (403, "Not routable. Do not try again.", Class::Permanent),
        (401, "Unauthorized", Class::Configuration),
        (404, "Unknown request.", Class::Configuration),
        (
            400,
            "Sender missing and no global set, rejected",
            Class::Configuration,
        ),
        (
            400,
            "DLR-URL field misformed, rejected",
            Class::Configuration,
        ),
        (
            400,
            "Empty receiver number not allowed, rejected",
            Class::Permanent,
        ),
        (
            400,
            "Number(s) has/have been denied by white- and/or black-lists.",
            Class::Permanent,
        ),
        (500, "Sending failed.", Class::Transient),
        (503, "Temporal failure, try again later.", Class::Transient),
        (200, "<html>proxy login</html>", Class::Transient),
        (302, "", Class::Configuration),
    ];
    for (status, body, class) in cases {
        let server = mock_answering(*status, body).await;
        let outcome = send(
            &provider(&settings(&format!("{}/cgi-bin/sendsms", server.uri()))),
            "hello",
        )
        .await;
        assert_eq!(
            &class_of(&outcome),
            class,
            "HTTP {status} {body:?}: {outcome:?}"
        );
        let error = format!("{outcome:?}");
        assert!(
            !error.contains(PASSWORD) && !error.contains(SECRET),
            "{error}"
        );
        assert!(!error.contains("712345678"), "no number in errors: {error}");
        if *status != 202 {
            assert!(error.contains(&status.to_string()), "{error}");
        }
    }
}

#[tokio::test]
async fn throttling_keeps_the_retry_after_and_a_dead_smsbox_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "30"))
        .mount(&server)
        .await;
    let outcome = send(
        &provider(&settings(&format!("{}/cgi-bin/sendsms", server.uri()))),
        "hello",
    )
    .await;
    assert!(
        matches!(
            outcome,
            SendOutcome::Transient { retry_after: Some(d), http_status: Some(429), .. } if d == Duration::from_secs(30)
        ),
        "{outcome:?}"
    );

    // A port nothing listens on.
    let port = free_port();
    let outcome = send(
        &provider(&settings(&format!(
            "http://127.0.0.1:{port}/cgi-bin/sendsms"
        ))),
        "hello",
    )
    .await;
    match &outcome {
        SendOutcome::Transient {
            error, http_status, ..
        } => {
            assert_eq!(*http_status, None);
            assert!(error.contains("connect"), "{error}");
            assert!(
                !error.contains(PASSWORD) && !error.contains(SECRET),
                "{error}"
            );
        }
        other => panic!("connection refused must be transient: {other:?}"),
    }
}

#[tokio::test]
async fn kind_kannel_needs_its_section_and_names_bad_keys() {
    let mut config = Config::default();
    config.provider.kind = ProviderKind::Kannel;
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("provider.kannel"), "{error}");

    let mut s = settings("http://127.0.0.1:13013/cgi-bin/sendsms");
    s.dlr_url_base = Some("not a url".into());
    config.provider.kannel = Some(s);
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("provider.kannel.dlr_url_base"), "{error}");

    // The same settings from TOML, unknown keys refused.
    let toml = r#"
        [provider]
        kind = "kannel"
        [provider.kannel]
        url = "http://127.0.0.1:13013/cgi-bin/sendsms"
        username = "bank"
        passwrd = "x"
    "#;
    let error = toml::from_str::<Config>(toml).unwrap_err().to_string();
    assert!(error.contains("passwrd"), "{error}");
}

/// Splits fakesmsc's parts by concatenation reference.
fn parts_of(received: &[kannel::FakeSms]) -> HashMap<u8, Vec<&kannel::FakeSms>> {
    let mut by_ref: HashMap<u8, Vec<&kannel::FakeSms>> = HashMap::new();
    for sms in received.iter().filter(|s| s.kind == "udh") {
        let (reference, _, _) = sms.part().expect("a concatenation UDH");
        by_ref.entry(reference).or_default().push(sms);
    }
    by_ref
}

#[tokio::test]
async fn messages_sent_through_smsrelay_reach_a_real_kannel_intact() {
    let gateway = Kannel::start().await;
    let reports = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/callbacks/kannel"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&reports)
        .await;
    let db = TestDb::new().await;
    let mut config = test_config(&db, "http://127.0.0.1:9/unused");
    config.provider.kind = ProviderKind::Kannel;
    config.provider.kannel = Some(KannelSettings {
        url: gateway.sendsms_url.clone(),
        username: kannel::USERNAME.into(),
        password: Some(Secret::new(kannel::PASSWORD)),
        from: Some("SMSRELAY".into()),
        dlr_url_base: Some(reports.uri()),
        callback_secret: Some(Secret::new(SECRET)),
        ..KannelSettings::default()
    });
    config.validate().expect("valid kannel config");
    let provider: Arc<dyn Provider> = config.provider.build().unwrap();
    assert_eq!(provider.name(), "kannel");
    let app = smsrelay::app::Application::from_parts(&config, db.store(), provider);

    let cyrillic = "Ваш платёж 1 500 ₽ получен. Спасибо!";
    let long: String = (0..400)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let plain = db
        .insert(1, "+254 712 345 678", "Your loan is approved")
        .await;
    let ucs2 = db.insert(2, "0712345679", cyrillic).await;
    let three = db.insert(3, "+254712345670", &long).await;

    let report = app
        .dispatcher
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((report.claimed, report.sent), (3, 3), "{report:?}");
    for id in [plain, ucs2, three] {
        assert_eq!(db.status(id).await, "sent");
    }

    // 1 + 1 + 3 parts.
    let received = gateway.wait_for(5, Duration::from_secs(15)).await;
    assert_eq!(received.len(), 5, "{received:#?}\n{}", gateway.logs());
    let by_to = |to: &str| {
        received
            .iter()
            .filter(|s| s.to == to)
            .cloned()
            .collect::<Vec<_>>()
    };
    let plain_rx = by_to("+254712345678");
    assert_eq!(plain_rx.len(), 1);
    assert_eq!(plain_rx[0].from, "SMSRELAY");
    assert_eq!(plain_rx[0].text(), "Your loan is approved");

    let ucs2_rx = by_to("+254712345679");
    assert_eq!(ucs2_rx.len(), 1, "{ucs2_rx:?}");
    assert_eq!(ucs2_rx[0].kind, "ucs-2", "sent as UCS-2, not as `???`");
    assert_eq!(ucs2_rx[0].text(), cyrillic);

    let long_rx = by_to("+254712345670");
    let parts = parts_of(&long_rx);
    assert_eq!(parts.len(), 1, "one concatenated message: {long_rx:?}");
    let mut parts = parts.into_values().next().unwrap();
    parts.sort_by_key(|p| p.part().unwrap().2);
    let shape: Vec<(u8, u8, usize)> = parts
        .iter()
        .map(|p| {
            let (_, total, index) = p.part().unwrap();
            (total, index, p.data.len())
        })
        .collect();
    assert_eq!(shape, vec![(3, 1, 153), (3, 2, 153), (3, 3, 94)]);
    let joined: Vec<u8> = parts.iter().flat_map(|p| p.data.clone()).collect();
    assert_eq!(String::from_utf8(joined).unwrap(), long);

    // Kannel reports on each message through the dlr-url smsrelay gave it:
    // our id, the attempt, the secret, and the report type it substituted.
    let all_reported = eventually(Duration::from_secs(15), || async {
        let requests = reports.received_requests().await.unwrap_or_default();
        [plain, ucs2, three].iter().all(|id| {
            requests.iter().any(|r| {
                let q: HashMap<String, String> = r.url.query_pairs().into_owned().collect();
                q.get("sms_id") == Some(&id.to_string())
                    && q.get("type").map(String::as_str) == Some("1")
            })
        })
    })
    .await;
    let requests = reports.received_requests().await.unwrap_or_default();
    assert!(
        all_reported,
        "a delivered report per message: {:#?}",
        requests
            .iter()
            .map(|r| r.url.to_string())
            .collect::<Vec<_>>()
    );
    for r in &requests {
        let q: HashMap<String, String> = r.url.query_pairs().into_owned().collect();
        assert_eq!(q.get("secret").map(String::as_str), Some(SECRET));
        assert_eq!(q.get("attempt").map(String::as_str), Some("1"));
        assert!(
            matches!(q.get("type").map(String::as_str), Some("1" | "8")),
            "{q:?}"
        );
    }
}

#[tokio::test]
async fn queued_for_later_delivery_counts_as_sent_and_is_delivered_once_an_smsc_connects() {
    let mut gateway = Kannel::start_without_smsc().await;
    let p = provider(&KannelSettings {
        url: gateway.sendsms_url.clone(),
        username: kannel::USERNAME.into(),
        password: Some(Secret::new(kannel::PASSWORD)),
        ..KannelSettings::default()
    });
    // What the real smsbox answers while no SMSC is connected...
    let direct = reqwest::Url::parse_with_params(
        &gateway.sendsms_url,
        [
            ("username", kannel::USERNAME),
            ("password", kannel::PASSWORD),
            ("to", "+254712345670"),
            ("text", "probe"),
        ],
    )
    .unwrap();
    let answer = reqwest::get(direct).await.unwrap();
    assert_eq!(answer.status().as_u16(), 202);
    assert_eq!(answer.text().await.unwrap(), "3: Queued for later delivery");
    // ...and the provider takes it as sent.
    let outcome = send(&p, "kept by bearerbox").await;
    assert_eq!(
        outcome,
        SendOutcome::Accepted {
            provider_message_id: None,
            http_status: Some(202)
        },
        "{}",
        gateway.logs()
    );
    assert!(gateway.received().is_empty());
    gateway.connect_smsc().await;
    let received = gateway.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(received.len(), 2, "{}", gateway.logs());
    let ours: Vec<_> = received
        .iter()
        .filter(|s| s.to == "+254712345678")
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].text(), "kept by bearerbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kannels_delivery_reports_drive_messages_to_delivered() {
    let gateway = Kannel::start().await;
    let db = TestDb::new().await;
    let mut config = test_config(&db, "http://127.0.0.1:9/unused");
    // The API must be known before the provider is built: its address is the dlr-url base.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    config.api.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.provider.kind = ProviderKind::Kannel;
    config.provider.kannel = Some(KannelSettings {
        url: gateway.sendsms_url.clone(),
        username: kannel::USERNAME.into(),
        password: Some(Secret::new(kannel::PASSWORD)),
        dlr_url_base: Some(base.clone()),
        callback_secret: Some(Secret::new(SECRET)),
        ..KannelSettings::default()
    });
    config.validate().expect("valid kannel config");
    let provider = config.provider.build().unwrap();
    let app = smsrelay::app::Application::from_parts(&config, db.store(), provider)
        .with_api(&config)
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));

    let cyrillic = db.insert(1, "+254712345678", "Платёж получен").await;
    let long: String = "x".repeat(400);
    let three = db.insert(2, "+254712345679", &long).await;
    let delivered = eventually(Duration::from_secs(30), || async {
        db.status(cyrillic).await == "delivered" && db.status(three).await == "delivered"
    })
    .await;
    assert!(
        delivered,
        "{} / {}\n{}",
        db.status(cyrillic).await,
        db.status(three).await,
        gateway.logs()
    );
    let sms = smsrelay::store::Messages::get(&*db.store, cyrillic)
        .await
        .unwrap()
        .unwrap();
    assert!(sms.delivered_at.is_some());
    let last = db.transitions(cyrillic).await.pop().unwrap();
    assert_eq!(last, ("sent".to_owned(), "delivered".to_owned()));

    // The route itself: the secret is required, a malformed report is refused,
    // one for an unknown message is answered so that Kannel stops retrying.
    let http = reqwest::Client::new();
    let get = |query: String| {
        let http = http.clone();
        let url = format!("{base}/callbacks/kannel?{query}");
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    let id = cyrillic;
    assert_eq!(get(format!("sms_id={id}&attempt=1&type=2")).await, 403);
    assert_eq!(
        get(format!(
            "sms_id={id}&attempt=1&secret=wrong-secret-000000&type=2"
        ))
        .await,
        403
    );
    assert_eq!(
        get(format!("sms_id=x&attempt=1&secret={SECRET}&type=2")).await,
        400
    );
    assert_eq!(
        get(format!("sms_id=999999&attempt=1&secret={SECRET}&type=1")).await,
        200
    );
    // A late "not delivered" after "delivered" changes nothing.
    assert_eq!(
        get(format!("sms_id={id}&attempt=1&secret={SECRET}&type=2")).await,
        200
    );
    assert_eq!(db.status(id).await, "delivered");
    stop.cancel();
}

/// The report Kannel sends while smsbox has not answered our sendsms yet
/// (the SMSC was quicker than the HTTP reply): answered 200 at once, kept,
/// and applied when the dispatcher records the send's outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_beats_the_send_outcome_is_kept_and_applied() {
    // smsbox answers after 2 s: the report arrives while the row is `sending`.
    let smsbox = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/cgi-bin/sendsms"))
        .respond_with(
            ResponseTemplate::new(202)
                .set_body_string("0: Accepted for delivery")
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&smsbox)
        .await;
    let db = TestDb::new().await;
    let mut config = test_config(&db, "http://127.0.0.1:9/unused");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    config.api.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.provider.kind = ProviderKind::Kannel;
    config.provider.kannel = Some(KannelSettings {
        dlr_url_base: Some(base.clone()),
        ..settings(&format!("{}/cgi-bin/sendsms", smsbox.uri()))
    });
    config.validate().expect("valid kannel config");
    let provider = config.provider.build().unwrap();
    let app = smsrelay::app::Application::from_parts(&config, db.store(), provider)
        .with_api(&config)
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));

    let id = db.insert(1, "+254712345678", "early report").await;
    let asked = eventually(Duration::from_secs(10), || async {
        !smsbox
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    })
    .await;
    assert!(asked, "smsbox never asked");
    // The dlr-url exactly as Kannel got it, with the report type filled in.
    let dlr_url = only_query(&smsbox).await["dlr-url"].replace("%d", "1");
    assert_eq!(db.status(id).await, "sending");
    let http = reqwest::Client::new();
    let answer = http.get(&dlr_url).send().await.unwrap();
    assert_eq!(
        answer.status().as_u16(),
        200,
        "kept, so Kannel need not retry"
    );
    assert_eq!(
        db.status(id).await,
        "sending",
        "applied only with the outcome"
    );
    // Kannel retries it anyway: still 200, nothing more happens.
    assert_eq!(
        http.get(&dlr_url).send().await.unwrap().status().as_u16(),
        200
    );

    let delivered = eventually(Duration::from_secs(10), || async {
        db.status(id).await == "delivered"
    })
    .await;
    assert!(delivered, "{}", db.status(id).await);
    assert_eq!(
        db.transitions(id).await,
        [
            ("pending".to_owned(), "sending".to_owned()),
            ("sending".to_owned(), "sent".to_owned()),
            ("sent".to_owned(), "delivered".to_owned()),
        ]
    );
    let sms = smsrelay::store::Messages::get(&*db.store, id)
        .await
        .unwrap()
        .unwrap();
    assert!(sms.sent_at.is_some() && sms.delivered_at.is_some());

    // After the fact: a duplicate changes nothing; one for a message we never
    // had is answered 200 so that Kannel stops, and changes nothing.
    assert_eq!(
        http.get(&dlr_url).send().await.unwrap().status().as_u16(),
        200
    );
    let unknown = dlr_url.replace(&format!("sms_id={id}"), "sms_id=999999");
    assert_ne!(unknown, dlr_url);
    assert_eq!(
        http.get(&unknown).send().await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(db.transitions(id).await.len(), 3);
    assert_eq!(db.count("delivered").await, 1);
    stop.cancel();
}
