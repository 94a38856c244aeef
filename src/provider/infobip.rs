//! Infobip: one JSON POST per message to `/sms/2/text/advanced`, and its
//! delivery reports (JSON `results[]`) on `/callbacks/infobip`.
//!
//! `/sms/2/text/advanced` rather than `/sms/3/messages`: it is the shape
//! PROVIDERS.md documents field by field (`messages[].destinations[].to`,
//! `text`, `notifyUrl`, `callbackData`), and its reply and reports carry the
//! same status object. Our message id and attempt travel in `callbackData`,
//! which Infobip returns in the report, so a report needs no lookup.

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

/// Infobip's shared API host; an account's own base URL (`xyz.api.infobip.com`) works too.
pub const DEFAULT_BASE_URL: &str = "https://api.infobip.com";

/// `[provider.infobip]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InfobipSettings {
    /// The account's API base URL, from Infobip's portal.
    pub base_url: String,
    /// Sent as `Authorization: App <api_key>`.
    pub api_key: Option<Secret>,
    /// Name of a systemd credential holding the API key.
    pub api_key_credential: Option<String>,
    /// Sender id or number; unset: the account's default sender.
    pub from: Option<String>,
    /// Public base URL of this daemon's API: reports are requested at
    /// `{notify_url}/callbacks/infobip`; unset: no reports.
    pub notify_url: Option<String>,
    /// Carried in the report URL and checked on every report.
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

impl Default for InfobipSettings {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            api_key: None,
            api_key_credential: None,
            from: None,
            notify_url: None,
            callback_secret: None,
            callback_secret_credential: None,
            rate_limit: None,
            max_in_flight: None,
        }
    }
}

impl InfobipSettings {
    /// Checks the settings without reading credentials; errors name the key.
    pub fn check(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        let k = |field: &str| instance.key(field);
        let base = parse_http_url(&k("base_url"), &self.base_url)?;
        if base.query().is_some() {
            return Err(invalid(k("base_url"), "must not carry a query string"));
        }
        checks::require_secret(instance, "api_key", &self.api_key, &self.api_key_credential)?;
        checks::optional_sender(instance, &self.from, "the account's default sender")?;
        checks::callback_base(
            instance,
            "notify_url",
            &self.notify_url,
            &self.callback_secret,
            &self.callback_secret_credential,
        )
    }
}

impl ProviderSection for InfobipSettings {
    fn validate(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        self.check(instance)
    }

    fn build(&self, instance: &ProviderInstance) -> Result<Arc<dyn Provider>, ConfigError> {
        Ok(Arc::new(InfobipProvider::from_settings(self, instance)?))
    }

    /// Reports are asked for when their callback is configured.
    fn sends_reports(&self) -> bool {
        self.notify_url.is_some()
    }

    fn limits(&self) -> SendLimits {
        SendLimits {
            rate_limit: self.rate_limit,
            max_in_flight: self.max_in_flight,
        }
    }
}

/// Sends through Infobip's SMS API.
pub struct InfobipProvider {
    name: String,
    client: reqwest::Client,
    send_url: reqwest::Url,
    api_key: Secret,
    from: Option<String>,
    /// `{notify_url}/callbacks/infobip` and the secret, when reports are wanted.
    reports: Option<(String, Secret)>,
}

impl InfobipProvider {
    /// Builds the provider, reading credentials; `timeout` bounds each request.
    pub fn from_settings(
        settings: &InfobipSettings,
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
        let send_url = parse_http_url(
            &k("base_url"),
            &format!(
                "{}/sms/2/text/advanced",
                settings.base_url.trim_end_matches('/')
            ),
        )?;
        let reports = match &settings.notify_url {
            None => None,
            Some(base) => {
                let key = k("callback_secret_credential");
                let secret = resolve_secret(
                    &key,
                    settings.callback_secret.as_ref(),
                    settings.callback_secret_credential.as_deref(),
                )?
                .ok_or_else(|| invalid(k("callback_secret"), "is required"))?;
                check_callback_secret(&key, &secret)?;
                let endpoint =
                    format!("{}/callbacks/{}", base.trim_end_matches('/'), instance.name);
                Some((endpoint, secret))
            }
        };
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
            api_key,
            from: settings.from.clone(),
            reports,
        })
    }
}

/// `{"messages": [one message]}`.
#[derive(Serialize)]
struct SendRequest<'a> {
    messages: [Message<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    destinations: [Destination; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notify_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notify_content_type: Option<&'static str>,
    callback_data: String,
}

#[derive(Serialize)]
struct Destination {
    to: String,
}

/// Infobip's status object, in send replies and reports.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusObject {
    pub group_id: Option<u32>,
    pub group_name: Option<String>,
    pub name: Option<String>,
}

/// Infobip's error object; `permanent` says whether a retry can ever succeed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorObject {
    pub name: Option<String>,
    pub permanent: Option<bool>,
}

#[derive(Deserialize)]
struct SendReply {
    #[serde(default)]
    messages: Vec<SentMessage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SentMessage {
    message_id: Option<String>,
    status: Option<StatusObject>,
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorReply {
    request_error: Option<RequestError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestError {
    service_exception: Option<ServiceException>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceException {
    /// A code such as `UNAUTHORIZED` or `BAD_REQUEST` (its `text` may quote the request: never kept).
    message_id: Option<String>,
}

/// Status group ids (Infobip's general status codes).
const PENDING: u32 = 1;
const UNDELIVERABLE: u32 = 2;
const DELIVERED: u32 = 3;
const EXPIRED: u32 = 4;
const REJECTED: u32 = 5;

/// REJECTED statuses that are our account's or setup's fault, not the message's.
const SETUP_REJECTIONS: &[&str] = &[
    "REJECTED_NOT_ENOUGH_CREDITS",
    "REJECTED_PREPAID_PACKAGE_EXPIRED",
    "REJECTED_SOURCE",
    "REJECTED_SENDER",
];

#[async_trait]
impl Provider for InfobipProvider {
    fn name(&self) -> &str {
        &self.name
    }

    /// `POST /callbacks/<name>`: Infobip's delivery reports, when requested.
    fn callback_routes(&self, context: &CallbackContext) -> Option<axum::Router> {
        let (_, secret) = self.reports.as_ref()?;
        let state = ReportState {
            context: context.clone(),
            secret: secret.clone(),
            provider: self.name.clone(),
        };
        Some(
            axum::Router::new()
                .route("/", axum::routing::post(reports))
                .with_state(state),
        )
    }

    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome {
        let body = SendRequest {
            messages: [Message {
                // Infobip takes the number in international form without the `+`.
                destinations: [Destination {
                    to: sms.to.as_str().trim_start_matches('+').to_owned(),
                }],
                from: self.from.as_deref(),
                text: sms.message,
                notify_url: self
                    .reports
                    .as_ref()
                    .map(|(endpoint, secret)| format!("{endpoint}?secret={}", secret.expose())),
                notify_content_type: self.reports.as_ref().map(|_| "application/json"),
                callback_data: callback_data(sms.id, sms.attempt),
            }],
        };
        let request = self
            .client
            .post(self.send_url.clone())
            .header("Authorization", format!("App {}", self.api_key.expose()))
            .header("Accept", "application/json")
            .json(&body);
        let response = match request.send().await {
            Ok(response) => response,
            // No idempotency key at Infobip: after a timeout the message may exist.
            Err(e) => return request_failed_at("Infobip: ", &e),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return match serde_json::from_slice::<SendReply>(&body) {
                Ok(reply) => match reply.messages.into_iter().next() {
                    Some(m) => classify_message(
                        status,
                        m.message_id,
                        &m.status.unwrap_or_default(),
                        m.error.as_ref(),
                    ),
                    None => unexpected(status, "no message in the reply"),
                },
                Err(_) => unexpected(status, "the reply is not Infobip's JSON"),
            };
        }
        let code = serde_json::from_slice::<ErrorReply>(&body)
            .ok()
            .and_then(|e| e.request_error)
            .and_then(|e| e.service_exception)
            .and_then(|e| e.message_id)
            .map(|code| sanitized(&code));
        classify_error(status, code.as_deref(), retry_after)
    }
}

/// What rides in `callbackData` and comes back in the report.
fn callback_data(sms_id: i64, attempt: u32) -> String {
    format!("sms_id={sms_id}&attempt={attempt}")
}

/// The message id and attempt of a report's `callbackData`.
fn parse_callback_data(data: &str) -> Option<(i64, u32)> {
    let mut sms_id = None;
    let mut attempt = None;
    for (name, value) in form_urlencoded::parse(data.as_bytes()) {
        match name.as_ref() {
            "sms_id" => sms_id = value.parse::<i64>().ok(),
            "attempt" => attempt = value.parse::<u32>().ok(),
            _ => {}
        }
    }
    Some((sms_id?, attempt?))
}

/// A 2xx reply we cannot read as an acceptance: retried, not counted as sent.
fn unexpected(status: u16, what: &str) -> SendOutcome {
    SendOutcome::Transient {
        error: format!(
            "Infobip gave an unexpected answer, not counted as accepted (HTTP {status}): {what}"
        ),
        http_status: Some(status),
        retry_after: None,
    }
}

/// Maps the status (and error, if any) Infobip gave one message in a 2xx reply.
pub fn classify_message(
    http: u16,
    message_id: Option<String>,
    status: &StatusObject,
    error: Option<&ErrorObject>,
) -> SendOutcome {
    let http_status = Some(http);
    let name = sanitized(status.name.as_deref().unwrap_or("no status name"));
    let group = status.group_id;
    let error_name = error
        .and_then(|e| e.name.as_deref())
        .map(sanitized)
        .filter(|n| !n.is_empty() && n != "NO_ERROR");
    let detail = match &error_name {
        Some(e) => format!("{name}, error {e} (HTTP {http})"),
        None => format!("{name} (HTTP {http})"),
    };
    let retry_can_succeed = error.and_then(|e| e.permanent) == Some(false);
    match group {
        Some(PENDING) | Some(DELIVERED) => SendOutcome::Accepted {
            provider_message_id: message_id
                .filter(|id| !id.is_empty())
                .map(|id| id.chars().take(200).collect()),
            http_status,
        },
        Some(REJECTED) if SETUP_REJECTIONS.contains(&name.as_str()) => {
            SendOutcome::ProviderUnavailable {
                error: format!(
                    "Infobip configuration problem, not the message's: {detail}; check the account's balance and provider.infobip.from"
                ),
                http_status,
                cause: Unavailable::Configuration,
            }
        }
        Some(REJECTED) if name == "REJECTED_FLOODING_FILTER" => SendOutcome::Transient {
            error: format!("Infobip asked to slow down: {detail}"),
            http_status,
            retry_after: None,
        },
        // Infobip's own `permanent: false` says a later try can succeed.
        Some(UNDELIVERABLE | EXPIRED | REJECTED) if retry_can_succeed => SendOutcome::Transient {
            error: format!("Infobip could not take the message now: {detail}"),
            http_status,
            retry_after: None,
        },
        Some(UNDELIVERABLE | EXPIRED | REJECTED) => SendOutcome::Permanent {
            error: format!("Infobip refused the message: {detail}"),
            http_status,
        },
        _ => unexpected(http, &format!("status {detail}")),
    }
}

/// Maps a non-2xx reply (`code`: the `serviceException` message id).
pub fn classify_error(
    status: u16,
    code: Option<&str>,
    retry_after: Option<Duration>,
) -> SendOutcome {
    let http_status = Some(status);
    let code = code.filter(|c| !c.is_empty()).unwrap_or("no code");
    let configuration = |what: &str| SendOutcome::ProviderUnavailable {
        error: format!(
            "Infobip configuration problem, not the message's: {what} (HTTP {status}, {code})"
        ),
        http_status,
        cause: Unavailable::Configuration,
    };
    match status {
        401 | 403 => configuration("the API key was refused; check provider.infobip.api_key"),
        404 | 405 | 300..=399 => configuration("no such endpoint; check provider.infobip.base_url"),
        408 | 429 | 500..=599 => SendOutcome::Transient {
            error: format!("Infobip answered HTTP {status} ({code})"),
            http_status,
            retry_after,
        },
        400..=499 => SendOutcome::Permanent {
            error: format!("Infobip refused the message: HTTP {status} ({code})"),
            http_status,
        },
        _ => SendOutcome::Transient {
            error: format!("Infobip answered HTTP {status} ({code})"),
            http_status,
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

/// Infobip's report body: up to 100 results at a time.
#[derive(Deserialize)]
struct ReportBody {
    results: Vec<ReportResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportResult {
    callback_data: Option<String>,
    status: Option<StatusObject>,
    error: Option<ErrorObject>,
}

/// What a report's status group means: DELIVERED is final and good;
/// UNDELIVERABLE, EXPIRED and REJECTED are final and bad; PENDING changes nothing.
pub fn report_outcome(group: Option<u32>) -> Option<ReportOutcome> {
    match group {
        Some(DELIVERED) => Some(ReportOutcome::Delivered),
        Some(UNDELIVERABLE | EXPIRED | REJECTED) => Some(ReportOutcome::Undelivered),
        _ => None,
    }
}

/// The event reason of one report: the status and error names, and whether
/// Infobip calls the error permanent. Nothing else of the report is kept.
fn report_reason(provider: &str, status: &StatusObject, error: Option<&ErrorObject>) -> String {
    let name = sanitized(status.name.as_deref().unwrap_or("unnamed"));
    let group = sanitized(status.group_name.as_deref().unwrap_or("no group"));
    let mut reason = format!("{provider} status {name} ({group})");
    if let Some(e) = error
        && let Some(error_name) = e.name.as_deref().map(sanitized)
        && !error_name.is_empty()
        && error_name != "NO_ERROR"
    {
        reason.push_str(&format!(", error {error_name}"));
        if let Some(permanent) = e.permanent {
            reason.push_str(if permanent {
                " (permanent)"
            } else {
                " (temporary)"
            });
        }
    }
    reason
}

/// One POST of reports. 403 without the secret; 400 for a body that is not
/// Infobip's JSON; 503 when the database is down (Infobip retries); 200
/// otherwise, results for unknown messages included, and reports that came
/// before their send's outcome (kept by the store until it is recorded).
async fn reports(
    axum::extract::State(state): axum::extract::State<ReportState>,
    axum::extract::Query(query): axum::extract::Query<SecretQuery>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    if !secret_matches(query.secret.as_deref().unwrap_or(""), &state.secret) {
        return (StatusCode::FORBIDDEN, "bad or missing secret\n");
    }
    let Ok(body) = serde_json::from_slice::<ReportBody>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected Infobip's JSON report {\"results\": [...]}\n",
        );
    };
    let mut applied = callback::Applied::default();
    for result in body.results {
        let status = result.status.unwrap_or_default();
        let Some(outcome) = report_outcome(status.group_id) else {
            continue;
        };
        // Not ours (sent by something else on the account): nothing to change.
        let Some((sms_id, attempt)) = result
            .callback_data
            .as_deref()
            .and_then(parse_callback_data)
        else {
            continue;
        };
        let report = DeliveryReport {
            sms_id,
            attempt,
            outcome,
            reason: report_reason(&state.provider, &status, result.error.as_ref()),
        };
        let one = callback::apply(&*state.context.store, &state.provider, &report).await;
        applied.retry |= one.retry;
    }
    callback::answer(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> ProviderInstance {
        ProviderInstance {
            name: "infobip".into(),
            timeout: Duration::from_secs(5),
        }
    }

    fn settings() -> InfobipSettings {
        InfobipSettings {
            api_key: Some(Secret::new("key")),
            notify_url: Some("https://sms.example.com".into()),
            callback_secret: Some(Secret::new("0123456789abcdef")),
            ..InfobipSettings::default()
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        type Change = fn(&mut InfobipSettings);
        let cases: [(Change, &str); 6] = [
            (
                |s| s.base_url = "api.infobip.com".into(),
                "provider.infobip.base_url",
            ),
            (|s| s.api_key = None, "provider.infobip.api_key"),
            (|s| s.from = Some(" ".into()), "provider.infobip.from"),
            (
                |s| s.notify_url = Some("https://sms.example.com/?a=1".into()),
                "provider.infobip.notify_url",
            ),
            (
                |s| s.callback_secret = None,
                "provider.infobip.callback_secret",
            ),
            (
                |s| s.callback_secret = Some(Secret::new("short")),
                "provider.infobip.callback_secret",
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

    #[test]
    fn callback_data_round_trips() {
        assert_eq!(parse_callback_data(&callback_data(77, 3)), Some((77, 3)));
        assert_eq!(parse_callback_data("sms_id=x&attempt=1"), None);
        assert_eq!(parse_callback_data("something else"), None);
    }
}
