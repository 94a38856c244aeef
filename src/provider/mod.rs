//! SMS providers behind one trait; `[provider] kind` picks one.

pub mod kannel;
pub mod log;
pub mod twilio;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{Config, ConfigError, ProviderKind};
use crate::domain::phone::E164;

/// One message, validated and ready for a provider.
#[derive(Debug)]
pub struct OutboundSms<'a> {
    pub id: i64,
    pub attempt: u32,
    pub to: &'a E164,
    pub message: &'a str,
    pub segments: u32,
}

/// How a provider answered one send.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Accepted for delivery.
    Accepted {
        provider_message_id: Option<String>,
        http_status: Option<u16>,
    },
    /// Worth retrying later; `retry_after` is the provider's own request, if any.
    Transient {
        error: String,
        http_status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Refused for good.
    Permanent {
        error: String,
        http_status: Option<u16>,
    },
}

/// Something that can send an SMS.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Sends one message. Never panics on a provider's answer; every failure is an outcome.
    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome;
}

/// Builds the configured provider.
pub fn from_config(config: &Config) -> Result<Arc<dyn Provider>, ConfigError> {
    Ok(match config.provider.kind {
        ProviderKind::Log => Arc::new(log::LogProvider),
        ProviderKind::Webhook => Arc::new(webhook::WebhookProvider::from_config(config)?),
        ProviderKind::Kannel => {
            Arc::new(kannel::KannelProvider::from_settings(
                config.provider.kannel.as_ref().ok_or_else(|| {
                    crate::config::invalid("provider.kannel", "section is required")
                })?,
                config.provider.timeout,
            )?)
        }
        ProviderKind::Twilio => {
            Arc::new(twilio::TwilioProvider::from_settings(
                config.provider.twilio.as_ref().ok_or_else(|| {
                    crate::config::invalid("provider.twilio", "section is required")
                })?,
                config.provider.timeout,
            )?)
        }
    })
}
