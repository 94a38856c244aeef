//! Dry run: nothing leaves the host.

use std::sync::Arc;

use async_trait::async_trait;

use super::{OutboundSms, Provider, ProviderInstance, ProviderSection, SendOutcome};
use crate::config::ConfigError;

/// The `log` provider has no settings of its own (and no `[provider.log]` section).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSettings;

impl ProviderSection for LogSettings {
    fn validate(&self, _instance: &ProviderInstance) -> Result<(), ConfigError> {
        Ok(())
    }

    fn build(&self, instance: &ProviderInstance) -> Result<Arc<dyn Provider>, ConfigError> {
        Ok(Arc::new(LogProvider {
            name: instance.name.clone(),
        }))
    }
}

/// Logs the masked number and marks the message sent.
#[derive(Debug)]
pub struct LogProvider {
    name: String,
}

#[async_trait]
impl Provider for LogProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome {
        tracing::info!(
            sms_id = sms.id,
            attempt = sms.attempt,
            to = %sms.to,
            segments = sms.segments,
            "dry run: not sent to any provider (provider.kind = \"log\")"
        );
        SendOutcome::Accepted {
            provider_message_id: Some(format!("log-{}", sms.id)),
            http_status: None,
        }
    }
}
