//! Reading a JSON object body: every refusal uses the API's error shape and names the field.
//!
//! Handlers call [`read_json`] after authorization, so a caller without the
//! scope never learns whether its body would have been accepted.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Reads the body as one JSON object of type `T`, within `timeout`.
pub async fn read_json<T: DeserializeOwned>(
    request: Request,
    timeout: Duration,
) -> Result<T, ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "error.msg.unsupported.media.type",
            "The body must be JSON (Content-Type: application/json)",
        ));
    }
    let body = tokio::time::timeout(timeout, Bytes::from_request(request, &()))
        .await
        .map_err(|_| ApiError::body_timed_out())?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "error.msg.request.too.large",
                    "The body is larger than api.body_limit allows",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "error.msg.invalid.request.body",
                    "The body could not be read",
                )
            }
        })?;
    // serde would read a struct from an array too (`["text", null, 1]`): objects only.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::parameter(
            "body",
            None,
            "the body must be a JSON object",
        ));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(&body);
    let value = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::parameter(
                "body",
                None,
                format!(
                    "malformed JSON at line {} column {}",
                    inner.line(),
                    inner.column()
                ),
            );
        }
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        // A path like "[0]" means the body is not an object at all.
        let parameter =
            unknown_field(&message).unwrap_or(if path == "." || path.starts_with('[') {
                "body".into()
            } else {
                path
            });
        // serde quotes the refused value ("invalid type: string \"+2547...\""), which may be
        // personal data: keep only what was expected.
        let message = match message.split_once(", expected ") {
            Some((_, expected)) if message.starts_with("invalid") => {
                format!("{parameter} has the wrong type or value: expected {expected}")
            }
            _ => message,
        };
        ApiError::parameter(&parameter, None, message)
    })?;
    Ok(value)
}

/// The field named by serde's "unknown field `x`" / "missing field `x`" messages.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next().map(str::to_owned)
}
