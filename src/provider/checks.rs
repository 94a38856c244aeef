//! Checks that several provider sections make alike, each naming the key it
//! is about: a secret given inline or as a credential, an optional sender,
//! the public base URL of our callback routes with the secret that guards it.

use super::ProviderInstance;
use super::callback::{check_callback_secret, parse_http_url};
use crate::config::{ConfigError, invalid};
use crate::secrets::Secret;

/// `field` or `field_credential` must be set.
pub fn require_secret(
    instance: &ProviderInstance,
    field: &str,
    inline: &Option<Secret>,
    credential: &Option<String>,
) -> Result<(), ConfigError> {
    if inline.is_none() && credential.is_none() {
        return Err(invalid(
            instance.key(field),
            format!(
                "is required (or {})",
                instance.key(&format!("{field}_credential"))
            ),
        ));
    }
    Ok(())
}

/// An optional `from` may be left out but not empty; `default_sender` says
/// who sends when it is left out.
pub fn optional_sender(
    instance: &ProviderInstance,
    from: &Option<String>,
    default_sender: &str,
) -> Result<(), ConfigError> {
    match from {
        Some(from) if from.trim().is_empty() => Err(invalid(
            instance.key("from"),
            format!("must not be empty (leave it out to use {default_sender})"),
        )),
        _ => Ok(()),
    }
}

/// `base_key`, when set, is a base URL without query or fragment and needs
/// `callback_secret` (inline or as a credential); an inline secret must be
/// long and URL-safe.
pub fn callback_base(
    instance: &ProviderInstance,
    base_key: &str,
    base: &Option<String>,
    secret: &Option<Secret>,
    secret_credential: &Option<String>,
) -> Result<(), ConfigError> {
    let k = |field: &str| instance.key(field);
    if let Some(base) = base {
        let parsed = parse_http_url(&k(base_key), base)?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                k(base_key),
                "must be a base URL without query or fragment, e.g. https://sms.example.com",
            ));
        }
        if secret.is_none() && secret_credential.is_none() {
            return Err(invalid(
                k("callback_secret"),
                format!(
                    "is required when {} is set (or {})",
                    k(base_key),
                    k("callback_secret_credential")
                ),
            ));
        }
    }
    if let Some(secret) = secret {
        check_callback_secret(&k("callback_secret"), secret)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gateway() -> ProviderInstance {
        ProviderInstance {
            name: "gateway".into(),
            timeout: Duration::from_secs(10),
        }
    }

    fn message(result: Result<(), ConfigError>) -> String {
        result.expect_err("must be refused").to_string()
    }

    #[test]
    fn a_missing_secret_names_both_keys() {
        let e = message(require_secret(&gateway(), "api_key", &None, &None));
        assert!(e.contains("provider.gateway.api_key"), "{e}");
        assert!(e.contains("or provider.gateway.api_key_credential"), "{e}");
        assert!(require_secret(&gateway(), "api_key", &None, &Some("cred".into())).is_ok());
        assert!(require_secret(&gateway(), "api_key", &Some(Secret::new("k")), &None).is_ok());
    }

    #[test]
    fn an_empty_sender_is_refused_and_a_missing_one_is_not() {
        let e = message(optional_sender(
            &gateway(),
            &Some("  ".into()),
            "the default",
        ));
        assert!(e.contains("provider.gateway.from"), "{e}");
        assert!(e.contains("leave it out to use the default"), "{e}");
        assert!(optional_sender(&gateway(), &None, "the default").is_ok());
        assert!(optional_sender(&gateway(), &Some("BANK".into()), "the default").is_ok());
    }

    #[test]
    fn a_callback_base_needs_a_plain_url_and_a_secret() {
        let secret = Some(Secret::new("0123456789abcdef0123"));
        let base = |url: &str| Some(url.to_string());
        let with_query = message(callback_base(
            &gateway(),
            "dlr_url_base",
            &base("https://sms.example.com/?a=1"),
            &secret,
            &None,
        ));
        assert!(
            with_query.contains("provider.gateway.dlr_url_base"),
            "{with_query}"
        );
        let no_secret = message(callback_base(
            &gateway(),
            "dlr_url_base",
            &base("https://sms.example.com"),
            &None,
            &None,
        ));
        assert!(
            no_secret.contains("provider.gateway.callback_secret"),
            "{no_secret}"
        );
        assert!(
            no_secret.contains("when provider.gateway.dlr_url_base is set"),
            "{no_secret}"
        );
        let short = message(callback_base(
            &gateway(),
            "dlr_url_base",
            &None,
            &Some(Secret::new("short")),
            &None,
        ));
        assert!(short.contains("at least 16 characters"), "{short}");
        assert!(
            callback_base(
                &gateway(),
                "dlr_url_base",
                &base("https://sms.example.com"),
                &secret,
                &None
            )
            .is_ok()
        );
        assert!(callback_base(&gateway(), "dlr_url_base", &None, &None, &None).is_ok());
    }
}
