//! What the delivery-report routes of providers that do not sign their
//! callbacks (Kannel, Infobip, Africa's Talking) share: a secret carried in
//! the callback URL, compared in constant time, and one way of answering once
//! a report is applied.

use axum::http::StatusCode;
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, invalid};
use crate::domain::report::DeliveryReport;
use crate::secrets::Secret;
use crate::store::Store;

/// Shortest accepted callback secret: it is the only thing authenticating a report.
pub const MIN_SECRET_LEN: usize = 16;

/// The secret travels inside a URL (where Kannel also substitutes `%`
/// escapes): keep it to characters that never need encoding.
pub fn check_callback_secret(key: &str, secret: &Secret) -> Result<(), ConfigError> {
    let value = secret.expose();
    let url_safe = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    if value.len() < MIN_SECRET_LEN || !url_safe {
        return Err(invalid(
            key,
            format!(
                "must be at least {MIN_SECRET_LEN} characters of A-Z a-z 0-9 - _ . ~ (e.g. from `openssl rand -hex 16`)"
            ),
        ));
    }
    Ok(())
}

/// Whether `given` is the secret, compared in constant time; an empty one never is.
pub fn secret_matches(given: &str, secret: &Secret) -> bool {
    let same: bool = given.as_bytes().ct_eq(secret.expose().as_bytes()).into();
    !given.is_empty() && same
}

/// An http(s) URL with a host, or an error naming `key`.
pub fn parse_http_url(key: &str, value: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(value).map_err(|e| invalid(key, format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(key, "must be an http or https URL with a host"));
    }
    Ok(url)
}

/// A provider's status word or code, safe to store in an event reason:
/// letters, digits, `_`, `-` and spaces only, at most 60 characters.
pub fn sanitized(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .take(60)
        .collect()
}

/// How a batch of reports went, for the HTTP answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The database refused or could not be reached: the provider must send
    /// the batch again. (A report that comes before the send's outcome is
    /// kept by the store and needs no retry.)
    pub retry: bool,
}

/// Applies one report; logs what it did, never the number.
pub async fn apply(store: &dyn Store, provider: &str, report: &DeliveryReport) -> Applied {
    match store.apply_delivery_report(report).await {
        Ok(applied) => {
            tracing::info!(
                provider,
                sms_id = report.sms_id,
                attempt = report.attempt,
                ?applied,
                "delivery report"
            );
            Applied::default()
        }
        Err(e) => {
            tracing::warn!(provider, sms_id = report.sms_id, error = %e, "delivery report not stored");
            Applied { retry: true }
        }
    }
}

/// 200 once every report is committed (kept early ones and unknown messages
/// included, so that the provider stops retrying them); 503 when one must come again.
pub fn answer(applied: Applied) -> (StatusCode, &'static str) {
    if applied.retry {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not stored (the database is down); try again\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_compared_whole() {
        let secret = Secret::new("0123456789abcdef");
        assert!(secret_matches("0123456789abcdef", &secret));
        assert!(!secret_matches("0123456789abcde", &secret));
        assert!(!secret_matches("0123456789abcdeF", &secret));
        assert!(!secret_matches("", &Secret::new("")));
    }

    #[test]
    fn sanitized_values_keep_only_plain_words() {
        assert_eq!(
            sanitized("UNDELIVERABLE_NOT_DELIVERED"),
            "UNDELIVERABLE_NOT_DELIVERED"
        );
        assert_eq!(sanitized("a\nb;<script>"), "abscript");
    }
}
