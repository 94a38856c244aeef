//! The fast loopback provider: answers every webhook POST with 200 and an
//! id at once, and counts what it received per message id, so that the
//! total and the duplicates can be checked; for the latency section it also
//! takes the insert time stamped in the text (`t=<unix micros>`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;
use tokio_util::sync::CancellationToken;

/// What the provider saw.
#[derive(Debug, Default)]
pub struct Received {
    /// Requests per message id.
    pub per_id: HashMap<i64, u32>,
    /// Requests in all.
    pub total: u64,
    /// Requests whose body was not the webhook's JSON.
    pub malformed: u64,
    /// Insert-to-provider times in microseconds, of the stamped messages.
    pub latencies_us: Vec<i64>,
    pub first_us: Option<i64>,
    pub last_us: Option<i64>,
}

impl Received {
    /// Message ids received more than once, and the extra requests they cost.
    pub fn duplicates(&self) -> (u64, u64) {
        self.per_id
            .values()
            .filter(|&&n| n > 1)
            .fold((0, 0), |(ids, extra), &n| {
                (ids + 1, extra + u64::from(n - 1))
            })
    }
}

pub struct Provider {
    pub url: String,
    received: Arc<Mutex<Received>>,
    stop: CancellationToken,
}

#[derive(serde::Deserialize)]
struct Body {
    id: i64,
    message: String,
}

/// The stamp `t=<unix micros>` at the end of a latency message.
fn stamp(message: &str) -> Option<i64> {
    message.rsplit_once("t=")?.1.trim().parse().ok()
}

async fn accept(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> impl IntoResponse {
    let now = crate::now_micros();
    let parsed = serde_json::from_slice::<Body>(&body);
    let mut r = received.lock().unwrap_or_else(|e| e.into_inner());
    r.total += 1;
    r.first_us.get_or_insert(now);
    r.last_us = Some(now);
    let Ok(body) = parsed else {
        r.malformed += 1;
        return (
            StatusCode::BAD_REQUEST,
            [(CONTENT_TYPE, "text/plain")],
            String::from("not the webhook JSON"),
        );
    };
    *r.per_id.entry(body.id).or_default() += 1;
    if let Some(at) = stamp(&body.message) {
        r.latencies_us.push(now - at);
    }
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json")],
        format!("{{\"id\":\"bench-{}\"}}", body.id),
    )
}

impl Provider {
    pub async fn start() -> anyhow::Result<Provider> {
        let received = Arc::new(Mutex::new(Received::default()));
        let router = Router::new()
            .route("/sms", post(accept))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/sms", listener.local_addr()?);
        let stop = CancellationToken::new();
        tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        Ok(Provider {
            url,
            received,
            stop,
        })
    }

    /// Requests received so far.
    pub fn total(&self) -> u64 {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .total
    }

    /// Everything received so far, and a fresh start for the next section.
    pub fn take(&self) -> Received {
        std::mem::take(&mut *self.received.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_stamp_at_the_end_of_the_text() {
        assert_eq!(
            super::stamp("Your code is 1234. t=1733300000000001"),
            Some(1733300000000001)
        );
        assert_eq!(super::stamp("Dear client, no stamp"), None);
    }
}
