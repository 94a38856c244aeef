//! Lease renewal: a send slower than the lease keeps its row, so no other
//! instance reaps and sends it again.

use std::time::Duration;

use smsrelay::housekeeping::reap_once;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::reaper;
use crate::support::*;

const LEASE: Duration = Duration::from_secs(3);
const SEND: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_send_slower_than_the_lease_is_renewed_and_sent_once() {
    let db = TestDb::new().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"id": "prov-slow"}))
                .set_delay(SEND),
        )
        .mount(&provider)
        .await;
    let mut config = test_config(&db, &provider.uri());
    config.provider.timeout = Duration::from_secs(10);
    config.database.connect_timeout = Duration::from_secs(1);
    config.database.call_timeout = Duration::from_secs(1);
    config.dispatch.lease = LEASE;
    config
        .validate()
        .expect("a lease shorter than a send is valid");
    let node_a = dispatcher(&db, &config);
    config.dispatch.instance_id = Some("test-2".into());
    let node_b = dispatcher(&db, &config);
    let id = db.insert(1, "+254712345678", "slow provider").await;

    let stop = CancellationToken::new();
    let store = db.store();
    let (a, b_sent) = tokio::join!(node_a.run_once(&stop), async {
        // Another instance reaps and polls throughout the slow send and a while after.
        let mut sent = 0;
        let until = tokio::time::Instant::now() + SEND + LEASE;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            reap_once(store.as_ref(), &reaper(8)).await.unwrap();
            sent += node_b.run_once(&stop).await.unwrap().sent;
        }
        sent
    });
    let a = a.unwrap();
    assert_eq!((a.claimed, a.sent, a.stale), (1, 1, 0));
    assert_eq!(b_sent, 0, "the other instance never took the message over");
    assert_eq!(
        provider.received_requests().await.unwrap().len(),
        1,
        "the provider got the message exactly once"
    );
    let sms = db.store.get(id).await.unwrap().unwrap();
    assert_eq!((sms.status.as_str(), sms.attempts), ("sent", 1));
    let attempts = db.store.attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("accepted"));
}
