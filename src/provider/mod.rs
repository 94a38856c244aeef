//! SMS providers behind one trait. `[provider] kind` picks one, or
//! `[provider] order` several for failover ([`router::Router`]); each one's
//! own `[provider.<name>]` section configures it, and nothing else of the
//! configuration reaches it. Every provider that sends sits behind its
//! health gate ([`health::HealthGated`]), which also enforces the section's
//! `rate_limit` and `max_in_flight` ([`SendLimits`]).
//!
//! A provider is three things, all in its own file:
//! - its settings section, a serde struct implementing [`ProviderSection`]:
//!   `validate` checks it at load time (`smsrelay check-config`), `build`
//!   makes the provider from it and the [`ProviderInstance`] basics (name, timeout);
//! - the [`Provider`] itself: `send` turns one message into a [`SendOutcome`]
//!   (the dispatcher's outcome model, `domain::outcome`, does the rest:
//!   retries, states, reasons), `name` is recorded on every attempt;
//! - optionally `callback_routes`: HTTP routes the API serves under
//!   `/callbacks/<name>/` (delivery reports, health pings), outside the
//!   bearer-token check, so the provider authenticates them itself.
//!
//! # Adding a provider (Twilio, say)
//! 1. Create `src/provider/twilio.rs` with `TwilioSettings` (`Default`,
//!    `Serialize`, `Deserialize`, `#[serde(deny_unknown_fields, default)]`,
//!    secrets as [`crate::secrets::Secret`] with a `*_credential` twin),
//!    `impl ProviderSection for TwilioSettings`, and `TwilioProvider`
//!    implementing [`Provider`]. Test it against a wiremock server. Give the
//!    section `rate_limit: Option<f64>` and `max_in_flight: Option<u32>`
//!    and return them from [`ProviderSection::limits`]: its gate enforces them.
//! 2. Here, one line each: `pub mod twilio;`; a `Twilio` variant in
//!    [`ProviderKind`] and its name in [`ProviderKind::as_str`]; a
//!    `pub twilio: twilio::TwilioSettings` field in [`ProviderSettings`] and
//!    in its `Default`; `ProviderKind::Twilio => &self.twilio` in
//!    `ProviderSettings::section`. A section without sensible defaults is an
//!    `Option<TwilioSettings>` (with `skip_serializing_if = "Option::is_none"`)
//!    selected by `required_section(&self.twilio, "twilio")?`.
//! 3. Document every key of `[provider.twilio]` in `config/smsrelay.toml`
//!    (a test checks that every key `check-config` prints is documented there).
//!
//! Nothing in the dispatcher, the API, the store or the config loader changes.

pub mod africastalking;
pub mod callback;
pub mod checks;
pub mod health;
pub mod infobip;
pub mod kannel;
pub mod log;
pub mod router;
pub mod template;
pub mod twilio;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};
pub use crate::domain::outcome::{SendOutcome, Unavailable};
use crate::domain::phone::E164;
use crate::store::Store;

/// One message, validated and ready for a provider.
#[derive(Debug)]
pub struct OutboundSms<'a> {
    pub id: i64,
    pub attempt: u32,
    pub to: &'a E164,
    pub message: &'a str,
    pub segments: u32,
    /// The message's random send key (see [`OutboundSms::idempotency_key`]).
    pub send_key: &'a str,
}

impl OutboundSms<'_> {
    /// The same for every attempt of one message and unique across
    /// deployments and database restores (ids alone are not): a receiver that
    /// drops duplicates by it drops only real duplicates.
    pub fn idempotency_key(&self) -> String {
        format!("sms-{}-{}", self.id, self.send_key)
    }
}

/// Something that can send an SMS.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The instance name: the `[provider.<name>]` section it was built from.
    /// Recorded on every attempt, and the path of its callback routes.
    fn name(&self) -> &str;

    /// Sends one message. Never panics on a provider's answer; every failure is an outcome.
    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome;

    /// [`Provider::send`], noting in `via` which provider the request goes to
    /// the moment it starts. The health gate first waits out its rate limit
    /// and in-flight cap, and a router picks a member; a send cut off before
    /// `via` is set never reached any provider.
    async fn send_via(&self, sms: &OutboundSms<'_>, via: &SentVia) -> SendOutcome {
        via.start(self.name());
        self.send(sms).await
    }

    /// Routes served under `/callbacks/<name>/` on the API listener, with
    /// their own authentication (no bearer token is asked for). None: the
    /// provider takes no callbacks.
    fn callback_routes(&self, _context: &CallbackContext) -> Option<axum::Router> {
        None
    }

    /// Whether the provider can take sends now (its health gate,
    /// [`health::HealthGated`], may have paused it).
    fn readiness(&self) -> Readiness {
        Readiness::Ready
    }

    /// Whether it already sits behind its health gate (a [`health::HealthGated`],
    /// or a router over gated members): it is never wrapped twice.
    fn is_gated(&self) -> bool {
        false
    }

    /// Its callback routes nested under `/callbacks/<name>` (a router's: every
    /// member's); empty when it has none.
    fn callback_router(&self, context: &CallbackContext) -> axum::Router {
        match self.callback_routes(context) {
            Some(routes) => {
                axum::Router::new().nest(&format!("/callbacks/{}", self.name()), routes)
            }
            None => axum::Router::new(),
        }
    }
}

/// The provider a send's request went to, set when the request starts.
#[derive(Debug, Default)]
pub struct SentVia(std::sync::Mutex<Option<String>>);

impl SentVia {
    /// The request to `provider` is starting.
    pub fn start(&self, provider: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(provider.to_owned());
    }

    /// The provider the request went to; None if none was started.
    pub fn provider(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a provider can take now; the dispatcher claims accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// A pause just ended: one probe send decides whether it is over.
    ProbeOnly,
    /// Paused for at least this long: claim nothing.
    Paused(Duration),
}

/// What a provider's callback handlers may reach.
#[derive(Clone)]
pub struct CallbackContext {
    pub store: Arc<dyn Store>,
}

/// A provider's callback routes nested under `/callbacks/<name>`; empty when it has none.
pub fn callback_router(provider: &dyn Provider, context: &CallbackContext) -> axum::Router {
    provider.callback_router(context)
}

/// What every provider instance gets besides its own section.
#[derive(Debug, Clone)]
pub struct ProviderInstance {
    /// The section's name, `webhook` for `[provider.webhook]`.
    pub name: String,
    /// Whole-request timeout of one send (`[provider] timeout`).
    pub timeout: Duration,
}

impl ProviderInstance {
    /// The full config key of `field` in this instance's section, for errors.
    pub fn key(&self, field: &str) -> String {
        format!("provider.{}.{field}", self.name)
    }
}

/// A provider's own `[provider.<name>]` section.
pub trait ProviderSection {
    /// Checks what types alone cannot (at load time, without side effects).
    fn validate(&self, instance: &ProviderInstance) -> Result<(), ConfigError>;

    /// Builds the provider; the section has been validated. May read
    /// credentials and files.
    fn build(&self, instance: &ProviderInstance) -> Result<Arc<dyn Provider>, ConfigError>;

    /// Its `rate_limit` and `max_in_flight` (none unless the section has them).
    fn limits(&self) -> SendLimits {
        SendLimits::default()
    }

    /// Whether this section asks the provider for delivery reports, so that
    /// a message it accepted and never reported on is overdue after
    /// `[provider] report_window` (`smsrelay_reports_overdue`).
    fn sends_reports(&self) -> bool {
        false
    }
}

/// How fast and how many at once this instance sends to one provider
/// (`[provider.<name>] rate_limit`, `max_in_flight`), enforced by its health gate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SendLimits {
    /// Segments per second (a 3-part message costs 3); None: no limit.
    pub rate_limit: Option<f64>,
    /// Requests in flight at once; None: only `dispatch.concurrency` bounds them.
    pub max_in_flight: Option<u32>,
}

impl SendLimits {
    /// Checks both against the instance's keys.
    pub fn validate(&self, instance: &ProviderInstance) -> Result<(), ConfigError> {
        if let Some(rate) = self.rate_limit
            && !(rate.is_finite() && rate >= 0.001)
        {
            return Err(invalid(
                instance.key("rate_limit"),
                "must be a number of segments per second, at least 0.001",
            ));
        }
        if self.max_in_flight == Some(0) {
            return Err(invalid(instance.key("max_in_flight"), "must be at least 1"));
        }
        Ok(())
    }
}

/// Which provider sends messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Dry run: logs the masked number and marks the message sent.
    #[default]
    Log,
    /// POSTs JSON to a URL of your own.
    Webhook,
    /// A Kannel smsbox.
    Kannel,
    /// Twilio Programmable Messaging.
    Twilio,
    /// Infobip's SMS API.
    Infobip,
    /// Africa's Talking's SMS API.
    Africastalking,
}

impl ProviderKind {
    /// The name in `[provider] kind` and of its section.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Log => "log",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Kannel => "kannel",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Infobip => "infobip",
            ProviderKind::Africastalking => "africastalking",
        }
    }
}

/// `[provider]`: which provider (or which in failover order), the limits
/// every provider shares, and one section per provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    pub kind: ProviderKind,
    /// Several providers in failover order; when set, `kind` is left out or names the first.
    #[serde(deserialize_with = "names_or_list")]
    pub order: Vec<ProviderKind>,
    /// Whole-request timeout of one send.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a message may stay `sent` through a provider that sends
    /// delivery reports before `smsrelay_reports_overdue` counts it; `off`: never.
    #[serde(with = "crate::housekeeping::duration_or_off")]
    pub report_window: Duration,
    pub webhook: webhook::WebhookSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kannel: Option<kannel::KannelSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twilio: Option<twilio::TwilioSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infobip: Option<infobip::InfobipSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub africastalking: Option<africastalking::AfricasTalkingSettings>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Log,
            order: Vec::new(),
            timeout: Duration::from_secs(10),
            report_window: DEFAULT_REPORT_WINDOW,
            webhook: webhook::WebhookSettings::default(),
            kannel: None,
            twilio: None,
            infobip: None,
            africastalking: None,
        }
    }
}

/// `[provider] report_window` unless set: networks report within minutes
/// when the handset is on, so an hour without one is worth a look.
pub const DEFAULT_REPORT_WINDOW: Duration = Duration::from_secs(3600);

impl ProviderSettings {
    /// The names of the providers that send, and whose sections ask for
    /// delivery reports (attempts record the provider by this name).
    pub fn reporting(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .filter(|kind| self.section(*kind).is_ok_and(|s| s.sends_reports()))
            .map(|kind| kind.as_str().to_owned())
            .collect()
    }

    /// The section of provider `kind`.
    fn section(&self, kind: ProviderKind) -> Result<&dyn ProviderSection, ConfigError> {
        Ok(match kind {
            ProviderKind::Log => &log::LogSettings,
            ProviderKind::Webhook => &self.webhook,
            ProviderKind::Kannel => required_section(&self.kannel, "kannel")?,
            ProviderKind::Twilio => required_section(&self.twilio, "twilio")?,
            ProviderKind::Infobip => required_section(&self.infobip, "infobip")?,
            ProviderKind::Africastalking => {
                required_section(&self.africastalking, "africastalking")?
            }
        })
    }

    /// The providers that send, in failover order: `order`, or `kind` alone.
    pub fn members(&self) -> Vec<ProviderKind> {
        if self.order.is_empty() {
            vec![self.kind]
        } else {
            self.order.clone()
        }
    }

    /// The chosen provider's name and the shared limits.
    pub fn instance(&self) -> ProviderInstance {
        self.instance_of(self.kind)
    }

    fn instance_of(&self, kind: ProviderKind) -> ProviderInstance {
        ProviderInstance {
            name: kind.as_str().to_owned(),
            timeout: self.timeout,
        }
    }

    /// Checks the shared limits, the order and every member's section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(invalid("provider.timeout", "must be more than 0s"));
        }
        self.validate_order()?;
        for kind in self.members() {
            let (section, instance) = (self.section(kind)?, self.instance_of(kind));
            section.validate(&instance)?;
            section.limits().validate(&instance)?;
        }
        Ok(())
    }

    fn validate_order(&self) -> Result<(), ConfigError> {
        let Some(&first) = self.order.first() else {
            return Ok(());
        };
        // `kind` keeps its default (log) when only `order` is given.
        if self.kind != ProviderKind::Log && self.kind != first {
            return Err(invalid(
                "provider.kind",
                format!(
                    "names \"{}\" but provider.order starts with \"{}\"; leave kind out or make it the first of order",
                    self.kind.as_str(),
                    first.as_str()
                ),
            ));
        }
        for (i, kind) in self.order.iter().enumerate() {
            if *kind == ProviderKind::Log {
                return Err(invalid(
                    "provider.order",
                    "cannot list \"log\": a dry run would mark real messages sent",
                ));
            }
            if self.order[..i].contains(kind) {
                return Err(invalid(
                    "provider.order",
                    format!("lists \"{}\" twice", kind.as_str()),
                ));
            }
        }
        Ok(())
    }

    /// The longest a message of `max_segments` may wait for the slowest
    /// member's `rate_limit` before its request starts.
    pub fn longest_rate_wait(&self, max_segments: u32) -> Duration {
        self.members()
            .into_iter()
            .filter_map(|kind| self.section(kind).ok()?.limits().rate_limit)
            .map(|rate| {
                Duration::try_from_secs_f64(f64::from(max_segments) / rate).unwrap_or(Duration::MAX)
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Builds what sends: each member behind its health gate (with its
    /// limits), and with several, a [`router::Router`] over them in order.
    pub fn build(&self) -> Result<Arc<dyn Provider>, ConfigError> {
        let mut gated = Vec::new();
        for kind in self.members() {
            let section = self.section(kind)?;
            let provider = section.build(&self.instance_of(kind))?;
            gated.push(health::HealthGated::wrap(provider, section.limits()));
        }
        Ok(match gated.len() {
            1 => gated.remove(0),
            _ => Arc::new(router::Router::new(gated)),
        })
    }

    /// `provider` (built by hand, as tests do) behind its health gate, with
    /// the limits of the section named like it, if any; as it is when
    /// [`ProviderSettings::build`] made it (already gated).
    pub fn gate(&self, provider: Arc<dyn Provider>) -> Arc<dyn Provider> {
        if provider.is_gated() {
            return provider;
        }
        let limits = self
            .members()
            .into_iter()
            .find(|kind| kind.as_str() == provider.name())
            .and_then(|kind| self.section(kind).ok())
            .map(|section| section.limits())
            .unwrap_or_default();
        health::HealthGated::wrap(provider, limits)
    }
}

/// `order` as a TOML list, or as one comma-separated string (how an
/// environment variable gives it: `SMSRELAY_PROVIDER__ORDER=twilio,kannel`).
fn names_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ProviderKind>, D::Error> {
    struct Names;
    impl<'de> serde::de::Visitor<'de> for Names {
        type Value = Vec<ProviderKind>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of provider names, or one comma-separated string of them")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut names = Vec::new();
            while let Some(kind) = seq.next_element()? {
                names.push(kind);
            }
            Ok(names)
        }

        fn visit_str<E: serde::de::Error>(self, names: &str) -> Result<Self::Value, E> {
            names
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(|name| {
                    ProviderKind::deserialize(serde::de::value::StrDeserializer::<E>::new(name))
                })
                .collect()
        }
    }
    d.deserialize_any(Names)
}

/// A section with no usable defaults (an account id, a gateway URL), kept as
/// `Option<...Settings>` in [`ProviderSettings`]: present when `kind` names it,
/// or `provider.<name>` is reported missing.
pub fn required_section<'a, S: ProviderSection>(
    section: &'a Option<S>,
    name: &str,
) -> Result<&'a dyn ProviderSection, ConfigError> {
    match section {
        Some(section) => Ok(section),
        None => Err(invalid(
            format!("provider.{name}"),
            format!("section is required when provider.kind or provider.order names \"{name}\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_asking_for_reports_are_reporting() {
        let mut settings = ProviderSettings::default();
        assert!(settings.reporting().is_empty(), "log sends no reports");
        settings.kind = ProviderKind::Webhook;
        assert!(
            settings.reporting().is_empty(),
            "the webhook has no callback"
        );
        settings.kind = ProviderKind::Kannel;
        settings.kannel = Some(kannel::KannelSettings::default());
        assert!(
            settings.reporting().is_empty(),
            "no dlr_url_base, no reports"
        );
        settings.kannel = Some(kannel::KannelSettings {
            dlr_url_base: Some("https://sms.example.com".into()),
            ..kannel::KannelSettings::default()
        });
        assert_eq!(settings.reporting(), ["kannel"]);
    }

    #[test]
    fn the_chosen_provider_is_built_and_named_after_its_section() {
        let settings = ProviderSettings::default();
        settings.validate().unwrap();
        assert_eq!(settings.build().unwrap().name(), "log");
        let webhook = ProviderSettings {
            kind: ProviderKind::Webhook,
            webhook: webhook::WebhookSettings {
                url: Some("http://127.0.0.1:9/sms".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        webhook.validate().unwrap();
        assert_eq!(webhook.build().unwrap().name(), "webhook");
    }

    #[test]
    fn a_required_section_that_is_missing_is_named() {
        let missing: Option<webhook::WebhookSettings> = None;
        let e = required_section(&missing, "gateway").err().unwrap();
        assert_eq!(
            e.to_string(),
            "config key `provider.gateway`: section is required when provider.kind or provider.order names \"gateway\""
        );
        let present = Some(webhook::WebhookSettings::default());
        assert!(required_section(&present, "gateway").is_ok());
    }

    fn failover(order: Vec<ProviderKind>) -> ProviderSettings {
        ProviderSettings {
            order,
            webhook: webhook::WebhookSettings {
                url: Some("http://127.0.0.1:9/sms".into()),
                ..Default::default()
            },
            kannel: Some(kannel::KannelSettings {
                url: "http://127.0.0.1:9/cgi-bin/sendsms".into(),
                username: "tester".into(),
                password: Some(crate::secrets::Secret::new("foobar")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_order_builds_a_router_over_its_members() {
        let settings = failover(vec![ProviderKind::Webhook, ProviderKind::Kannel]);
        settings.validate().unwrap();
        let router = settings.build().unwrap();
        assert_eq!(router.name(), "webhook>kannel");
        assert!(router.is_gated());
        assert_eq!(router.readiness(), Readiness::Ready);
    }

    #[test]
    fn order_mistakes_name_the_key() {
        let error = |settings: ProviderSettings| settings.validate().unwrap_err().to_string();
        let mut conflicting = failover(vec![ProviderKind::Webhook, ProviderKind::Kannel]);
        conflicting.kind = ProviderKind::Kannel;
        assert_eq!(
            error(conflicting),
            "config key `provider.kind`: names \"kannel\" but provider.order starts with \"webhook\"; leave kind out or make it the first of order"
        );
        assert_eq!(
            error(failover(vec![ProviderKind::Webhook, ProviderKind::Log])),
            "config key `provider.order`: cannot list \"log\": a dry run would mark real messages sent"
        );
        assert_eq!(
            error(failover(vec![ProviderKind::Kannel, ProviderKind::Kannel])),
            "config key `provider.order`: lists \"kannel\" twice"
        );
        assert_eq!(
            error(failover(vec![ProviderKind::Kannel, ProviderKind::Twilio])),
            "config key `provider.twilio`: section is required when provider.kind or provider.order names \"twilio\""
        );
        let mut slow = failover(vec![ProviderKind::Webhook, ProviderKind::Kannel]);
        slow.kannel.as_mut().unwrap().rate_limit = Some(0.0);
        assert_eq!(
            error(slow),
            "config key `provider.kannel.rate_limit`: must be a number of segments per second, at least 0.001"
        );
        let mut none_at_once = failover(vec![ProviderKind::Webhook]);
        none_at_once.webhook.max_in_flight = Some(0);
        assert_eq!(
            error(none_at_once),
            "config key `provider.webhook.max_in_flight`: must be at least 1"
        );
    }

    #[test]
    fn order_comes_from_a_list_or_a_comma_separated_variable() {
        let env = |value: &str| {
            vec![(
                std::ffi::OsString::from("SMSRELAY_PROVIDER__ORDER"),
                std::ffi::OsString::from(value),
            )]
        };
        let config: crate::Config = crate::config::load_from(None, env("webhook, kannel")).unwrap();
        assert_eq!(
            config.provider.order,
            [ProviderKind::Webhook, ProviderKind::Kannel]
        );
        let unknown = crate::config::load_from::<crate::Config>(None, env("webhook,sms-r-us"))
            .unwrap_err()
            .to_string();
        assert!(
            unknown.starts_with(
                "environment variable SMSRELAY_PROVIDER__ORDER: unknown variant `sms-r-us`"
            ),
            "{unknown}"
        );
        let file: ProviderSettings = toml::from_str("order = [\"twilio\", \"kannel\"]").unwrap();
        assert_eq!(file.order, [ProviderKind::Twilio, ProviderKind::Kannel]);
    }

    #[test]
    fn the_slowest_rate_limit_bounds_how_long_a_send_may_wait() {
        let mut settings = failover(vec![ProviderKind::Webhook, ProviderKind::Kannel]);
        assert_eq!(settings.longest_rate_wait(10), Duration::ZERO);
        settings.webhook.rate_limit = Some(100.0);
        settings.kannel.as_mut().unwrap().rate_limit = Some(0.5);
        assert_eq!(settings.longest_rate_wait(10), Duration::from_secs(20));
    }
}
