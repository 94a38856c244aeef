//! One error shape everywhere, in the platform's (Fineract's) style.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// What went wrong, for the developer calling the API.
    pub developer_message: String,
    /// The HTTP status, as a string (the platform's convention).
    pub http_status_code: String,
    /// A message fit for an end user.
    pub default_user_message: String,
    /// Key for translating the user message.
    pub user_message_globalisation_code: String,
    /// One entry per offending parameter or field.
    pub errors: Vec<ParameterError>,
}

/// One offending parameter or field.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParameterError {
    pub parameter_name: String,
    /// The value that was refused, when it is safe to echo (never a number or a message).
    pub value: Option<String>,
    pub developer_message: String,
    pub default_user_message: String,
    pub user_message_globalisation_code: String,
}

/// An API failure, rendered as [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub errors: Vec<ParameterError>,
    /// Seconds, for 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// 400 about one parameter.
    pub fn parameter(name: &str, value: Option<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        let code = "validation.msg.validation.errors.exist";
        Self {
            errors: vec![ParameterError {
                parameter_name: name.to_owned(),
                value,
                developer_message: message.clone(),
                default_user_message: message.clone(),
                user_message_globalisation_code: format!("validation.msg.sms.{name}.invalid"),
            }],
            ..Self::new(
                StatusCode::BAD_REQUEST,
                code,
                format!("Validation errors exist: {message}"),
            )
        }
    }

    /// The same parameter error with another status (e.g. 422).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "error.msg.not.authenticated",
            "Missing or invalid bearer token (Authorization: Bearer <token>)",
        )
    }

    pub fn forbidden(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "error.msg.not.authorized",
            format!("This token lacks the {scope} scope"),
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "error.msg.resource.not.found", what)
    }

    pub fn unavailable() -> Self {
        Self {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "error.msg.database.unavailable",
                "The database is unavailable; try again shortly",
            )
        }
    }

    /// 503 when a request takes longer than `api.request_timeout`.
    pub fn timed_out() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "error.msg.request.timeout",
                "The request took longer than api.request_timeout allows; try again shortly",
            )
        }
    }

    /// 503 when the database cut an API query off at `api.statement_timeout`.
    pub fn statement_timed_out() -> Self {
        Self {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "error.msg.database.statement.timeout",
                "The database query took longer than api.statement_timeout allows; narrow the filters or use cursor paging, or try again shortly",
            )
        }
    }

    /// 408 when the body does not arrive within `api.body_read_timeout`.
    pub fn body_timed_out() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "error.msg.request.body.timeout",
            "The body did not arrive within api.body_read_timeout",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error.msg.platform.server.side.error",
            "An unexpected error occurred; see the smsrelay log",
        )
    }

    /// The body this error renders as.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            developer_message: self.message.clone(),
            http_status_code: self.status.as_u16().to_string(),
            default_user_message: self.message.clone(),
            user_message_globalisation_code: self.code.to_owned(),
            errors: self.errors.clone(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_statement_timeout() {
            tracing::warn!("API query cut off at api.statement_timeout");
            ApiError::statement_timed_out()
        } else if e.is_transient() {
            tracing::warn!(error = %e, "API request failed: database unavailable");
            ApiError::unavailable()
        } else if let StoreError::Directory(_) = &e {
            // The database's text stays in the log (it names the query, never
            // the number); the caller learns only that the lookup failed.
            tracing::error!(error = %e, "directory lookup failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error.msg.directory.failed",
                "the recipient's mobile number could not be looked up; the server log has the details",
            )
        } else {
            tracing::error!(error = %e, "API request failed");
            ApiError::internal()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body may still be on its way: this connection cannot be reused.
            StatusCode::REQUEST_TIMEOUT => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
