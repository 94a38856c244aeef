//! The HTTP API served beside the dispatcher: `/sms` for the platform's
//! screens and operators, health and metrics for the host, `/openapi.json`
//! generated from the handlers themselves so it cannot drift.

pub mod auth;
pub mod error;
pub mod health;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod server;
pub mod settings;
pub mod sms;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::validation::Rules;
use crate::store::{Messages, Store};
use auth::Authenticator;
use error::ApiError;
use settings::ApiSettings;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    /// The API's pool on the primary: writes, and reads that must see them
    /// (POST /sms's directory lookup, idempotency check and reply; readiness).
    pub store: Arc<dyn Store>,
    /// Where GET /sms, GET /sms/{id} and /metrics read: `database.read_url`
    /// when set (it may lag the primary), else the same pool as `store`.
    pub reads: Arc<dyn Messages>,
    pub auth: Arc<Authenticator>,
    /// Wakes the dispatcher after POST /sms so it does not wait for its next poll.
    pub wake: Arc<Notify>,
    pub rules: Rules,
    /// How long a POST body may take to arrive (`api.body_read_timeout`).
    pub body_read_timeout: Duration,
    pub default_limit: u32,
    pub max_limit: u32,
    /// Deepest accepted `offset` (`api.max_offset`).
    pub max_offset: u64,
    pub metrics: Option<PrometheusHandle>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "smsrelay",
        description = "SMS outbox of a core-banking platform: list and inspect messages, queue one for a client or a staff member. Errors use the platform's shape (ErrorBody)."
    ),
    modifiers(&BearerAuth),
    tags((name = "sms", description = "Messages"), (name = "ops", description = "Health and metrics"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `smsrelay token new`, configured under [[api.tokens]]",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every documented route: the router and the OpenAPI document come from here.
fn documented_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(sms::list_sms, sms::create_sms))
        .routes(routes!(sms::get_sms))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
}

/// The OpenAPI document as served at `/openapi.json`: generated from the
/// handlers, then given the exact input rules the handlers apply.
pub fn openapi_document(config: &ApiSettings) -> serde_json::Value {
    document(documented_routes().into_openapi(), config)
}

fn document(generated: utoipa::openapi::OpenApi, config: &ApiSettings) -> serde_json::Value {
    let mut document = serde_json::to_value(generated).unwrap_or_default();
    openapi::exact_input(&mut document, config);
    document
}

/// The routes with their middleware. `callbacks` are a provider's own routes
/// (under `/callbacks/<name>`); they authenticate their callers themselves.
pub fn router(state: ApiState, config: &ApiSettings, callbacks: Router) -> Router {
    let (router, generated) = documented_routes().split_for_parts();
    let openapi = Arc::new(document(generated, config));
    router
        .route(
            "/openapi.json",
            get(move || async move { Json(openapi.as_ref().clone()) }),
        )
        .fallback(|| async { ApiError::not_found("No such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "error.msg.method.not.allowed",
                "Method not allowed on this route",
            )
        })
        .with_state(state)
        .merge(callbacks)
        .layer(axum::middleware::from_fn_with_state(
            config.request_timeout,
            time_limit,
        ))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("API handler panicked");
            ApiError::internal().into_response()
        }))
        // Outside the rest, so that timeouts and panics are counted too.
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
        ]))
}

/// Answers 503 in the error shape, with `Retry-After`, when a request takes longer than `limit`.
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit = ?limit, "API request exceeded api.request_timeout");
            ApiError::timed_out().into_response()
        }
    }
}

/// Serves until `stop`, then lets requests in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: server::ConnectionLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    server::serve(listener, router, limits, stop).await
}
