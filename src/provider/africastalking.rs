//! Africa's Talking: one form POST per message to `/version1/messaging`, and
//! its delivery reports (form POSTs of `id`, `status`, `failureReason`) on
//! `/callbacks/africastalking`.
//!
//! A report names the message only by Africa's Talking's `messageId`, so the
//! route finds our message and attempt through the store
//! ([`crate::store::Reports::attempt_by_provider_message_id`]). Africa's
//! Talking does not sign reports: the callback URL registered in its
//! dashboard carries our secret.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::callback::{self, check_callback_secret, parse_http_url, sanitized, secret_matches};
use super::checks;
use super::webhook::{request_failed_at, retry_after};
use super::{
    CallbackContext, OutboundSms, Provider, ProviderInstance, ProviderSection, SendLimits,
    SendOutcome, Unavailable,
};
use crate::config::{ConfigError, invalid};
use crate::domain::report::{DeliveryReport, ReportOutcome};
use crate::secrets::{Secret, resolve_secret};

/// The live API; the sandbox is `https://api.sandbox.africastalking.com` (username `sandbox`).
pub const DEFAULT_BASE_URL: &str = "https://api.africastalking.com";

/// `[provider.africastalking]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AfricasTalkingSettings {
    /// The application's username (`sandbox` on the sandbox).
    pub username: String,
    /// Sent as the `apiKey` header.
    pub api_key: Option<Secret>,
    /// Name of a systemd credential holding the API key.
    pub api_key_credential: Option<String>,
    /// Registered sender id or short code; unset: Africa's Talking's shared default.
    pub from: Option<String>,
    pub base_url: String,
    /// Checked on every delivery report: register
    /// `https://<public host>/callbacks/africastalking?secret=<it>` as the
    /// delivery reports URL. Unset: the report route is not served.
    pub callback_secret: Option<Secret>,
    /// Name of a systemd credential holding the callback secret.
    pub callback_secret_credential: Option<String>,
    /// Segments per second this instance sends at most (a 3-part message costs 3); unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// Requests to this provider in flight at once at most; unset: only `dispatch.concurrency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl Default for AfricasTalkingSettings {
    fn default() -> Self {
        Self {
            username: String::new(),
            api_key: None,
            api_key_credential: None,
            from: None,
            base_url: DEFAULT_BASE_URL.into(),
            callback_secret: None,
            callback_secret_credential: None,
            rate_limit: None,
            max_in_flight: None,
        }
    }
}

impl AfricasTalkingSettings {
    /// Checks the settings without reading credentials; errors name the key.
    pub fn check(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        let k = |field: &str| instance.key(field);
        if self.username.trim().is_empty() {
            return Err(invalid(
                k("username"),
                "is required (the application's username; `sandbox` on the sandbox)",
            ));
        }
        checks::require_secret(instance, "api_key", &self.api_key, &self.api_key_credential)?;
        checks::optional_sender(instance, &self.from, "the shared default sender")?;
        let base = parse_http_url(&k("base_url"), &self.base_url)?;
        if base.query().is_some() {
            return Err(invalid(k("base_url"), "must not carry a query string"));
        }
        if let Some(secret) = &self.callback_secret {
            check_callback_secret(&k("callback_secret"), secret)?;
        }
        Ok(())
    }
}

impl ProviderSection for AfricasTalkingSettings {
    fn validate(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        self.check(instance)
    }

    fn build(&self, instance: &ProviderInstance) -> Result<Arc<dyn Provider>, ConfigError> {
        Ok(Arc::new(AfricasTalkingProvider::from_settings(
            self, instance,
        )?))
    }

    /// Reports are asked for when their callback is configured.
    fn sends_reports(&self) -> bool {
        self.callback_secret.is_some() || self.callback_secret_credential.is_some()
    }

    fn limits(&self) -> SendLimits {
        SendLimits {
            rate_limit: self.rate_limit,
            max_in_flight: self.max_in_flight,
        }
    }
}

/// Sends through Africa's Talking's SMS API.
pub struct AfricasTalkingProvider {
    name: String,
    client: reqwest::Client,
    send_url: reqwest::Url,
    username: String,
    api_key: Secret,
    from: Option<String>,
    callback_secret: Option<Secret>,
}

impl AfricasTalkingProvider {
    /// Builds the provider, reading credentials; `timeout` bounds each request.
    pub fn from_settings(
        settings: &AfricasTalkingSettings,
        instance: &ProviderInstance,
    ) -> Result<Self, ConfigError> {
        settings.check(instance)?;
        let k = |field: &str| instance.key(field);
        let api_key = resolve_secret(
            &k("api_key_credential"),
            settings.api_key.as_ref(),
            settings.api_key_credential.as_deref(),
        )?
        .ok_or_else(|| invalid(k("api_key"), "is required"))?;
        let callback_secret = resolve_secret(
            &k("callback_secret_credential"),
            settings.callback_secret.as_ref(),
            settings.callback_secret_credential.as_deref(),
        )?;
        if let Some(secret) = &callback_secret {
            check_callback_secret(&k("callback_secret_credential"), secret)?;
        }
        let send_url = parse_http_url(
            &k("base_url"),
            &format!(
                "{}/version1/messaging",
                settings.base_url.trim_end_matches('/')
            ),
        )?;
        let client = reqwest::Client::builder()
            .timeout(instance.timeout)
            .connect_timeout(instance.timeout.min(Duration::from_secs(5)))
            // A redirected POST would silently become a GET: treat it as a failure instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("smsrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(k("base_url"), format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            name: instance.name.clone(),
            client,
            send_url,
            username: settings.username.clone(),
            api_key,
            from: settings.from.clone(),
            callback_secret,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendReply {
    #[serde(rename = "SMSMessageData")]
    data: Option<MessageData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MessageData {
    /// A summary such as `Sent to 1/1 Total Cost: KES 0.8000`, or an error
    /// word such as `InvalidSenderId` when no recipient was tried.
    message: Option<String>,
    #[serde(default)]
    recipients: Vec<Recipient>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    status_code: Option<u32>,
    status: Option<String>,
    message_id: Option<String>,
}

#[async_trait]
impl Provider for AfricasTalkingProvider {
    fn name(&self) -> &str {
        &self.name
    }

    /// `POST /callbacks/<name>`: Africa's Talking's delivery reports, when a secret is set.
    fn callback_routes(&self, context: &CallbackContext) -> Option<axum::Router> {
        let secret = self.callback_secret.clone()?;
        let state = ReportState {
            context: context.clone(),
            secret,
            provider: self.name.clone(),
        };
        Some(
            axum::Router::new()
                .route("/", axum::routing::post(report))
                .with_state(state),
        )
    }

    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome {
        let mut form: Vec<(&str, &str)> = vec![
            ("username", &self.username),
            ("to", sms.to.as_str()),
            ("message", sms.message),
        ];
        if let Some(from) = &self.from {
            form.push(("from", from));
        }
        let request = self
            .client
            .post(self.send_url.clone())
            .header("apiKey", self.api_key.expose())
            .header("Accept", "application/json")
            .form(&form);
        let response = match request.send().await {
            Ok(response) => response,
            // No idempotency key: after a timeout the message may exist.
            Err(e) => return request_failed_at("Africa's Talking: ", &e),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return classify_http(status, retry_after);
        }
        let Some(data) = serde_json::from_slice::<SendReply>(&body)
            .ok()
            .and_then(|r| r.data)
        else {
            return unexpected(status, "the reply is not Africa's Talking's JSON");
        };
        match data.recipients.into_iter().next() {
            Some(r) => classify_recipient(
                status,
                r.status_code,
                r.status.as_deref().unwrap_or(""),
                r.message_id,
            ),
            // No recipient tried: the summary names why (a sender id refused, say).
            None => {
                let why = sanitized(data.message.as_deref().unwrap_or(""));
                if why.contains("InvalidSenderId") {
                    configuration(status, &why, "check provider.africastalking.from")
                } else {
                    unexpected(status, &format!("no recipient in the reply ({why})"))
                }
            }
        }
    }
}

/// A 2xx reply we cannot read as an acceptance: retried, not counted as sent.
fn unexpected(status: u16, what: &str) -> SendOutcome {
    SendOutcome::Transient {
        error: format!(
            "Africa's Talking gave an unexpected answer, not counted as accepted (HTTP {status}): {what}"
        ),
        http_status: Some(status),
        retry_after: None,
    }
}

fn configuration(status: u16, code: &str, hint: &str) -> SendOutcome {
    SendOutcome::ProviderUnavailable {
        error: format!(
            "Africa's Talking configuration problem, not the message's: {code} (HTTP {status}); {hint}"
        ),
        http_status: Some(status),
        cause: Unavailable::Configuration,
    }
}

/// Maps one recipient's `statusCode` (HTTP 201 can still carry a failure).
pub fn classify_recipient(
    http: u16,
    code: Option<u32>,
    status: &str,
    message_id: Option<String>,
) -> SendOutcome {
    let http_status = Some(http);
    let word = sanitized(status);
    let Some(code) = code else {
        return unexpected(http, "no statusCode for the recipient");
    };
    let what = format!("statusCode {code} {word} (HTTP {http})");
    match code {
        100..=102 => SendOutcome::Accepted {
            provider_message_id: message_id
                .filter(|id| !id.is_empty() && id != "None")
                .map(|id| id.chars().take(200).collect()),
            http_status,
        },
        401 => configuration(
            http,
            &format!("statusCode 401 {word}"),
            "the account is on risk hold",
        ),
        402 => configuration(
            http,
            &format!("statusCode 402 {word}"),
            "check provider.africastalking.from",
        ),
        405 => configuration(
            http,
            &format!("statusCode 405 {word}"),
            "top up the account",
        ),
        406 => SendOutcome::opted_out(
            format!("Africa's Talking {what}: the recipient is in the blacklist"),
            http_status,
        ),
        403 | 404 | 407 | 409 => SendOutcome::Permanent {
            error: format!("Africa's Talking refused the message: {what}"),
            http_status,
        },
        _ => SendOutcome::Transient {
            error: format!("Africa's Talking could not send now: {what}"),
            http_status,
            retry_after: None,
        },
    }
}

/// Maps a non-2xx reply; its plain-text body may echo the request and is never quoted.
pub fn classify_http(status: u16, retry_after: Option<Duration>) -> SendOutcome {
    match status {
        401 | 403 => configuration(
            status,
            "authentication refused",
            "check provider.africastalking.username and api_key",
        ),
        404 | 405 | 300..=399 => configuration(
            status,
            "no such endpoint",
            "check provider.africastalking.base_url",
        ),
        408 | 429 | 500..=599 => SendOutcome::Transient {
            error: format!("Africa's Talking answered HTTP {status}"),
            http_status: Some(status),
            retry_after,
        },
        400..=499 => SendOutcome::Permanent {
            error: format!("Africa's Talking refused the message: HTTP {status}"),
            http_status: Some(status),
        },
        _ => SendOutcome::Transient {
            error: format!("Africa's Talking answered HTTP {status}"),
            http_status: Some(status),
            retry_after,
        },
    }
}

/// What the report route needs.
#[derive(Clone)]
struct ReportState {
    context: CallbackContext,
    secret: Secret,
    provider: String,
}

#[derive(Deserialize)]
struct SecretQuery {
    secret: Option<String>,
}

/// What a report's `status` means: `Success` delivered, `Failed` / `Rejected`
/// undelivered; `Sent`, `Submitted`, `Buffered` are on the way.
pub fn report_outcome(status: &str) -> Option<ReportOutcome> {
    match status {
        "Success" => Some(ReportOutcome::Delivered),
        "Failed" | "Rejected" => Some(ReportOutcome::Undelivered),
        _ => None,
    }
}

/// One delivery report. 403 without the secret; 400 without `id` and
/// `status`; 503 while the database is down; 200 otherwise, unknown messages
/// included. Only Africa's Talking's id names the message, and it is stored
/// with the send's outcome: a report that comes before that cannot be matched
/// and is answered as unknown (nothing changes; the message stays `sent` and
/// `smsrelay_reports_overdue` counts it once `[provider] report_window` passes).
async fn report(
    axum::extract::State(state): axum::extract::State<ReportState>,
    axum::extract::Query(query): axum::extract::Query<SecretQuery>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    if !secret_matches(query.secret.as_deref().unwrap_or(""), &state.secret) {
        return (StatusCode::FORBIDDEN, "bad or missing secret\n");
    }
    let params: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&body).into_owned().collect();
    let (Some(id), Some(status)) = (params.get("id"), params.get("status")) else {
        return (StatusCode::BAD_REQUEST, "id and status are required\n");
    };
    let Some(outcome) = report_outcome(status) else {
        return (StatusCode::OK, "intermediate status, nothing to change\n");
    };
    let attempt = state
        .context
        .store
        .attempt_by_provider_message_id(&state.provider, id)
        .await;
    let (sms_id, attempt) = match attempt {
        Ok(Some(found)) => found,
        // An id we never recorded (another application on the account, or a
        // send whose outcome is not written yet): nothing to change.
        Ok(None) => return (StatusCode::OK, "unknown message, nothing to change\n"),
        Err(e) => {
            tracing::warn!(provider = %state.provider, error = %e, "delivery report not stored");
            return callback::answer(callback::Applied { retry: true });
        }
    };
    let mut reason = format!("{} status {}", state.provider, sanitized(status));
    let failure = sanitized(params.get("failureReason").map_or("", String::as_str));
    if !failure.is_empty() {
        reason.push_str(&format!(", failureReason {failure}"));
    }
    let report = DeliveryReport {
        sms_id,
        attempt,
        outcome,
        reason,
    };
    callback::answer(callback::apply(&*state.context.store, &state.provider, &report).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> ProviderInstance {
        ProviderInstance {
            name: "africastalking".into(),
            timeout: Duration::from_secs(5),
        }
    }

    fn settings() -> AfricasTalkingSettings {
        AfricasTalkingSettings {
            username: "bank".into(),
            api_key: Some(Secret::new("key")),
            callback_secret: Some(Secret::new("0123456789abcdef")),
            ..AfricasTalkingSettings::default()
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        type Change = fn(&mut AfricasTalkingSettings);
        let cases: [(Change, &str); 5] = [
            (
                |s| s.username = "".into(),
                "provider.africastalking.username",
            ),
            (|s| s.api_key = None, "provider.africastalking.api_key"),
            (|s| s.from = Some("".into()), "provider.africastalking.from"),
            (
                |s| s.base_url = "api.africastalking.com".into(),
                "provider.africastalking.base_url",
            ),
            (
                |s| s.callback_secret = Some(Secret::new("short")),
                "provider.africastalking.callback_secret",
            ),
        ];
        for (change, key) in cases {
            let mut s = settings();
            change(&mut s);
            match s.check(&instance()) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        settings().check(&instance()).unwrap();
    }
}
