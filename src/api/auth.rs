//! Bearer tokens with scopes. Only SHA-256 digests are kept in memory, and a
//! presented token is compared against every digest in constant time.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiState;
use super::error::ApiError;
use super::settings::{ApiSettings, Scope};
use crate::config::{ConfigError, invalid};
use crate::secrets::{read_credential, read_secret_file};

/// A configured token: its name, scopes and digest.
#[derive(Clone)]
struct Known {
    name: String,
    scopes: Vec<Scope>,
    digest: [u8; 32],
}

/// Checks bearer tokens against `[[api.tokens]]`.
#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: Vec<Known>,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's configured name (safe to log).
    pub name: String,
    scopes: Vec<Scope>,
}

impl Caller {
    /// 403 unless the token carries `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(scope.as_str()))
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex of a digest.
pub fn to_hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Authenticator {
    /// Reads every token's digest (files and credentials are read once, now).
    pub fn from_settings(api: &ApiSettings) -> Result<Self, ConfigError> {
        let mut tokens = Vec::with_capacity(api.tokens.len());
        for (i, token) in api.tokens.iter().enumerate() {
            let digest = if let Some(hex) = &token.sha256 {
                parse_hex(hex).ok_or_else(|| {
                    invalid(format!("api.tokens[{i}].sha256"), "must be 64 hex digits")
                })?
            } else if let Some(path) = &token.token_file {
                let key = format!("api.tokens[{i}].token_file");
                let secret = read_secret_file(&key, path)?;
                if secret.is_empty() {
                    return Err(invalid(key, "the file is empty"));
                }
                sha256(secret.as_bytes())
            } else if let Some(name) = &token.credential {
                let key = format!("api.tokens[{i}].credential");
                let secret = read_credential(&key, name)?;
                if secret.is_empty() {
                    return Err(invalid(key, "the credential is empty"));
                }
                sha256(secret.as_bytes())
            } else {
                return Err(invalid(
                    format!("api.tokens[{i}]"),
                    "needs one of sha256, token_file, credential",
                ));
            };
            tokens.push(Known {
                name: token.name.clone(),
                scopes: token.scopes.clone(),
                digest,
            });
        }
        Ok(Self { tokens })
    }

    /// The caller a presented token belongs to, if any.
    pub fn verify(&self, presented: &str) -> Option<Caller> {
        let digest = sha256(presented.as_bytes());
        // Look at every entry so timing does not tell which one matched.
        let mut found = None;
        for known in &self.tokens {
            if bool::from(known.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(Caller {
                    name: known.name.clone(),
                    scopes: known.scopes.clone(),
                });
            }
        }
        found
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(AUTHORIZATION).iter();
        let header = values
            .next()
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        // Which of two tokens would count is ambiguous: refuse rather than pick one.
        if values.next().is_some() {
            return Err(ApiError::parameter(
                "Authorization",
                None,
                "Authorization is given more than once",
            ));
        }
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        state.auth.verify(token).ok_or_else(ApiError::unauthorized)
    }
}

/// Name of the development token in logs and idempotency keys.
pub const DEV_TOKEN_NAME: &str = "dev";

/// Reads the development token from `path`, creating it (mode 0600) on first
/// start. Used only when no `[[api.tokens]]` are configured, so that a first
/// run can call the API at once; the token itself is never logged.
pub fn dev_token(path: &std::path::Path) -> Result<Authenticator, ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = "api.dev_token_file";
    let token = match std::fs::read_to_string(path) {
        Ok(existing) => existing.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (token, _) = new_token();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| invalid(key, format!("cannot create {}: {e}", path.display())))?;
            writeln!(file, "{token}")
                .map_err(|e| invalid(key, format!("cannot write {}: {e}", path.display())))?;
            token
        }
        Err(e) => return Err(invalid(key, format!("cannot read {}: {e}", path.display()))),
    };
    if token.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(Authenticator {
        tokens: vec![Known {
            name: DEV_TOKEN_NAME.into(),
            scopes: vec![Scope::Read, Scope::Send],
            digest: sha256(token.as_bytes()),
        }],
    })
}

/// A fresh random token and its hex SHA-256 digest.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "smsr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = to_hex(&sha256(token.as_bytes()));
    (token, digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::settings::TokenSettings;

    #[test]
    fn verifies_by_digest_and_keeps_scopes() {
        let (token, digest) = new_token();
        let api = ApiSettings {
            tokens: vec![TokenSettings {
                name: "platform".into(),
                scopes: vec![Scope::Read],
                sha256: Some(digest),
                token_file: None,
                credential: None,
            }],
            ..ApiSettings::default()
        };
        let auth = Authenticator::from_settings(&api).unwrap();
        let caller = auth.verify(&token).unwrap();
        assert_eq!(caller.name, "platform");
        assert!(caller.require(Scope::Read).is_ok());
        assert!(caller.require(Scope::Send).is_err());
        assert!(auth.verify("smsr_wrong").is_none());
        assert!(auth.verify(&token[..token.len() - 1]).is_none());
    }
}
