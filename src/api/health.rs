//! Liveness and readiness, without authentication.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
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
pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Health>) {
    match state.store.ready().await {
        Ok(true) => (StatusCode::OK, Json(Health { status: "ready" })),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not migrated",
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unreachable",
                }),
            )
        }
    }
}
