//! `[database]`: where the outbox lives, and how the pool reaches it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Dialect, DirectoryQueries, StoreOptions};
use crate::config::{ConfigError, invalid};
use crate::secrets::{Secret, resolve_secret};

/// The database used when neither `url` nor `url_credential` is set: an
/// SQLite file in the working directory, created and migrated on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://smsrelay.db";

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Connection URL (`postgres://`, `mysql://`/`mariadb://`, `sqlite://path`);
    /// a secret, so prefer `url_credential` in production. Neither set:
    /// [`DEFAULT_DATABASE_URL`].
    pub url: Option<Secret>,
    /// Name of a systemd credential (`LoadCredential=`) holding the URL.
    pub url_credential: Option<String>,
    pub pool_size: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The longest one database call may take (claim, record, renew, reap,
    /// API queries; waiting for a connection included). A call that runs out
    /// counts as the database being unavailable, and its connection is closed.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            url_credential: None,
            pool_size: 10,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
        }
    }
}

impl DatabaseSettings {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            Dialect::of_url(url.expose()).map_err(|e| invalid("database.url", e.to_string()))?;
        }
        if self.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be at least 1"));
        }
        if self.call_timeout.is_zero() {
            return Err(invalid("database.call_timeout", "must be more than 0s"));
        }
        if self.connect_timeout > self.call_timeout {
            return Err(invalid(
                "database.connect_timeout",
                "must not exceed database.call_timeout (a call includes waiting for a connection)",
            ));
        }
        Ok(())
    }

    /// The database URL: from the config, from a systemd credential, or
    /// [`DEFAULT_DATABASE_URL`] when neither is set.
    pub fn url(&self) -> Result<Secret, ConfigError> {
        resolve_secret(
            "database.url_credential",
            self.url.as_ref(),
            self.url_credential.as_deref(),
        )
        .map(|s| s.unwrap_or_else(|| Secret::new(DEFAULT_DATABASE_URL)))
    }
}

impl StoreOptions {
    /// How to open the store, with the URL resolved.
    pub fn from_settings(
        database: &DatabaseSettings,
        directory: &DirectoryQueries,
    ) -> Result<Self, ConfigError> {
        Ok(StoreOptions {
            url: database.url()?.expose().to_owned(),
            pool_size: database.pool_size,
            connect_timeout: database.connect_timeout,
            call_timeout: database.call_timeout,
            directory: directory.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_has_a_deadline_that_covers_waiting_for_a_connection() {
        let defaults = DatabaseSettings::default();
        assert!(defaults.validate().is_ok());
        assert_eq!(defaults.call_timeout, Duration::from_secs(10));
        let none = DatabaseSettings {
            call_timeout: Duration::ZERO,
            ..DatabaseSettings::default()
        };
        assert_eq!(
            none.validate().unwrap_err().to_string(),
            "config key `database.call_timeout`: must be more than 0s"
        );
        let shorter = DatabaseSettings {
            call_timeout: Duration::from_secs(2),
            ..DatabaseSettings::default()
        };
        assert_eq!(
            shorter.validate().unwrap_err().to_string(),
            "config key `database.connect_timeout`: must not exceed database.call_timeout (a call includes waiting for a connection)"
        );
    }
}
