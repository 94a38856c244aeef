//! The Kannel test gateway itself: what the other tests rely on.

use std::time::Duration;

use crate::kannel::{self, Kannel};

#[tokio::test]
async fn fakesmsc_receives_what_smsbox_accepts() {
    let gateway = Kannel::start().await;
    let url = reqwest::Url::parse_with_params(
        &gateway.sendsms_url,
        [
            ("username", kannel::USERNAME),
            ("password", kannel::PASSWORD),
            ("to", "+254712345678"),
            ("text", "gateway check"),
        ],
    )
    .unwrap();
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.text().await.unwrap(), "0: Accepted for delivery");
    let received = gateway.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "{}", gateway.logs());
    assert_eq!(received[0].to, "+254712345678");
    assert_eq!(received[0].kind, "text");
    assert_eq!(received[0].text(), "gateway check");
}
