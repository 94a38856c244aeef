//! Prometheus metrics: counters and histograms recorded where things happen,
//! queue gauges read from the database at scrape time. Labels never carry
//! personal data (statuses, outcomes, routes only).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::ApiState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let latency = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
            let batches = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("smsrelay_send_duration_seconds".into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("smsrelay_api_request_duration_seconds".into()), &latency))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("smsrelay_claim_batch_size".into()), &batches));
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

/// Counts and times every API request by route template and status.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed();
    tracing::debug!(%method, %route, %status, elapsed = ?elapsed, "API request");
    metrics::counter!("smsrelay_api_requests_total", "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("smsrelay_api_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    response
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<ApiState>) -> Response {
    match state.reads.stats().await {
        Ok(stats) => {
            for (status, count) in stats.by_status {
                metrics::gauge!("smsrelay_messages", "status" => status.as_str()).set(count as f64);
            }
            metrics::gauge!("smsrelay_queue_due").set(stats.due as f64);
            metrics::gauge!("smsrelay_oldest_due_age_seconds").set(stats.oldest_due_age_secs);
            metrics::gauge!("smsrelay_database_up").set(1.0);
        }
        Err(e) => {
            tracing::warn!(error = %e, "queue statistics unavailable for /metrics");
            metrics::gauge!("smsrelay_database_up").set(0.0);
        }
    }
    let body = state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
