//! The webhook's optional request template: a body with `{{placeholders}}`,
//! parsed once at load time (an unknown placeholder is a config error), each
//! value escaped for the body's content type when a message is sent.

use crate::config::{ConfigError, invalid};

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The number, E.164 (`+254712345678`).
    To,
    /// The text.
    Message,
    /// Our message id.
    Id,
    /// The attempt number, from 1.
    Attempt,
    /// the same as the `Idempotency-Key` header.
    IdempotencyKey,
}

impl Field {
    /// Every placeholder, as written in a template.
    pub const ALL: [(&'static str, Field); 5] = [
        ("to", Field::To),
        ("message", Field::Message),
        ("id", Field::Id),
        ("attempt", Field::Attempt),
        ("idempotency_key", Field::IdempotencyKey),
    ];
}

/// How values are escaped: by the body's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON string escaping (the template supplies the quotes).
    Json,
    /// `application/x-www-form-urlencoded` percent-encoding.
    Form,
}

impl Encoding {
    /// The encoding of a content type (parameters such as `; charset=utf-8` allowed).
    pub fn of(content_type: &str) -> Option<Encoding> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json" => Some(Encoding::Json),
            "application/x-www-form-urlencoded" => Some(Encoding::Form),
            _ => None,
        }
    }

    fn escape(self, value: &str, out: &mut String) {
        match self {
            Encoding::Json => {
                // serde_json's string form without its surrounding quotes.
                let quoted = serde_json::Value::String(value.to_owned()).to_string();
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
            Encoding::Form => out.extend(form_urlencoded::byte_serialize(value.as_bytes())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Field),
}

/// A parsed body template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    encoding: Encoding,
}

/// The values of one send.
pub struct Values<'a> {
    pub to: &'a str,
    pub message: &'a str,
    pub id: i64,
    pub attempt: u32,
    /// The message's `Idempotency-Key` ([`crate::provider::OutboundSms::idempotency_key`]).
    pub idempotency_key: &'a str,
}

impl Template {
    /// Parses `body`; `key` names it in errors. A JSON template must be JSON
    /// once filled in.
    pub fn parse(key: &str, body: &str, encoding: Encoding) -> Result<Template, ConfigError> {
        let mut parts = Vec::new();
        let mut rest = body;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(invalid(key, "has a `{{` without its closing `}}`"));
            };
            let name = after[..end].trim();
            let field = Field::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    let known: Vec<String> = Field::ALL
                        .iter()
                        .map(|(n, _)| format!("{{{{{n}}}}}"))
                        .collect();
                    invalid(
                        key,
                        format!(
                            "unknown placeholder {{{{{name}}}}} (known: {})",
                            known.join(", ")
                        ),
                    )
                })?;
            parts.push(Part::Value(field));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let template = Template { parts, encoding };
        if encoding == Encoding::Json {
            let sample = template.render(&Values {
                to: "+254712345678",
                message: "a \"quoted\" text\nwith a new line",
                id: 1,
                attempt: 1,
                idempotency_key: "sms-1-0123456789abcdef0123456789abcdef",
            });
            serde_json::from_str::<serde_json::Value>(&sample).map_err(|e| {
                invalid(
                    key,
                    format!(
                        "is not valid JSON once filled in ({e}); placeholders go inside quotes"
                    ),
                )
            })?;
        }
        Ok(template)
    }

    /// The body for one send, every value escaped.
    pub fn render(&self, values: &Values<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(field) => {
                    let value = match field {
                        Field::To => values.to.to_owned(),
                        Field::Message => values.message.to_owned(),
                        Field::Id => values.id.to_string(),
                        Field::Attempt => values.attempt.to_string(),
                        Field::IdempotencyKey => values.idempotency_key.to_owned(),
                    };
                    self.encoding.escape(&value, &mut out);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values<'static> {
        Values {
            to: "+254712345678",
            message: "Say \"hi\" & 100% ✓\n",
            id: 42,
            attempt: 3,
            idempotency_key: "sms-42-0123456789abcdef0123456789abcdef",
        }
    }

    #[test]
    fn json_values_are_escaped_as_json_strings() {
        let t = Template::parse(
            "k",
            r#"{"msisdn": "{{to}}", "text": "{{ message }}", "ref": "{{idempotency_key}}", "try": {{attempt}}}"#,
            Encoding::Json,
        )
        .unwrap();
        let body = t.render(&values());
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"msisdn": "+254712345678", "text": "Say \"hi\" & 100% ✓\n", "ref": "sms-42-0123456789abcdef0123456789abcdef", "try": 3})
        );
    }

    #[test]
    fn form_values_are_percent_encoded() {
        let t =
            Template::parse("k", "to={{to}}&text={{message}}&id={{id}}", Encoding::Form).unwrap();
        assert_eq!(
            t.render(&values()),
            "to=%2B254712345678&text=Say+%22hi%22+%26+100%25+%E2%9C%93%0A&id=42"
        );
    }

    #[test]
    fn unknown_or_unclosed_placeholders_and_bad_json_are_refused_naming_the_key() {
        for (body, needle) in [
            ("to={{phone}}", "unknown placeholder {{phone}}"),
            ("to={{to", "without its closing"),
        ] {
            let e = Template::parse("provider.webhook.body", body, Encoding::Form)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("provider.webhook.body") && e.contains(needle),
                "{e}"
            );
        }
        let e = Template::parse(
            "provider.webhook.body",
            r#"{"text": {{message}}}"#,
            Encoding::Json,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn content_types_pick_the_encoding() {
        assert_eq!(
            Encoding::of("application/json; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::of("application/x-www-form-urlencoded"),
            Some(Encoding::Form)
        );
        assert_eq!(Encoding::of("text/plain"), None);
    }
}
