//! What the generated OpenAPI document cannot say by itself: the exact input
//! rules, taken from the code that applies them (the message rule, the
//! `orderBy` names, the cursor form), so the document and the server agree.

use serde_json::{Value, json};

use super::settings::ApiSettings;
use super::sms::{CURSOR_PATTERN, MAX_IDEMPOTENCY_KEY, ORDER_BY, SORT_ORDER_PATTERN};
use crate::domain::Status;
use crate::domain::text::{message_pattern, printable_pattern};

/// Dates and instants the filters take: years 1000 to 9999 (checked in full by the server).
const YEAR_1000_TO_9999: &str = "^[1-9][0-9]{3}-";

/// Adds the input rules to the generated document, with the configured limits.
pub fn exact_input(document: &mut Value, config: &ApiSettings) {
    if let Some(parameters) = document
        .pointer_mut("/paths/~1sms/get/parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters {
            let name = parameter["name"].as_str().unwrap_or_default().to_owned();
            if let Some(schema) = list_parameter_schema(&name, config) {
                parameter["schema"] = schema;
            }
        }
    }
    if let Some(parameters) = document
        .pointer_mut("/paths/~1sms/post/parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters {
            if parameter["name"] == "Idempotency-Key" {
                parameter["schema"] = json!({
                    "type": "string",
                    "pattern": format!("^[!-~]{{1,{MAX_IDEMPOTENCY_KEY}}}$"),
                });
            }
        }
    }
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert("NewSmsRequest".into(), new_sms_request());
        let status = json!({"type": "string", "enum": status_names()});
        for (schema, property) in [
            ("SmsItem", "status"),
            ("StatusChange", "from"),
            ("StatusChange", "to"),
        ] {
            if let Some(properties) = schemas
                .get_mut(schema)
                .and_then(|s| s.get_mut("properties"))
                .and_then(Value::as_object_mut)
            {
                properties.insert(property.into(), status.clone());
            }
        }
    }
}

fn status_names() -> Vec<&'static str> {
    Status::ALL.iter().map(|s| s.as_str()).collect()
}

/// The schema of a `GET /sms` parameter, where the generated one is too loose.
fn list_parameter_schema(name: &str, config: &ApiSettings) -> Option<Value> {
    let date =
        |format: &str| json!({"type": "string", "format": format, "pattern": YEAR_1000_TO_9999});
    Some(match name {
        // As deep as api.max_offset allows; deeper pages use the cursor.
        "offset" => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": config.max_offset})
        }
        "limit" => json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": u32::MAX}),
        "orderBy" => {
            json!({"type": "string", "enum": ORDER_BY.iter().map(|(n, _)| *n).collect::<Vec<_>>()})
        }
        "sortOrder" => json!({"type": "string", "pattern": SORT_ORDER_PATTERN}),
        "status" => {
            let one = status_names().join("|");
            json!({
                "type": "array",
                "items": {"type": "string", "pattern": format!("^({one})(,({one}))*$")}
            })
        }
        "mobileNo" => json!({"type": "string", "pattern": printable_pattern()}),
        "createdFrom" | "createdTo" => json!({"anyOf": [date("date"), date("date-time")]}),
        "cursor" => json!({"type": "string", "pattern": CURSOR_PATTERN}),
        _ => return None,
    })
}

/// `POST /sms`: exactly one of `clientId` / `staffId`, and the message rule.
fn new_sms_request() -> Value {
    let id = |who: &str| {
        json!({
            "type": ["integer", "null"],
            "format": "int64",
            "minimum": 1,
            "description": format!("The {who}; the number is looked up in the platform's records."),
        })
    };
    json!({
        "type": "object",
        "description": "For a client OR a staff member (exactly one of clientId, staffId), never a raw number.",
        "properties": {
            "message": {
                "type": "string",
                "pattern": message_pattern(),
                "description": "At least one visible character; no control character but newline, tab and carriage return; at most validation.max_segments SMS segments.",
            },
            "clientId": id("client"),
            "staffId": id("staff member"),
        },
        "required": ["message"],
        "additionalProperties": false,
        "oneOf": [
            {"properties": {"clientId": {"type": "integer"}}, "required": ["clientId"]},
            {"properties": {"staffId": {"type": "integer"}}, "required": ["staffId"]},
        ],
    })
}
