//! `[api]` and `[[api.tokens]]`: where the API listens, its limits, and the
//! bearer tokens with their scopes.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};

/// `[api]`: the HTTP API served beside the dispatcher.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// Page size of GET /sms when `limit` is not given.
    pub default_limit: u32,
    /// Larger `limit` values are capped to this.
    pub max_limit: u32,
    /// Deepest `offset` GET /sms accepts (400 beyond: deeper pages use cursor paging).
    pub max_offset: u64,
    /// Connections of the API's own pool on the primary (and, with
    /// `database.read_url`, of its pool on the replica); never the dispatcher's.
    pub pool_size: u32,
    /// Longest an API query may run before the database cuts it off (503);
    /// capped at `request_timeout`.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A client must send a request's headers within this, from their first byte.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no bytes moving is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A POST body must arrive within this once its headers are in (408 beyond).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    pub tokens: Vec<TokenSettings>,
    /// With no `tokens`, a development token (both scopes) is kept in this
    /// file, created with mode 0600 on first start; "" disables it.
    pub dev_token_file: PathBuf,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            default_limit: 200,
            max_limit: 1000,
            max_offset: 10_000,
            pool_size: 4,
            statement_timeout: Duration::from_secs(5),
            body_limit: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(5),
            max_connections: 512,
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
pub struct TokenSettings {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 digest of the token (`smsrelay token new` prints it).
    pub sha256: Option<String>,
    /// A file holding the token itself.
    pub token_file: Option<PathBuf>,
    /// A systemd credential holding the token itself.
    pub credential: Option<String>,
}

impl ApiSettings {
    /// The statement timeout the API's pools apply: a query never outlives
    /// the request waiting for it.
    pub fn effective_statement_timeout(&self) -> Duration {
        self.statement_timeout.min(self.request_timeout)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_limit == 0 {
            return Err(invalid("api.max_limit", "must be at least 1"));
        }
        if self.default_limit == 0 || self.default_limit > self.max_limit {
            return Err(invalid(
                "api.default_limit",
                "must be between 1 and api.max_limit",
            ));
        }
        if self.max_offset > crate::api::sms::MAX_OFFSET {
            return Err(invalid(
                "api.max_offset",
                format!("must be at most {}", crate::api::sms::MAX_OFFSET),
            ));
        }
        if self.pool_size == 0 {
            return Err(invalid("api.pool_size", "must be at least 1"));
        }
        if self.statement_timeout.is_zero() {
            return Err(invalid("api.statement_timeout", "must be more than 0s"));
        }
        if self.body_limit < 256 {
            return Err(invalid("api.body_limit", "must be at least 256 bytes"));
        }
        for (key, timeout) in [
            ("api.request_timeout", self.request_timeout),
            ("api.header_read_timeout", self.header_read_timeout),
            ("api.idle_timeout", self.idle_timeout),
            ("api.body_read_timeout", self.body_read_timeout),
        ] {
            if timeout.is_zero() {
                return Err(invalid(key, "must be more than 0s"));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("api.max_connections", "must be at least 1"));
        }
        for (i, token) in self.tokens.iter().enumerate() {
            token.validate(i, &self.tokens[..i])?;
        }
        Ok(())
    }
}

impl TokenSettings {
    /// Checks the `i`th entry of `[[api.tokens]]`, which follows `earlier`.
    fn validate(&self, i: usize, earlier: &[TokenSettings]) -> Result<(), ConfigError> {
        let key = |field: &str| format!("api.tokens[{i}].{field}");
        if self.name.trim().is_empty() {
            return Err(invalid(key("name"), "must not be empty"));
        }
        if earlier.iter().any(|t| t.name == self.name) {
            return Err(invalid(
                key("name"),
                format!("{:?} is used twice", self.name),
            ));
        }
        if self.scopes.is_empty() {
            return Err(invalid(
                key("scopes"),
                "must list at least one of \"sms:read\", \"sms:send\"",
            ));
        }
        let sources = [
            self.sha256.is_some(),
            self.token_file.is_some(),
            self.credential.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(
                format!("api.tokens[{i}]"),
                "needs exactly one of sha256, token_file, credential",
            ));
        }
        if let Some(digest) = &self.sha256
            && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(
                key("sha256"),
                "must be 64 hex digits (smsrelay token new prints one)",
            ));
        }
        Ok(())
    }
}
