//! Kannel, the open-source SMS gateway in front of an operator's SMPP link:
//! one `GET /cgi-bin/sendsms` per message to its smsbox.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::callback::{check_callback_secret, parse_http_url, secret_matches};
use super::checks;
use super::webhook::{request_failed_at, retry_after};
use super::{
    CallbackContext, OutboundSms, Provider, ProviderInstance, ProviderSection, SendLimits,
    SendOutcome, Unavailable,
};
use crate::config::{ConfigError, invalid};
use crate::domain::report::{DeliveryReport, ReportOutcome};
use crate::domain::segments::{Encoding, count_segments};
use crate::secrets::{Secret, resolve_secret};

/// Every delivery report Kannel can send: delivered (1), not delivered (2),
/// queued on the SMSC (4), delivered to the SMSC (8), rejected by the SMSC (16).
const DLR_MASK_ALL: &str = "31";

/// `[provider.kannel]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KannelSettings {
    /// smsbox's sendsms URL, e.g. `http://127.0.0.1:13013/cgi-bin/sendsms`.
    pub url: String,
    /// A `sendsms-user` of the smsbox.
    pub username: String,
    pub password: Option<Secret>,
    /// Name of a systemd credential holding the password.
    pub password_credential: Option<String>,
    /// Sender shown to the recipient; unset: the smsbox's own default.
    pub from: Option<String>,
    /// Public base URL of this daemon's API, where Kannel sends delivery reports
    /// (`{dlr_url_base}/callbacks/kannel`); unset: no reports are requested.
    pub dlr_url_base: Option<String>,
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

impl KannelSettings {
    /// Checks the settings without reading credentials; errors name the key.
    pub fn check(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        let k = |field: &str| instance.key(field);
        if self.url.is_empty() {
            return Err(invalid(k("url"), "is required"));
        }
        let url = parse_http_url(&k("url"), &self.url)?;
        if url.query().is_some() {
            return Err(invalid(
                k("url"),
                "must not carry a query string: set username, password and from in their own keys",
            ));
        }
        if self.username.trim().is_empty() {
            return Err(invalid(k("username"), "must not be empty"));
        }
        checks::require_secret(
            instance,
            "password",
            &self.password,
            &self.password_credential,
        )?;
        checks::optional_sender(instance, &self.from, "the smsbox's default sender")?;
        checks::callback_base(
            instance,
            "dlr_url_base",
            &self.dlr_url_base,
            &self.callback_secret,
            &self.callback_secret_credential,
        )
    }
}

impl ProviderSection for KannelSettings {
    fn validate(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        self.check(instance)
    }

    fn build(&self, instance: &ProviderInstance) -> Result<Arc<dyn Provider>, ConfigError> {
        Ok(Arc::new(KannelProvider::from_settings(self, instance)?))
    }

    /// Reports are asked for when their callback is configured.
    fn sends_reports(&self) -> bool {
        self.dlr_url_base.is_some()
    }

    fn limits(&self) -> SendLimits {
        SendLimits {
            rate_limit: self.rate_limit,
            max_in_flight: self.max_in_flight,
        }
    }
}

/// Sends through a Kannel smsbox.
pub struct KannelProvider {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    username: String,
    password: Secret,
    from: Option<String>,
    /// `{dlr_url_base}/callbacks/kannel` and the secret, when reports are wanted.
    reports: Option<(String, Secret)>,
}

impl KannelProvider {
    /// Builds the provider, reading credentials; `timeout` bounds each request.
    pub fn from_settings(
        settings: &KannelSettings,
        instance: &ProviderInstance,
    ) -> Result<Self, ConfigError> {
        settings.check(instance)?;
        let k = |field: &str| instance.key(field);
        let timeout = instance.timeout;
        let url = parse_http_url(&k("url"), &settings.url)?;
        let password = resolve_secret(
            &k("password_credential"),
            settings.password.as_ref(),
            settings.password_credential.as_deref(),
        )?
        .ok_or_else(|| invalid(k("password"), "is required"))?;
        let reports = match &settings.dlr_url_base {
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
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // smsbox never redirects; a redirect means the URL is wrong.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("smsrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(k("url"), format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            name: instance.name.clone(),
            client,
            url,
            username: settings.username.clone(),
            password,
            from: settings.from.clone(),
            reports,
        })
    }

    /// The sendsms URL for one message (it carries the password: never log it).
    fn request_url(&self, sms: &OutboundSms<'_>) -> reqwest::Url {
        let mut url = self.url.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("username", &self.username)
                .append_pair("password", self.password.expose());
            if let Some(from) = &self.from {
                query.append_pair("from", from);
            }
            query
                .append_pair("to", sms.to.as_str())
                .append_pair("text", sms.message)
                .append_pair("charset", "UTF-8");
            // Without coding=2 Kannel sends non-GSM text as 7-bit and it arrives as `???`.
            if count_segments(sms.message).encoding == Encoding::Ucs2 {
                query.append_pair("coding", "2");
            }
            if let Some((endpoint, secret)) = &self.reports {
                query
                    .append_pair("dlr-mask", DLR_MASK_ALL)
                    .append_pair("dlr-url", &dlr_url(endpoint, secret, sms));
            }
        }
        url
    }
}

/// Where Kannel reports on one attempt: our id (the report swaps sender and
/// receiver, so the number cannot identify it), the attempt, the secret, and
/// `%d`, which Kannel replaces with the report type.
fn dlr_url(endpoint: &str, secret: &Secret, sms: &OutboundSms<'_>) -> String {
    format!(
        "{endpoint}?sms_id={}&attempt={}&secret={}&type=%d",
        sms.id,
        sms.attempt,
        secret.expose()
    )
}

#[async_trait]
impl Provider for KannelProvider {
    fn name(&self) -> &str {
        &self.name
    }

    /// `GET|POST /callbacks/<name>`: Kannel's delivery reports, when requested.
    fn callback_routes(&self, context: &CallbackContext) -> Option<axum::Router> {
        let (_, secret) = self.reports.as_ref()?;
        let state = ReportState {
            context: context.clone(),
            secret: secret.clone(),
            provider: self.name.clone(),
        };
        Some(
            axum::Router::new()
                .route("/", axum::routing::get(report).post(report))
                .with_state(state),
        )
    }

    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome {
        let response = match self.client.get(self.request_url(sms)).send().await {
            Ok(response) => response,
            Err(e) => return request_failed_at("Kannel: ", &e.without_url()),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        classify(status, &body, retry_after)
    }
}

/// What the report route needs.
#[derive(Clone)]
struct ReportState {
    context: CallbackContext,
    secret: Secret,
    provider: String,
}

/// The query our dlr-url carries, `type` filled in by Kannel.
#[derive(Deserialize)]
struct ReportQuery {
    sms_id: Option<String>,
    attempt: Option<String>,
    secret: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// What a Kannel report type (`%d`) means: 1 delivered to the phone; 2 not
/// delivered, 16 rejected by the SMSC; 4 queued on / 8 delivered to the SMSC
/// are on the way and change nothing.
fn report_outcome(kind: u32) -> Option<ReportOutcome> {
    match kind {
        1 => Some(ReportOutcome::Delivered),
        2 | 16 => Some(ReportOutcome::Undelivered),
        _ => None,
    }
}

/// One delivery report. 403 without the secret; 400 for a malformed one;
/// 503 while the database is down (Kannel retries with `http-request-retry`);
/// 200 once the report is committed: applied, or kept until the send's
/// outcome is recorded, or for an unknown message, so that Kannel stops retrying.
async fn report(
    axum::extract::State(state): axum::extract::State<ReportState>,
    axum::extract::Query(query): axum::extract::Query<ReportQuery>,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    if !secret_matches(query.secret.as_deref().unwrap_or(""), &state.secret) {
        return (StatusCode::FORBIDDEN, "bad or missing secret\n");
    }
    let parse = |v: Option<String>| v.and_then(|v| v.trim().parse::<u32>().ok());
    let sms_id = query.sms_id.and_then(|v| v.trim().parse::<i64>().ok());
    let (Some(sms_id), Some(attempt), Some(kind)) =
        (sms_id, parse(query.attempt), parse(query.kind))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "sms_id, attempt and type must be numbers\n",
        );
    };
    let Some(outcome) = report_outcome(kind) else {
        return (StatusCode::OK, "intermediate report, nothing to change\n");
    };
    let report = DeliveryReport {
        sms_id,
        attempt,
        outcome,
        reason: format!("{} delivery report type {kind}", state.provider),
    };
    match state.context.store.apply_delivery_report(&report).await {
        Ok(applied) => {
            tracing::info!(sms_id, attempt, kind, ?applied, "delivery report");
            (StatusCode::OK, "ok\n")
        }
        Err(e) => {
            tracing::warn!(sms_id, error = %e, "delivery report not stored; Kannel will retry");
            (StatusCode::SERVICE_UNAVAILABLE, "not stored; try again\n")
        }
    }
}

/// Maps smsbox's answer to an outcome. smsbox answers 202 `0: Accepted for
/// delivery` or `3: Queued for later delivery` (no SMSC connected yet; bearerbox
/// keeps it), 403 for bad credentials but also `Not routable. Do not try again.`,
/// 400 for a refused field, 500 `Sending failed.` and 503 `Temporal failure`.
pub fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> SendOutcome {
    let answer = quote(body);
    let http_status = Some(status);
    let transient = |error: String| SendOutcome::Transient {
        error,
        http_status,
        retry_after,
    };
    // Not the message's fault: the operator must fix the setup. The provider
    // is paused and the message keeps its attempt (it must not decline the backlog).
    let configuration = |what: &str| SendOutcome::ProviderUnavailable {
        error: format!(
            "Kannel configuration problem, not the message's: {what} (HTTP {status}: {answer})"
        ),
        http_status,
        cause: Unavailable::Configuration,
    };
    let permanent = |what: &str| SendOutcome::Permanent {
        error: format!("Kannel refused the message: {what} (HTTP {status}: {answer})"),
        http_status,
    };
    let accepted = body.starts_with("0:") || body.starts_with("3:") || body.starts_with("Sent.");
    match status {
        200..=299 if accepted => SendOutcome::Accepted {
            provider_message_id: None,
            http_status,
        },
        200..=299 => transient(format!(
            "Kannel gave an unexpected answer, not counted as accepted (HTTP {status}: {answer})"
        )),
        300..=399 => configuration("redirected; check provider.kannel.url"),
        401 => configuration("check provider.kannel.username and password"),
        403 if body.starts_with("Not routable") => permanent("no SMSC route for this number"),
        403 => configuration(
            "check provider.kannel.username, password and the sendsms-user's user-allow-ip",
        ),
        404 | 405 => configuration("check provider.kannel.url (smsbox's /cgi-bin/sendsms)"),
        400 if is_setup_refusal(body) => configuration("a field smsrelay sets was refused"),
        408 | 429 => transient(format!(
            "Kannel asked to slow down (HTTP {status}: {answer})"
        )),
        400..=499 => permanent("field refused"),
        _ => transient(format!(
            "Kannel failed to take the message (HTTP {status}: {answer})"
        )),
    }
}

/// 400 answers about what comes from our settings, not from the message.
fn is_setup_refusal(body: &str) -> bool {
    [
        "Sender missing",
        "DLR-URL field misformed",
        "DLR-Mask field misformed",
    ]
    .iter()
    .any(|prefix| body.starts_with(prefix))
}

/// smsbox's answer, quotable in an error: first line, bounded, digit runs
/// masked (a multi-receiver answer would list numbers).
fn quote(body: &str) -> String {
    let line: String = body
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(120)
        .collect();
    let mut out = String::with_capacity(line.len());
    let mut digits = String::new();
    for c in line.chars().chain(std::iter::once('\n')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 5 {
            out.push_str("[number]");
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        if c != '\n' {
            out.push(c);
        }
    }
    if out.is_empty() {
        "empty answer".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KannelSettings {
        KannelSettings {
            url: "http://127.0.0.1:13013/cgi-bin/sendsms".into(),
            username: "tester".into(),
            password: Some(Secret::new("foobar")),
            from: Some("BANK".into()),
            dlr_url_base: Some("https://sms.example.com/".into()),
            callback_secret: Some(Secret::new("0123456789abcdef")),
            ..KannelSettings::default()
        }
    }

    fn instance() -> ProviderInstance {
        ProviderInstance {
            name: "kannel".into(),
            timeout: Duration::from_secs(5),
        }
    }

    fn key_of(error: ConfigError) -> String {
        match error {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("not an invalid-key error: {other}"),
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        type Change = fn(&mut KannelSettings);
        let cases: [(Change, &str); 7] = [
            (|s| s.url = "localhost:13013".into(), "provider.kannel.url"),
            (|s| s.url.push_str("?username=x"), "provider.kannel.url"),
            (|s| s.username = " ".into(), "provider.kannel.username"),
            (|s| s.password = None, "provider.kannel.password"),
            (|s| s.from = Some(String::new()), "provider.kannel.from"),
            (
                |s| s.callback_secret = None,
                "provider.kannel.callback_secret",
            ),
            (
                |s| s.callback_secret = Some(Secret::new("short&bad")),
                "provider.kannel.callback_secret",
            ),
        ];
        for (change, key) in cases {
            let mut s = settings();
            change(&mut s);
            assert_eq!(key_of(s.check(&instance()).unwrap_err()), key);
        }
        settings().check(&instance()).unwrap();
        let mut no_reports = settings();
        no_reports.dlr_url_base = None;
        no_reports.callback_secret = None;
        no_reports.check(&instance()).unwrap();
    }

    #[test]
    fn the_secret_never_shows_in_errors_or_debug_output() {
        let mut s = settings();
        s.callback_secret = Some(Secret::new("tooshort"));
        let error = s.check(&instance()).unwrap_err().to_string();
        assert!(!error.contains("tooshort"), "{error}");
        assert!(!format!("{:?}", settings()).contains("foobar"));
    }

    #[test]
    fn quoted_answers_hide_numbers() {
        assert_eq!(
            quote("Sending failed. Failed receivers are: +254712345678 0712345678\nmore"),
            "Sending failed. Failed receivers are: +[number] [number]"
        );
        assert_eq!(
            quote("0: Accepted for delivery"),
            "0: Accepted for delivery"
        );
        assert_eq!(quote(""), "empty answer");
    }
}
