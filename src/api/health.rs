//! Liveness and readiness, without authentication.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// ok, ready, unreachable or not migrated.
    pub status: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The database answers and every migration is applied.
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, description = "Database unreachable or not migrated", body = Health))
)]
pub async fn readyz(State(state): State<ApiState>) -> Response {
    let status = match state.store.ready().await {
        Ok(true) => return (StatusCode::OK, Json(Health { status: "ready" })).into_response(),
        Ok(false) => "not migrated",
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            "unreachable"
        }
    };
    // Like every 503 of this API: when to ask again.
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        Json(Health { status }),
    )
        .into_response()
}
