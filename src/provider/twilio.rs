//! Twilio Programmable Messaging: one form POST per message to the Messages
//! resource, and the `X-Twilio-Signature` check for its status callbacks.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use std::sync::Arc;

use super::callback::parse_http_url;
use super::checks;
use super::webhook::{request_failed_at, retry_after};
use super::{
    CallbackContext, OutboundSms, Provider, ProviderInstance, ProviderSection, SendLimits,
    SendOutcome, Unavailable,
};
use crate::config::{ConfigError, invalid};
use crate::domain::report::{DeliveryReport, ReportOutcome};
use crate::secrets::{Secret, resolve_secret};

/// Twilio's API host; tests point `base_url` at a local server instead.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// `[provider.twilio]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioSettings {
    /// `AC...`, also the Basic auth user name.
    pub account_sid: String,
    pub auth_token: Option<Secret>,
    /// Name of a systemd credential holding the auth token.
    pub auth_token_credential: Option<String>,
    /// Sender number (E.164) or alphanumeric sender id; or set `messaging_service_sid`.
    pub from: Option<String>,
    /// `MG...`: let a Messaging Service pick the sender.
    pub messaging_service_sid: Option<String>,
    pub base_url: String,
    /// Public URL of this daemon's `/callbacks/twilio`, sent as `StatusCallback`.
    pub status_callback_url: Option<String>,
    /// Segments per second this instance sends at most (a 3-part message costs 3); unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// Requests to this provider in flight at once at most; unset: only `dispatch.concurrency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl Default for TwilioSettings {
    fn default() -> Self {
        Self {
            account_sid: String::new(),
            auth_token: None,
            auth_token_credential: None,
            from: None,
            messaging_service_sid: None,
            base_url: DEFAULT_BASE_URL.into(),
            status_callback_url: None,
            rate_limit: None,
            max_in_flight: None,
        }
    }
}

/// `prefix` followed by 32 hex digits, as Twilio's SIDs are.
fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl TwilioSettings {
    /// Checks the settings without reading credentials; errors name the key.
    pub fn check(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        let k = |field: &str| instance.key(field);
        if !is_sid(&self.account_sid, "AC") {
            return Err(invalid(
                k("account_sid"),
                "must be AC followed by 32 hex digits (the Account SID on Twilio's console)",
            ));
        }
        checks::require_secret(
            instance,
            "auth_token",
            &self.auth_token,
            &self.auth_token_credential,
        )?;
        match (&self.from, &self.messaging_service_sid) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    k("from"),
                    format!(
                        "set exactly one of {} and {}",
                        k("from"),
                        k("messaging_service_sid")
                    ),
                ));
            }
            (Some(from), None) if from.trim().is_empty() => {
                return Err(invalid(k("from"), "must not be empty"));
            }
            (None, Some(sid)) if !is_sid(sid, "MG") => {
                return Err(invalid(
                    k("messaging_service_sid"),
                    "must be MG followed by 32 hex digits",
                ));
            }
            _ => {}
        }
        parse_http_url(&k("base_url"), &self.base_url)?;
        if let Some(url) = &self.status_callback_url {
            let parsed = parse_http_url(&k("status_callback_url"), url)?;
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(invalid(
                    k("status_callback_url"),
                    "must not carry a query or fragment: smsrelay adds the message id and attempt",
                ));
            }
        }
        Ok(())
    }
}

/// Who the message is from: a number / sender id, or a Messaging Service.
enum Sender {
    From(String),
    MessagingService(String),
}

impl ProviderSection for TwilioSettings {
    fn validate(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        self.check(instance)
    }

    fn build(&self, instance: &ProviderInstance) -> Result<Arc<dyn Provider>, ConfigError> {
        Ok(Arc::new(TwilioProvider::from_settings(self, instance)?))
    }

    /// Reports are asked for when their callback is configured.
    fn sends_reports(&self) -> bool {
        self.status_callback_url.is_some()
    }

    fn limits(&self) -> SendLimits {
        SendLimits {
            rate_limit: self.rate_limit,
            max_in_flight: self.max_in_flight,
        }
    }
}

/// Sends through Twilio's Messages API.
pub struct TwilioProvider {
    name: String,
    client: reqwest::Client,
    messages_url: reqwest::Url,
    account_sid: String,
    auth_token: Secret,
    sender: Sender,
    status_callback_url: Option<String>,
}

impl TwilioProvider {
    /// Builds the provider, reading the token; `timeout` bounds each request.
    pub fn from_settings(
        settings: &TwilioSettings,
        instance: &ProviderInstance,
    ) -> Result<Self, ConfigError> {
        settings.check(instance)?;
        let k = |field: &str| instance.key(field);
        let timeout = instance.timeout;
        let auth_token = resolve_secret(
            &k("auth_token_credential"),
            settings.auth_token.as_ref(),
            settings.auth_token_credential.as_deref(),
        )?
        .ok_or_else(|| invalid(k("auth_token"), "is required"))?;
        let messages_url = parse_http_url(
            &k("base_url"),
            &format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                settings.base_url.trim_end_matches('/'),
                settings.account_sid
            ),
        )?;
        let sender = match (&settings.from, &settings.messaging_service_sid) {
            (Some(from), _) => Sender::From(from.clone()),
            (None, Some(sid)) => Sender::MessagingService(sid.clone()),
            (None, None) => return Err(invalid(k("from"), "is required")),
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirected POST would silently become a GET: treat it as a failure instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("smsrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(k("base_url"), format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            name: instance.name.clone(),
            client,
            messages_url,
            account_sid: settings.account_sid.clone(),
            auth_token,
            sender,
            status_callback_url: settings.status_callback_url.clone(),
        })
    }
}

#[derive(Deserialize)]
struct Created {
    sid: Option<String>,
}

#[derive(Deserialize)]
struct ErrorReply {
    code: Option<u32>,
}

#[async_trait]
impl Provider for TwilioProvider {
    fn name(&self) -> &str {
        &self.name
    }

    /// `POST /callbacks/<name>`: Twilio's status callbacks, when requested.
    fn callback_routes(&self, context: &CallbackContext) -> Option<axum::Router> {
        let url = self.status_callback_url.clone()?;
        let state = CallbackState {
            context: context.clone(),
            auth_token: self.auth_token.clone(),
            url,
        };
        Some(
            axum::Router::new()
                .route("/", axum::routing::post(status_callback))
                .with_state(state),
        )
    }

    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome {
        let mut form: Vec<(&str, &str)> = vec![("To", sms.to.as_str())];
        match &self.sender {
            Sender::From(from) => form.push(("From", from)),
            Sender::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        form.push(("Body", sms.message));
        // Our id and attempt ride in the callback URL, which the signature covers.
        let callback = self
            .status_callback_url
            .as_ref()
            .map(|url| format!("{url}?sms_id={}&attempt={}", sms.id, sms.attempt));
        if let Some(url) = &callback {
            form.push(("StatusCallback", url));
        }
        let request = self
            .client
            .post(self.messages_url.clone())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&form);
        let response = match request.send().await {
            Ok(response) => response,
            // Twilio has no idempotency key: after a timeout the message may
            // exist, so its outcome is unknown and `[dispatch] guarantee`
            // decides between a possible duplicate and a possible loss.
            Err(e) => return request_failed_at("Twilio: ", &e),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        if (200..300).contains(&status) {
            let sid = serde_json::from_slice::<Created>(&body)
                .ok()
                .and_then(|c| c.sid)
                .filter(|sid| !sid.is_empty())
                .map(|sid| sid.chars().take(200).collect());
            return SendOutcome::Accepted {
                provider_message_id: sid,
                http_status: Some(status),
            };
        }
        let code = serde_json::from_slice::<ErrorReply>(&body)
            .ok()
            .and_then(|e| e.code);
        classify_error(status, code, retry_after)
    }
}

/// What the status callback route needs.
#[derive(Clone)]
struct CallbackState {
    context: CallbackContext,
    auth_token: Secret,
    /// `status_callback_url` as configured: what Twilio signs, with our query.
    url: String,
}

/// What a `MessageStatus` means: `delivered`, `undelivered` / `failed` are
/// final; `queued`, `sending`, `sent`, ... are on the way and change nothing.
fn callback_outcome(status: &str) -> Option<ReportOutcome> {
    match status {
        "delivered" => Some(ReportOutcome::Delivered),
        "undelivered" | "failed" => Some(ReportOutcome::Undelivered),
        _ => None,
    }
}

/// One status callback. 403 unless `X-Twilio-Signature` signs this URL and
/// these parameters; 400 for a malformed one; 503 while the database is down
/// (Twilio retries); 200 once the report is committed (applied, or kept until
/// the send's outcome is recorded), unknown messages included.
async fn status_callback(
    axum::extract::State(state): axum::extract::State<CallbackState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    let query = query.unwrap_or_default();
    let url = if query.is_empty() {
        state.url.clone()
    } else {
        format!("{}?{query}", state.url)
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let header = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify_signature(state.auth_token.expose(), &url, &params, header) {
        return (StatusCode::FORBIDDEN, "bad or missing X-Twilio-Signature\n");
    }
    let ours: std::collections::HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let sms_id = ours.get("sms_id").and_then(|v| v.parse::<i64>().ok());
    let attempt = ours.get("attempt").and_then(|v| v.parse::<u32>().ok());
    let (Some(sms_id), Some(attempt), Some(status)) = (sms_id, attempt, param("MessageStatus"))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "sms_id, attempt and MessageStatus are required\n",
        );
    };
    let Some(outcome) = callback_outcome(status) else {
        return (StatusCode::OK, "intermediate status, nothing to change\n");
    };
    // Only digits of the error code: nothing else from the callback is stored.
    let code: String = param("ErrorCode")
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .take(10)
        .collect();
    let reason = if code.is_empty() {
        format!("twilio status {status}")
    } else {
        format!("twilio status {status}, error {code}")
    };
    let report = DeliveryReport {
        sms_id,
        attempt,
        outcome,
        reason,
    };
    match state.context.store.apply_delivery_report(&report).await {
        Ok(applied) => {
            tracing::info!(sms_id, attempt, status, ?applied, "delivery report");
            (StatusCode::OK, "ok\n")
        }
        Err(e) => {
            tracing::warn!(sms_id, error = %e, "delivery report not stored");
            (StatusCode::SERVICE_UNAVAILABLE, "not stored; try again\n")
        }
    }
}

/// How smsrelay treats one of Twilio's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry later.
    Transient,
    /// The message cannot be delivered: decline it.
    Permanent,
    /// The recipient replied STOP: decline it, and do not try that number again.
    OptedOut,
    /// Our account or setup is at fault, not the message.
    Configuration,
}

/// Twilio's documented error codes, with what they mean for us. Anything else
/// is transient, bounded by the retry policy's `max_attempts`.
pub fn error_class(code: u32) -> (ErrorClass, &'static str) {
    use ErrorClass::*;
    match code {
        20429 => (Transient, "too many requests"),
        21611 => (Transient, "the sender's queue is full"),
        30001 => (Transient, "queue overflow"),
        30003 => (Transient, "unreachable destination handset"),
        30008 => (Transient, "unknown error from the carrier"),
        21211 => (Permanent, "invalid To number"),
        21612 => (
            Permanent,
            "this To number cannot be reached from this sender",
        ),
        21614 => (Permanent, "the To number is not a mobile number"),
        21635 => (Permanent, "the To number is a landline"),
        30005 => (Permanent, "unknown destination handset"),
        30006 => (Permanent, "landline or unreachable carrier"),
        21610 => (OptedOut, "the recipient has opted out (replied STOP)"),
        20003 => (
            Configuration,
            "authentication failed: check account_sid and auth_token",
        ),
        21606 => (
            Configuration,
            "the From number is not a valid sender for this account",
        ),
        21608 => (
            Configuration,
            "trial account: the To number is not verified",
        ),
        21408 => (
            Configuration,
            "the account may not send to this region (geo permissions)",
        ),
        30034 => (Configuration, "the sender is not registered (US A2P 10DLC)"),
        _ => (Transient, "undocumented error"),
    }
}

/// Maps a non-2xx reply to an outcome. Twilio's own `message` is never quoted:
/// it often contains the recipient's number.
pub fn classify_error(
    status: u16,
    code: Option<u32>,
    retry_after: Option<Duration>,
) -> SendOutcome {
    let http_status = Some(status);
    let (class, what) = match code {
        Some(code) => error_class(code),
        None => match status {
            429 => (ErrorClass::Transient, "too many requests"),
            401 | 403 => (
                ErrorClass::Configuration,
                "authentication failed: check account_sid and auth_token",
            ),
            404 => (
                ErrorClass::Configuration,
                "no such account or URL: check account_sid and base_url",
            ),
            300..=399 => (ErrorClass::Configuration, "redirected: check base_url"),
            _ => (ErrorClass::Transient, "no error code in the reply"),
        },
    };
    let code = code.map_or_else(|| "no code".to_owned(), |c| format!("error {c}"));
    match class {
        ErrorClass::Transient => SendOutcome::Transient {
            error: format!("Twilio {code} (HTTP {status}): {what}"),
            http_status,
            retry_after,
        },
        ErrorClass::Permanent => SendOutcome::Permanent {
            error: format!("Twilio refused the message: {code} (HTTP {status}): {what}"),
            http_status,
        },
        ErrorClass::OptedOut => SendOutcome::opted_out(
            format!("Twilio {code} (HTTP {status}): {what}"),
            http_status,
        ),
        // Not the message's fault: the provider is paused and the message
        // keeps its attempt (it must not decline the backlog).
        ErrorClass::Configuration => SendOutcome::ProviderUnavailable {
            error: format!(
                "Twilio configuration problem, not the message's: {code} (HTTP {status}): {what}"
            ),
            http_status,
            cause: Unavailable::Configuration,
        },
    }
}

/// `X-Twilio-Signature` for a request to `url` (as configured at Twilio, query
/// included) with these POST parameters: Base64(HMAC-SHA1(auth token, url
/// followed by each parameter's name and value, sorted by name)).
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    // HMAC accepts keys of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else {
        return String::new();
    };
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `header` is Twilio's signature of this request, compared in constant time.
pub fn verify_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    let expected = signature(auth_token, url, params);
    !header.is_empty() && bool::from(expected.as_bytes().ct_eq(header.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The worked example in Twilio's "Webhooks security" guide.
    #[test]
    fn twilios_published_example_verifies() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        // Out of order on purpose: the signature sorts them.
        let params = pairs(&[
            ("To", "+18005551212"),
            ("Digits", "1234"),
            ("CallSid", "CA1234567890ABCDE"),
            ("From", "+12349013030"),
            ("Caller", "+12349013030"),
        ]);
        assert_eq!(
            signature("12345", url, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert!(verify_signature(
            "12345",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
    }

    /// The vector in Twilio's own Node SDK tests (spec/validation.spec.js).
    #[test]
    fn the_sdk_test_vector_verifies() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(verify_signature(
            "12345",
            url,
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn anything_changed_fails() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let good = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert!(
            !verify_signature("54321", url, &params, good),
            "other token"
        );
        assert!(
            !verify_signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=3",
                &params,
                good
            ),
            "other URL"
        );
        let mut tampered = params.clone();
        tampered[2].1 = "9999".into();
        assert!(
            !verify_signature("12345", url, &tampered, good),
            "other parameter"
        );
        assert!(!verify_signature("12345", url, &params, ""), "missing");
        assert!(
            !verify_signature("12345", url, &params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ"),
            "truncated"
        );
    }

    fn instance() -> ProviderInstance {
        ProviderInstance {
            name: "twilio".into(),
            timeout: Duration::from_secs(5),
        }
    }

    fn settings() -> TwilioSettings {
        TwilioSettings {
            account_sid: format!("AC{}", "0123456789abcdef".repeat(2)),
            auth_token: Some(Secret::new("token")),
            from: Some("+15005550006".into()),
            ..TwilioSettings::default()
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        type Change = fn(&mut TwilioSettings);
        let cases: [(Change, &str); 7] = [
            (
                |s| s.account_sid = "ACnope".into(),
                "provider.twilio.account_sid",
            ),
            (|s| s.auth_token = None, "provider.twilio.auth_token"),
            (|s| s.from = None, "provider.twilio.from"),
            (
                |s| s.messaging_service_sid = Some(format!("MG{}", "0".repeat(32))),
                "provider.twilio.from",
            ),
            (
                |s| {
                    s.from = None;
                    s.messaging_service_sid = Some("MG1".into());
                },
                "provider.twilio.messaging_service_sid",
            ),
            (
                |s| s.base_url = "api.twilio.com".into(),
                "provider.twilio.base_url",
            ),
            (
                |s| s.status_callback_url = Some("/callbacks/twilio".into()),
                "provider.twilio.status_callback_url",
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
