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
    /// Connections of the dispatcher's pool (claim, record, renew, reap);
    /// the API has a pool of its own (`api.pool_size`).
    pub pool_size: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A read replica for the API's reads (GET /sms, GET /sms/{id},
    /// /metrics); a secret like `url`. The dispatcher never uses it.
    pub read_url: Option<Secret>,
    /// Name of a systemd credential holding `read_url`.
    pub read_url_credential: Option<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            url_credential: None,
            // Claim and record take turns; a renewal and the reaper may run
            // beside them: 4 leaves one spare.
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            read_url: None,
            read_url_credential: None,
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
        self.validate_read_url()
    }

    /// A replica holds the same database: the same family as `url`, never
    /// SQLite. Checked where the URLs are inline (credentials are read at start).
    fn validate_read_url(&self) -> Result<(), ConfigError> {
        let key = "database.read_url";
        let Some(read_url) = self.read_url.as_ref() else {
            return Ok(());
        };
        let read = Dialect::of_url(read_url.expose()).map_err(|e| invalid(key, e.to_string()))?;
        if read == Dialect::Sqlite {
            return Err(invalid(
                key,
                "SQLite has no replicas (in WAL mode the API's readers never block the dispatcher); remove it",
            ));
        }
        let primary = match (&self.url, &self.url_credential) {
            (Some(url), _) => Dialect::of_url(url.expose()).ok(),
            (None, None) => Some(Dialect::Sqlite),
            (None, Some(_)) => None,
        };
        if primary.is_some_and(|primary| primary != read) {
            return Err(invalid(
                key,
                "must name the same kind of database as database.url (a replica of it)",
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

    /// The replica's URL, when one is configured (inline or as a systemd credential).
    pub fn read_url(&self) -> Result<Option<Secret>, ConfigError> {
        resolve_secret(
            "database.read_url_credential",
            self.read_url.as_ref(),
            self.read_url_credential.as_deref(),
        )
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
            directory: directory.clone(),
            session: super::Session::dispatcher(),
        })
    }
}
