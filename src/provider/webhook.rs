//! `[provider.webhook]`: POSTs each message as JSON to a URL of the operator's
//! choosing, or sends the body of its request template (`body`, `method`,
//! `content_type`) for in-house gateways that want their own shape.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use serde::{Deserialize, Serialize};

use super::template::{Encoding, Template, Values};
use super::{
    OutboundSms, Provider, ProviderInstance, ProviderSection, SendLimits, SendOutcome, Unavailable,
};
use crate::config::{ConfigError, invalid};
use crate::secrets::{Secret, resolve_secret};

/// `[provider.webhook]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer ...` when set.
    pub token: Option<Secret>,
    /// Name of a systemd credential holding the token.
    pub token_credential: Option<String>,
    /// A request template for in-house gateways: the body, with
    /// placeholders; unset: the default JSON `{"id", "to", "message"}`.
    pub body: Option<String>,
    /// With `body`: `POST` (default), `PUT` or `PATCH`.
    pub method: Option<String>,
    /// With `body`: `application/json` (default) or
    /// `application/x-www-form-urlencoded`; placeholders are escaped for it.
    pub content_type: Option<String>,
    /// Segments per second this instance sends at most (a 3-part message costs 3); unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// Requests to this provider in flight at once at most; unset: only `dispatch.concurrency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// A parsed request template: method, content type and body.
#[derive(Debug, Clone)]
struct RequestTemplate {
    method: reqwest::Method,
    content_type: String,
    body: Template,
}

impl WebhookSettings {
    /// The URL, required and http(s).
    fn parsed_url(&self, instance: &ProviderInstance) -> Result<reqwest::Url, ConfigError> {
        let key = instance.key("url");
        let url = self.url.as_deref().ok_or_else(|| {
            invalid(
                &key,
                format!("is required when provider.kind = \"{}\"", instance.name),
            )
        })?;
        let parsed =
            reqwest::Url::parse(url).map_err(|e| invalid(&key, format!("is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(key, "must be an http or https URL"));
        }
        Ok(parsed)
    }
}

impl WebhookSettings {
    /// The request template, when `body` is set; `method` and
    /// `content_type` without a `body` are refused.
    fn template(
        &self,
        instance: &ProviderInstance,
    ) -> Result<Option<RequestTemplate>, ConfigError> {
        let Some(body) = &self.body else {
            for (field, value) in [
                ("method", &self.method),
                ("content_type", &self.content_type),
            ] {
                if value.is_some() {
                    return Err(invalid(
                        instance.key(field),
                        format!(
                            "applies to a request template: set {} too (without it the default JSON request is sent)",
                            instance.key("body")
                        ),
                    ));
                }
            }
            return Ok(None);
        };
        let method = match self.method.as_deref().unwrap_or("POST") {
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            _ => {
                return Err(invalid(
                    instance.key("method"),
                    "must be POST, PUT or PATCH",
                ));
            }
        };
        let content_type = self
            .content_type
            .clone()
            .unwrap_or_else(|| "application/json".to_owned());
        if reqwest::header::HeaderValue::from_str(&content_type).is_err() {
            return Err(invalid(
                instance.key("content_type"),
                "is not a valid header value",
            ));
        }
        let encoding = Encoding::of(&content_type).ok_or_else(|| {
            invalid(
                instance.key("content_type"),
                "must be application/json or application/x-www-form-urlencoded (placeholders are escaped for it)",
            )
        })?;
        let body = Template::parse(&instance.key("body"), body, encoding)?;
        Ok(Some(RequestTemplate {
            method,
            content_type,
            body,
        }))
    }
}

impl ProviderSection for WebhookSettings {
    fn validate(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        self.parsed_url(instance)?;
        self.template(instance).map(|_| ())
    }

    fn build(&self, instance: &ProviderInstance) -> Result<Arc<dyn Provider>, ConfigError> {
        Ok(Arc::new(WebhookProvider::from_settings(self, instance)?))
    }

    fn limits(&self) -> SendLimits {
        SendLimits {
            rate_limit: self.rate_limit,
            max_in_flight: self.max_in_flight,
        }
    }
}

/// `{"id", "to", "message"}` with an `Idempotency-Key` header.
pub struct WebhookProvider {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    token: Option<Secret>,
    template: Option<RequestTemplate>,
}

#[derive(serde::Serialize)]
struct Body<'a> {
    id: i64,
    to: &'a str,
    message: &'a str,
}

#[derive(serde::Deserialize)]
struct Reply {
    id: Option<serde_json::Value>,
}

impl WebhookProvider {
    /// Builds the provider from its section; reads the token credential, if named.
    pub fn from_settings(
        settings: &WebhookSettings,
        instance: &ProviderInstance,
    ) -> Result<Self, ConfigError> {
        let url = settings.parsed_url(instance)?;
        let template = settings.template(instance)?;
        let client = reqwest::Client::builder()
            .timeout(instance.timeout)
            .connect_timeout(instance.timeout.min(Duration::from_secs(5)))
            // A redirected POST would silently become a GET: treat it as a failure instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("smsrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                invalid(
                    instance.key("url"),
                    format!("cannot build HTTP client: {e}"),
                )
            })?;
        let token = resolve_secret(
            &instance.key("token_credential"),
            settings.token.as_ref(),
            settings.token_credential.as_deref(),
        )?;
        Ok(Self {
            name: instance.name.clone(),
            client,
            url,
            token,
            template,
        })
    }
}

#[async_trait]
impl Provider for WebhookProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome {
        let mut request = match &self.template {
            None => self.client.post(self.url.clone()).json(&Body {
                id: sms.id,
                to: sms.to.as_str(),
                message: sms.message,
            }),
            Some(t) => self
                .client
                .request(t.method.clone(), self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, &t.content_type)
                .body(t.body.render(&Values {
                    to: sms.to.as_str(),
                    message: sms.message,
                    id: sms.id,
                    attempt: sms.attempt,
                    idempotency_key: &sms.idempotency_key(),
                })),
        };
        // Stable per message: a receiver can drop the duplicate of a retried send.
        request = request.header("Idempotency-Key", sms.idempotency_key());
        // Which attempt this is (1 for the first send): a receiver can tell a retry from a first send.
        request = request.header("X-Smsrelay-Attempt", sms.attempt.to_string());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return request_failed(&e),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if status.is_success() {
            // The reply body is optional; a provider id is a bonus, not a requirement.
            let provider_message_id = response
                .json::<Reply>()
                .await
                .ok()
                .and_then(|reply| reply.id)
                .and_then(|id| match id {
                    serde_json::Value::String(s) if !s.is_empty() => Some(s),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .map(|id| id.chars().take(200).collect());
            return SendOutcome::Accepted {
                provider_message_id,
                http_status: Some(status.as_u16()),
            };
        }
        classify_failure(status, retry_after)
    }
}

/// Maps a non-2xx status to an outcome. The body is never quoted: it may echo the number or text.
pub fn classify_failure(status: StatusCode, retry_after: Option<Duration>) -> SendOutcome {
    let code = status.as_u16();
    // The token was refused, or the one URL we post to is not there: no
    // message is at fault, and every other one would get the same answer.
    if matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    ) {
        return SendOutcome::ProviderUnavailable {
            error: format!(
                "webhook configuration problem, not the message's: HTTP {code}; check provider.webhook.url and token"
            ),
            http_status: Some(code),
            cause: Unavailable::Configuration,
        };
    }
    let transient = status.is_server_error()
        || status.is_redirection()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    if transient {
        SendOutcome::Transient {
            error: format!("provider answered HTTP {code}"),
            http_status: Some(code),
            retry_after,
        }
    } else {
        SendOutcome::Permanent {
            error: format!("provider refused the message: HTTP {code}"),
            http_status: Some(code),
        }
    }
}

/// A request that got no answer. Failing to connect (or to build the
/// request) means nothing was written: an ordinary transient failure. Any
/// other error (the whole-request timeout, a connection reset) may come after
/// the provider received the message: its outcome is unknown.
pub fn request_failed(error: &reqwest::Error) -> SendOutcome {
    request_failed_at("", error)
}

/// [`request_failed`], with `prefix` (the provider, say) before the error.
pub fn request_failed_at(prefix: &str, error: &reqwest::Error) -> SendOutcome {
    if error.is_connect() || error.is_builder() {
        SendOutcome::Transient {
            error: format!("{prefix}{}", describe_request_error(error)),
            http_status: None,
            retry_after: None,
        }
    } else {
        SendOutcome::Unknown {
            error: format!(
                "{prefix}{}; the provider may have received it",
                describe_request_error(error)
            ),
        }
    }
}

/// A request error, without the URL (it may carry a secret).
pub fn describe_request_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "request timed out"
    } else if error.is_connect() {
        "could not connect to provider"
    } else if error.is_body() || error.is_decode() {
        "provider connection broke mid-reply"
    } else {
        "request to provider failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, &format)
        .ok()?
        .assume_utc();
    let wait = at - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn statuses_are_classified() {
        for code in [408, 429, 500, 502, 503] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(
                    classify_failure(status, None),
                    SendOutcome::Transient { .. }
                ),
                "{code}"
            );
        }
        for code in [400, 410, 422] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(
                    classify_failure(status, None),
                    SendOutcome::Permanent { .. }
                ),
                "{code}"
            );
        }
        // Our credentials or URL, not the message: the provider is unavailable.
        for code in [401, 403, 404] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(
                    classify_failure(status, None),
                    SendOutcome::ProviderUnavailable {
                        cause: Unavailable::Configuration,
                        ..
                    }
                ),
                "{code}"
            );
        }
    }

    fn instance() -> ProviderInstance {
        ProviderInstance {
            name: "webhook".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn its_section_is_checked_under_its_own_keys() {
        let missing = WebhookSettings::default()
            .validate(&instance())
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "config key `provider.webhook.url`: is required when provider.kind = \"webhook\""
        );
        let ftp = WebhookSettings {
            url: Some("ftp://gateway.example/sms".into()),
            ..WebhookSettings::default()
        };
        assert_eq!(
            ftp.validate(&instance()).unwrap_err().to_string(),
            "config key `provider.webhook.url`: must be an http or https URL"
        );
        let good = WebhookSettings {
            url: Some("https://gateway.example/sms".into()),
            ..WebhookSettings::default()
        };
        good.validate(&instance()).unwrap();
        assert_eq!(good.build(&instance()).unwrap().name(), "webhook");
    }

    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
