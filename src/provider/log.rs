//! Dry run: nothing leaves the host.

use async_trait::async_trait;

use super::{OutboundSms, Provider, SendOutcome};

/// Logs the masked number and marks the message sent.
#[derive(Debug, Default)]
pub struct LogProvider;

#[async_trait]
impl Provider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
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
