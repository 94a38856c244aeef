//! The whole configuration: one section per part of the daemon, each defined
//! and checked by the part that uses it. [`crate::config`] loads it
//! (defaults, file, environment); this module only gathers the sections and
//! checks what spans two of them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::api::settings::ApiSettings;
use crate::config::ConfigError;
use crate::dispatch::{DispatchSettings, ValidationSettings};
use crate::housekeeping::HousekeepingSettings;
use crate::provider::ProviderSettings;
use crate::store::{DatabaseSettings, DirectoryQueries, Session, StoreOptions};
use crate::telemetry::LogSettings;

/// The whole effective configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseSettings,
    pub dispatch: DispatchSettings,
    pub validation: ValidationSettings,
    pub provider: ProviderSettings,
    pub housekeeping: HousekeepingSettings,
    pub directory: DirectoryQueries,
    pub api: ApiSettings,
    pub log: LogSettings,
}

impl Config {
    /// Loads defaults, then `file` (if any), then `SMSRELAY_*__*` variables, and validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = crate::config::load(file)?;
        config.validate()?;
        Ok(config)
    }

    /// Asks each part to check its section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        // The lease must outlive a renewal, i.e. one database call.
        self.dispatch.validate(self.database.connect_timeout)?;
        self.provider.validate()?;
        self.validation.validate()?;
        self.housekeeping.validate()?;
        self.api.validate()?;
        self.log.validate()
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        crate::config::to_toml(self)
    }

    /// How to open the dispatcher's store, with the URL resolved.
    pub fn store_options(&self) -> Result<StoreOptions, ConfigError> {
        StoreOptions::from_settings(&self.database, &self.directory)
    }

    /// The API's own pool on the primary: POST /sms (its directory lookup and
    /// idempotency check included), delivery reports, readiness.
    pub fn api_store_options(&self) -> Result<StoreOptions, ConfigError> {
        Ok(StoreOptions {
            pool_size: self.api.pool_size,
            session: Session::api(self.api.effective_statement_timeout()),
            ..self.store_options()?
        })
    }

    /// The API's pool for reads on `database.read_url`, when one is set.
    pub fn api_read_store_options(&self) -> Result<Option<StoreOptions>, ConfigError> {
        let Some(url) = self.database.read_url()? else {
            return Ok(None);
        };
        Ok(Some(StoreOptions {
            url: url.expose().to_owned(),
            session: Session::api_reads(self.api.effective_statement_timeout()),
            ..self.api_store_options()?
        }))
    }
}
