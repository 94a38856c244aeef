//! Configuration: defaults, then the TOML file, then `SMSRELAY_<SECTION>__<KEY>`
//! environment variables. Every key is described in `config/smsrelay.toml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::phone::Region;
use crate::domain::retry::RetryPolicy;

/// The whole effective configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub dispatch: DispatchConfig,
    pub validation: ValidationConfig,
    pub provider: ProviderConfig,
    pub housekeeping: HousekeepingConfig,
    pub directory: crate::store::DirectoryQueries,
    pub api: ApiConfig,
    pub log: LogConfig,
}

/// `[api]`: the HTTP API served beside the dispatcher.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// Page size of GET /sms when `limit` is not given.
    pub default_limit: u32,
    /// Larger `limit` values are capped to this.
    pub max_limit: u32,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub tokens: Vec<TokenConfig>,
    /// With no `tokens`, a development token (both scopes) is kept in this
    /// file, created with mode 0600 on first start; "" disables it.
    pub dev_token_file: PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            default_limit: 200,
            max_limit: 1000,
            body_limit: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            tokens: Vec::new(),
            dev_token_file: PathBuf::from("smsrelay-api-token"),
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Scope {
    /// GET /sms, GET /sms/{id}.
    #[serde(rename = "sms:read")]
    Read,
    /// POST /sms.
    #[serde(rename = "sms:send")]
    Send,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "sms:read",
            Scope::Send => "sms:send",
        }
    }
}

/// `[[api.tokens]]`: one API credential; exactly one of `sha256`, `token_file`, `credential`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 digest of the token (`smsrelay token new` prints it).
    pub sha256: Option<String>,
    /// A file holding the token itself.
    pub token_file: Option<PathBuf>,
    /// A systemd credential holding the token itself.
    pub credential: Option<String>,
}

/// The database used when neither `url` nor `url_credential` is set: an
/// SQLite file in the working directory, created and migrated on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://smsrelay.db";

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connection URL (`postgres://`, `mysql://`/`mariadb://`, `sqlite://path`);
    /// a secret, so prefer `url_credential` in production. Neither set:
    /// [`DEFAULT_DATABASE_URL`].
    pub url: Option<Secret>,
    /// Name of a systemd credential (`LoadCredential=`) holding the URL.
    pub url_credential: Option<String>,
    pub pool_size: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_credential: None,
            pool_size: 10,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `[dispatch]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Name written to `locked_by` and `sms_attempt.instance`; defaults to host-pid.
    pub instance_id: Option<String>,
    pub batch_size: u32,
    pub concurrency: u32,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    pub backoff_multiplier: f64,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            instance_id: None,
            batch_size: 64,
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(120),
            max_attempts: 8,
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(3600),
            backoff_multiplier: 3.0,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl DispatchConfig {
    /// The retry schedule these settings describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            initial: self.backoff_initial,
            max: self.backoff_max,
            multiplier: self.backoff_multiplier,
        }
    }
}

/// `[validation]`: checks made before a message is handed to a provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// ISO 3166-1 region for numbers stored in national form (e.g. "KE").
    pub default_region: Option<String>,
    /// Longer messages are declined, never truncated.
    pub max_segments: u32,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            default_region: None,
            max_segments: 10,
        }
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
    /// A Kannel smsbox (`[provider.kannel]`).
    Kannel,
    /// Twilio Programmable Messaging (`[provider.twilio]`).
    Twilio,
}

/// `[provider]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Whole-request timeout of one send.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub webhook: WebhookConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kannel: Option<crate::provider::kannel::KannelSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twilio: Option<crate::provider::twilio::TwilioSettings>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Log,
            timeout: Duration::from_secs(10),
            webhook: WebhookConfig::default(),
            kannel: None,
            twilio: None,
        }
    }
}

/// `[provider.webhook]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer ...` when set.
    pub token: Option<Secret>,
    /// Name of a systemd credential holding the token.
    pub token_credential: Option<String>,
}

/// `[housekeeping]`: maintenance jobs, as cron expressions with seconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HousekeepingConfig {
    /// When to return rows whose lease expired to `pending`.
    pub reaper: String,
    /// Rows handled per reaper run.
    pub reaper_batch: u32,
}

impl Default for HousekeepingConfig {
    fn default() -> Self {
        Self {
            reaper: "*/15 * * * * *".into(),
            reaper_batch: 1000,
        }
    }
}

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
pub struct LogConfig {
    /// A tracing filter directive, e.g. `info` or `smsrelay=debug,sqlx=warn`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: DEFAULT_LOG_LEVEL.into(),
            format: LogFormat::Text,
        }
    }
}

/// A secret value: never printed, serialised as `"[redacted]"`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Load(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `SMSRELAY_*` variables, and validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("SMSRELAY")
                .prefix_separator("_")
                .separator("__"),
        );
        let config: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database.url {
            crate::store::Dialect::of_url(url.expose())
                .map_err(|e| invalid("database.url", e.to_string()))?;
        }
        if self.database.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be at least 1"));
        }
        let d = &self.dispatch;
        if d.batch_size == 0 {
            return Err(invalid("dispatch.batch_size", "must be at least 1"));
        }
        if d.concurrency == 0 {
            return Err(invalid("dispatch.concurrency", "must be at least 1"));
        }
        if d.max_attempts == 0 {
            return Err(invalid("dispatch.max_attempts", "must be at least 1"));
        }
        if !(d.backoff_multiplier >= 1.0 && d.backoff_multiplier.is_finite()) {
            return Err(invalid(
                "dispatch.backoff_multiplier",
                "must be a number >= 1",
            ));
        }
        if d.backoff_initial > d.backoff_max {
            return Err(invalid(
                "dispatch.backoff_initial",
                "must not exceed dispatch.backoff_max",
            ));
        }
        if d.poll_interval.is_zero() {
            return Err(invalid("dispatch.poll_interval", "must be more than 0s"));
        }
        if let Some(id) = &d.instance_id
            && (id.is_empty() || id.len() > 200)
        {
            return Err(invalid(
                "dispatch.instance_id",
                "must be 1 to 200 characters",
            ));
        }
        // A claimed batch must be sent and recorded before its lease runs out,
        // or another instance would reclaim and send it again.
        let rounds = d.batch_size.div_ceil(d.concurrency);
        let worst_batch = self.provider.timeout * rounds;
        if d.lease <= worst_batch + Duration::from_secs(5) {
            return Err(invalid(
                "dispatch.lease",
                format!(
                    "must exceed provider.timeout x ceil(batch_size / concurrency) + 5s = {}",
                    humantime::format_duration(worst_batch + Duration::from_secs(5))
                ),
            ));
        }
        if self.provider.timeout.is_zero() {
            return Err(invalid("provider.timeout", "must be more than 0s"));
        }
        if let Some(region) = &self.validation.default_region {
            region
                .parse::<Region>()
                .map_err(|e| invalid("validation.default_region", e.to_string()))?;
        }
        if self.validation.max_segments == 0 {
            return Err(invalid("validation.max_segments", "must be at least 1"));
        }
        if self.provider.kind == ProviderKind::Webhook {
            let url = self.provider.webhook.url.as_deref().ok_or_else(|| {
                invalid(
                    "provider.webhook.url",
                    "is required when provider.kind = \"webhook\"",
                )
            })?;
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| invalid("provider.webhook.url", format!("is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(
                    "provider.webhook.url",
                    "must be an http or https URL",
                ));
            }
        }
        self.validate_provider_sections()?;
        crate::housekeeping::validate_cron(&self.housekeeping.reaper)
            .map_err(|e| invalid("housekeeping.reaper", e))?;
        if self.housekeeping.reaper_batch == 0 {
            return Err(invalid("housekeeping.reaper_batch", "must be at least 1"));
        }
        self.validate_api()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            invalid(
                "log.level",
                format!("is not a tracing filter directive: {e}"),
            )
        })?;
        Ok(())
    }

    /// A provider's section must be there when it is the chosen kind, and valid whenever present.
    fn validate_provider_sections(&self) -> Result<(), ConfigError> {
        let p = &self.provider;
        let missing = |name: &str| {
            invalid(
                format!("provider.{name}"),
                format!("section is required when provider.kind = \"{name}\""),
            )
        };
        match p.kind {
            ProviderKind::Kannel if p.kannel.is_none() => return Err(missing("kannel")),
            ProviderKind::Twilio if p.twilio.is_none() => return Err(missing("twilio")),
            _ => {}
        }
        if let Some(kannel) = &p.kannel {
            kannel.validate()?;
        }
        if let Some(twilio) = &p.twilio {
            twilio.validate()?;
        }
        Ok(())
    }

    fn validate_api(&self) -> Result<(), ConfigError> {
        let api = &self.api;
        if api.max_limit == 0 {
            return Err(invalid("api.max_limit", "must be at least 1"));
        }
        if api.default_limit == 0 || api.default_limit > api.max_limit {
            return Err(invalid(
                "api.default_limit",
                "must be between 1 and api.max_limit",
            ));
        }
        if api.body_limit < 256 {
            return Err(invalid("api.body_limit", "must be at least 256 bytes"));
        }
        if api.request_timeout.is_zero() {
            return Err(invalid("api.request_timeout", "must be more than 0s"));
        }
        for (i, token) in api.tokens.iter().enumerate() {
            let key = |field: &str| format!("api.tokens[{i}].{field}");
            if token.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if api.tokens[..i].iter().any(|t| t.name == token.name) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is used twice", token.name),
                ));
            }
            if token.scopes.is_empty() {
                return Err(invalid(
                    key("scopes"),
                    "must list at least one of \"sms:read\", \"sms:send\"",
                ));
            }
            let sources = [
                token.sha256.is_some(),
                token.token_file.is_some(),
                token.credential.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(invalid(
                    format!("api.tokens[{i}]"),
                    "needs exactly one of sha256, token_file, credential",
                ));
            }
            if let Some(digest) = &token.sha256
                && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(invalid(
                    key("sha256"),
                    "must be 64 hex digits (smsrelay token new prints one)",
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// The database URL: from the config, from a systemd credential, or
    /// [`DEFAULT_DATABASE_URL`] when neither is set.
    pub fn database_url(&self) -> Result<Secret, ConfigError> {
        resolve_secret(
            "database.url_credential",
            self.database.url.as_ref(),
            self.database.url_credential.as_deref(),
        )
        .map(|s| s.unwrap_or_else(|| Secret::new(DEFAULT_DATABASE_URL)))
    }

    /// How to open the store, with the URL resolved.
    pub fn store_options(&self) -> Result<crate::store::StoreOptions, ConfigError> {
        Ok(crate::store::StoreOptions {
            url: self.database_url()?.expose().to_owned(),
            pool_size: self.database.pool_size,
            connect_timeout: self.database.connect_timeout,
            directory: self.directory.clone(),
        })
    }

    /// The webhook bearer token, if configured.
    pub fn webhook_token(&self) -> Result<Option<Secret>, ConfigError> {
        resolve_secret(
            "provider.webhook.token_credential",
            self.provider.webhook.token.as_ref(),
            self.provider.webhook.token_credential.as_deref(),
        )
    }

    /// The instance id written to leases and attempts: the configured one, or
    /// host-pid-random. The random part keeps two hosts that cannot read
    /// their hostname (sandboxed /proc) from sharing an id and each other's leases.
    pub fn instance_id(&self) -> String {
        self.dispatch.instance_id.clone().unwrap_or_else(|| {
            let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
                .iter()
                .find_map(|path| {
                    std::fs::read_to_string(path)
                        .ok()
                        .map(|h| h.trim().to_owned())
                        .filter(|h| !h.is_empty())
                })
                .unwrap_or_else(|| "smsrelay".into());
            format!(
                "{host}-{}-{:06x}",
                std::process::id(),
                rand::random::<u32>() & 0xff_ffff
            )
        })
    }
}

/// A secret given inline wins; otherwise read the systemd credential, if named.
pub(crate) fn resolve_secret(
    credential_key: &str,
    inline: Option<&Secret>,
    credential: Option<&str>,
) -> Result<Option<Secret>, ConfigError> {
    if let Some(secret) = inline {
        return Ok(Some(secret.clone()));
    }
    credential
        .map(|name| read_credential(credential_key, name).map(Secret::new))
        .transpose()
}

/// Reads `$CREDENTIALS_DIRECTORY/<name>` (systemd `LoadCredential=`) without its trailing newline.
pub(crate) fn read_credential(key: &str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty() || name.contains('/') {
        return Err(invalid(key, "must be a plain credential name"));
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        invalid(
            key,
            "is set but CREDENTIALS_DIRECTORY is not (run under systemd with LoadCredential=)",
        )
    })?;
    read_secret_file(key, &Path::new(&dir).join(name))
}

/// Reads a file holding one secret, without its trailing newline.
pub(crate) fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let value = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(value.trim_end_matches(['\r', '\n']).to_owned())
}
