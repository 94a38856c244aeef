//! The configuration loader, knowing nothing of what it loads: serde defaults,
//! then the TOML file, then `SMSRELAY_<SECTION>__<KEY>` environment variables,
//! deserialised into whatever settings type the caller names. Each part of the
//! daemon owns its section's type and checks; [`crate::settings::Config`]
//! gathers them. Every key is described in `config/smsrelay.toml`.
//!
//! Only variables with the `__` section separator after the prefix are read:
//! `SMSRELAY_BIN` or `SMSRELAY_HOME`, set by scripts for their own use, are
//! ignored. A variable that is read but names no setting, or holds a bad
//! value, is an error that names the variable.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Environment variables starting with this are settings.
pub const ENV_PREFIX: &str = "SMSRELAY_";
/// Separates sections from keys in a variable name: `SMSRELAY_DATABASE__POOL_SIZE`.
pub const ENV_SEPARATOR: &str = "__";

/// A configuration problem, naming the key, the file or the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {variable}: {message}")]
    Environment { variable: String, message: String },
    #[error("{0}")]
    Load(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// A bad value at `key`.
pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// One `SMSRELAY_*__*` variable as a setting.
struct EnvSetting {
    variable: String,
    /// The dotted key, e.g. `database.pool_size`.
    key: String,
    value: String,
}

/// Loads `T` from its defaults, then `file` (if any), then the process environment.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    load_from(file, std::env::vars_os())
}

/// [`load`] with the environment given (tests pass their own).
pub fn load_from<T: DeserializeOwned>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<T, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.to_owned()));
        }
        let source = config::File::from(path).format(config::FileFormat::Toml);
        // The file alone first, so that its mistakes are reported as its own.
        deserialize::<T>(config::Config::builder().add_source(source.clone())).map_err(
            |message| ConfigError::File {
                path: path.to_owned(),
                message,
            },
        )?;
        builder = builder.add_source(source);
    }
    for setting in env_settings(env)? {
        // Each variable alone over the defaults: a bad one is named, not blamed on the whole.
        let alone = config::Config::builder()
            .set_override(setting.key.as_str(), setting.value.as_str())
            .map_err(|e| env_error(&setting, &e.to_string()))?;
        deserialize::<T>(alone).map_err(|message| env_error(&setting, &message))?;
        builder = builder
            .set_override(setting.key.as_str(), setting.value)
            .map_err(|e| ConfigError::Load(e.to_string()))?;
    }
    deserialize::<T>(builder).map_err(ConfigError::Load)
}

fn deserialize<T: DeserializeOwned>(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<T, String> {
    builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| e.to_string())
}

/// The error for a variable whose setting did not deserialise.
fn env_error(setting: &EnvSetting, message: &str) -> ConfigError {
    // serde's wording for a key no settings type declares; other messages name the key.
    let message = if message.starts_with("unknown field") {
        "no such setting".to_owned()
    } else {
        message.to_owned()
    };
    ConfigError::Environment {
        variable: setting.variable.clone(),
        message,
    }
}

/// The `SMSRELAY_<SECTION>__<KEY>` variables, as dotted lower-case keys.
fn env_settings(
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<EnvSetting>, ConfigError> {
    let mut settings = Vec::new();
    for (name, value) in env {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains(ENV_SEPARATOR) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::Environment {
            variable: name.to_owned(),
            message: "is not valid UTF-8".into(),
        })?;
        let segments: Vec<String> = rest.split(ENV_SEPARATOR).map(str::to_lowercase).collect();
        // Setting names are snake_case words; anything else cannot name one.
        let well_formed = segments.iter().all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if !well_formed {
            return Err(ConfigError::Environment {
                variable: name.to_owned(),
                message: "no such setting".into(),
            });
        }
        let key = segments.join(".");
        settings.push(EnvSetting {
            variable: name.to_owned(),
            key,
            value,
        });
    }
    // The same order whatever the environment's: later overrides are predictable.
    settings.sort_by(|a, b| a.variable.cmp(&b.variable));
    Ok(settings)
}

/// Settings as TOML, for `check-config` (secrets serialise as `"[redacted]"`).
pub fn to_toml<T: Serialize>(settings: &T) -> String {
    toml::to_string_pretty(settings).unwrap_or_else(|e| format!("# cannot render: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        database: Database,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Database {
        pool_size: u32,
    }

    impl Default for Database {
        fn default() -> Self {
            Database { pool_size: 10 }
        }
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn variables_override_defaults() {
        let s: Settings = load_from(None, env(&[("SMSRELAY_DATABASE__POOL_SIZE", "3")])).unwrap();
        assert_eq!(s.database.pool_size, 3);
    }

    #[test]
    fn variables_without_the_separator_are_not_settings() {
        let s: Settings = load_from(
            None,
            env(&[("SMSRELAY_BIN", "/usr/bin/smsrelay"), ("OTHER__X", "1")]),
        )
        .unwrap();
        assert_eq!(s.database.pool_size, 10);
    }

    #[test]
    fn an_unknown_variable_is_named() {
        let e =
            load_from::<Settings>(None, env(&[("SMSRELAY_DATABASE__POOL_SIZ", "3")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable SMSRELAY_DATABASE__POOL_SIZ: no such setting"
        );
    }

    #[test]
    fn a_malformed_variable_name_is_no_setting() {
        for name in [
            "SMSRELAY_DATABASE__",
            "SMSRELAY___POOL_SIZE",
            "SMSRELAY_DATA-BASE__POOL_SIZE",
        ] {
            let e = load_from::<Settings>(None, env(&[(name, "3")])).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("environment variable {name}: no such setting")
            );
        }
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_key() {
        let e = load_from::<Settings>(None, env(&[("SMSRELAY_DATABASE__POOL_SIZE", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("environment variable SMSRELAY_DATABASE__POOL_SIZE: invalid type"),
            "{e}"
        );
        assert!(e.contains("`database.pool_size`"), "{e}");
    }
}
