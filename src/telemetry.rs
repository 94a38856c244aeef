//! Logging, and its `[log]` section. No log line carries a full phone number
//! or a message body: code that logs a number uses `domain::phone::mask`.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, invalid};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Our own info, and only warnings from chatty dependencies.
pub const DEFAULT_LOG_LEVEL: &str = "info,sqlx=warn,tokio_cron_scheduler=warn";

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing filter directive, e.g. `info` or `smsrelay=debug,sqlx=warn`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: DEFAULT_LOG_LEVEL.into(),
            format: LogFormat::Text,
        }
    }
}

impl LogSettings {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        EnvFilter::try_new(&self.level).map_err(|e| {
            invalid(
                "log.level",
                format!("is not a tracing filter directive: {e}"),
            )
        })?;
        Ok(())
    }
}

/// Installs the global subscriber, writing to stderr (journald picks it up).
pub fn init(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&settings.level)?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into journald or a file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let result = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install logger: {e}"))
}
