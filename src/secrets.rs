//! Secret values and where they are read from: inline in the config, a
//! systemd credential (`LoadCredential=`), or a file. A [`Secret`] is never
//! printed: `Debug` and serialisation show `[redacted]`.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};

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

/// A secret given inline wins; otherwise read the systemd credential, if named.
/// `credential_key` is the config key naming the credential, for errors.
pub fn resolve_secret(
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
pub fn read_credential(key: &str, name: &str) -> Result<String, ConfigError> {
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
pub fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let value = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(value.trim_end_matches(['\r', '\n']).to_owned())
}
