//! SMS providers behind one trait. `[provider] kind` picks one; its own
//! `[provider.<name>]` section configures it, and nothing else of the
//! configuration reaches it.
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
//!    implementing [`Provider`]. Test it against a wiremock server.
//! 2. Here, one line each: `pub mod twilio;`; a `Twilio` variant in
//!    [`ProviderKind`] and its name in [`ProviderKind::as_str`]; a
//!    `pub twilio: twilio::TwilioSettings` field in [`ProviderSettings`] and
//!    in its `Default`; `ProviderKind::Twilio => &self.twilio` in
//!    `ProviderSettings::selected`. A section without sensible defaults is an
//!    `Option<TwilioSettings>` (with `skip_serializing_if = "Option::is_none"`)
//!    selected by `required_section(&self.twilio, "twilio")?`.
//! 3. Document every key of `[provider.twilio]` in `config/smsrelay.toml`
//!    (a test checks that every key `check-config` prints is documented there).
//!
//! Nothing in the dispatcher, the API, the store or the config loader changes.

pub mod health;
pub mod kannel;
pub mod log;
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
    match provider.callback_routes(context) {
        Some(routes) => {
            axum::Router::new().nest(&format!("/callbacks/{}", provider.name()), routes)
        }
        None => axum::Router::new(),
    }
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
}

impl ProviderKind {
    /// The name in `[provider] kind` and of its section.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Log => "log",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Kannel => "kannel",
            ProviderKind::Twilio => "twilio",
        }
    }
}

/// `[provider]`: which provider, the limits every provider shares, and one
/// section per provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    pub kind: ProviderKind,
    /// Whole-request timeout of one send.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub webhook: webhook::WebhookSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kannel: Option<kannel::KannelSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twilio: Option<twilio::TwilioSettings>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Log,
            timeout: Duration::from_secs(10),
            webhook: webhook::WebhookSettings::default(),
            kannel: None,
            twilio: None,
        }
    }
}

impl ProviderSettings {
    /// The section of the provider `kind` names.
    fn selected(&self) -> Result<&dyn ProviderSection, ConfigError> {
        Ok(match self.kind {
            ProviderKind::Log => &log::LogSettings,
            ProviderKind::Webhook => &self.webhook,
            ProviderKind::Kannel => required_section(&self.kannel, "kannel")?,
            ProviderKind::Twilio => required_section(&self.twilio, "twilio")?,
        })
    }

    /// The chosen provider's name and the shared limits.
    pub fn instance(&self) -> ProviderInstance {
        ProviderInstance {
            name: self.kind.as_str().to_owned(),
            timeout: self.timeout,
        }
    }

    /// Checks the shared limits and the chosen provider's section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(invalid("provider.timeout", "must be more than 0s"));
        }
        self.selected()?.validate(&self.instance())
    }

    /// Builds the chosen provider.
    pub fn build(&self) -> Result<Arc<dyn Provider>, ConfigError> {
        self.selected()?.build(&self.instance())
    }
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
            format!("section is required when provider.kind = \"{name}\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "config key `provider.gateway`: section is required when provider.kind = \"gateway\""
        );
        let present = Some(webhook::WebhookSettings::default());
        assert!(required_section(&present, "gateway").is_ok());
    }
}
