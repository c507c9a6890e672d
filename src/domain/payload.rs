//! What a client asks for: the number to call, the script, and free-form metadata.

use serde_json::{Map, Value};

use super::PhoneNumber;

/// Longest accepted `scriptId`.
pub const MAX_SCRIPT_ID_LEN: usize = 128;
/// Largest accepted `metadata`, as compact JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// One problem with one field of a request, for the error envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A script identifier: 1 to 128 characters of letters, digits, `_ - . :`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptId(String);

impl ScriptId {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("must not be empty");
        }
        if raw.len() > MAX_SCRIPT_ID_LEN {
            return Err("must be at most 128 characters");
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return Err("may hold only letters, digits and _ - . :");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For rows read back from the database, which only ever stores parsed ids.
    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }
}

/// A valid call request: what the dispatcher sends to the provider.
#[derive(Clone, Debug, PartialEq)]
pub struct CallPayload {
    pub to: PhoneNumber,
    pub script_id: ScriptId,
    pub metadata: Map<String, Value>,
}

impl CallPayload {
    /// Checks every field and reports every problem, not just the first.
    pub fn parse(
        to: Option<&str>,
        script_id: Option<&str>,
        metadata: Option<&Value>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let to = match to.map(PhoneNumber::parse) {
            Some(Ok(to)) => Some(to),
            Some(Err(err)) => {
                errors.push(FieldError::new("to", format!("`to` {err}")));
                None
            }
            None => {
                errors.push(FieldError::new("to", "`to` is required"));
                None
            }
        };
        let script_id = match script_id.map(ScriptId::parse) {
            Some(Ok(id)) => Some(id),
            Some(Err(err)) => {
                errors.push(FieldError::new("scriptId", format!("`scriptId` {err}")));
                None
            }
            None => {
                errors.push(FieldError::new("scriptId", "`scriptId` is required"));
                None
            }
        };
        let metadata = match metadata {
            None | Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(map)) => match check_metadata(map) {
                Ok(()) => Some(map.clone()),
                Err(message) => {
                    errors.push(FieldError::new("metadata", message));
                    None
                }
            },
            Some(_) => {
                errors.push(FieldError::new(
                    "metadata",
                    "`metadata` must be a JSON object",
                ));
                None
            }
        };
        match (to, script_id, metadata) {
            (Some(to), Some(script_id), Some(metadata)) if errors.is_empty() => Ok(Self {
                to,
                script_id,
                metadata,
            }),
            _ => Err(errors),
        }
    }

    /// Parses the JSON form (`{"to", "scriptId", "metadata"}`), rejecting unknown fields and
    /// wrong types; used for merge-patched payloads.
    pub fn from_json(value: &Value) -> Result<Self, Vec<FieldError>> {
        let Value::Object(object) = value else {
            return Err(vec![FieldError::new(
                "payload",
                "`payload` must be a JSON object",
            )]);
        };
        let mut errors: Vec<FieldError> = object
            .keys()
            .filter(|k| !matches!(k.as_str(), "to" | "scriptId" | "metadata"))
            .map(|k| {
                FieldError::new(
                    k.clone(),
                    format!("`{k}` is not a field of a call payload (to, scriptId, metadata)"),
                )
            })
            .collect();
        let string = |field: &str, errors: &mut Vec<FieldError>| match object.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push(FieldError::new(
                    field,
                    format!("`{field}` must be a string"),
                ));
                Some(String::new())
            }
        };
        let to = string("to", &mut errors);
        let script_id = string("scriptId", &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Self::parse(to.as_deref(), script_id.as_deref(), object.get("metadata"))
    }

    /// The JSON form shown to clients and merge-patched by `PATCH`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "to": self.to.as_str(),
            "scriptId": self.script_id.as_str(),
            "metadata": self.metadata,
        })
    }
}

fn check_metadata(map: &Map<String, Value>) -> Result<(), String> {
    let size = serde_json::to_vec(map)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(format!(
            "`metadata` is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are allowed"
        ));
    }
    // PostgreSQL's jsonb cannot hold U+0000; refuse it here rather than fail on insert.
    if contains_nul(&Value::Object(map.clone())) {
        return Err("`metadata` must not contain the character U+0000".into());
    }
    Ok(())
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Applies an RFC 7396 JSON Merge Patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_problem_is_reported() {
        let errors = CallPayload::parse(Some("123"), Some(""), Some(&json!([1]))).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["to", "scriptId", "metadata"]);
    }

    #[test]
    fn metadata_defaults_to_an_empty_object() {
        let payload = CallPayload::parse(Some("+14155550100"), Some("welcomeFlow"), None).unwrap();
        assert!(payload.metadata.is_empty());
    }

    #[test]
    fn script_ids() {
        assert!(ScriptId::parse("welcome_Flow-v2.1:a").is_ok());
        assert!(ScriptId::parse(&"a".repeat(128)).is_ok());
        assert!(ScriptId::parse(&"a".repeat(129)).is_err());
        assert!(ScriptId::parse("has space").is_err());
        assert!(ScriptId::parse("ümlaut").is_err());
        assert!(ScriptId::parse("").is_err());
    }

    #[test]
    fn metadata_is_limited_to_16_kib() {
        let fits = json!({"k": "x".repeat(MAX_METADATA_BYTES - 8)});
        assert!(CallPayload::parse(Some("+14155550100"), Some("s"), Some(&fits)).is_ok());
        let too_big = json!({"k": "x".repeat(MAX_METADATA_BYTES)});
        assert!(CallPayload::parse(Some("+14155550100"), Some("s"), Some(&too_big)).is_err());
    }

    #[test]
    fn metadata_may_not_hold_nul() {
        for bad in [
            json!({"a": "x\u{0}"}),
            json!({"a\u{0}": 1}),
            json!({"a": [{"b": "\u{0}"}]}),
        ] {
            assert!(CallPayload::parse(Some("+14155550100"), Some("s"), Some(&bad)).is_err());
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc =
            json!({"to": "+14155550100", "scriptId": "a", "metadata": {"x": 1, "y": {"z": 2}}});
        merge_patch(
            &mut doc,
            &json!({"scriptId": "b", "metadata": {"x": null, "y": {"w": 3}}}),
        );
        assert_eq!(
            doc,
            json!({"to": "+14155550100", "scriptId": "b", "metadata": {"y": {"z": 2, "w": 3}}})
        );
        merge_patch(&mut doc, &json!({"metadata": null}));
        let payload = CallPayload::from_json(&doc).unwrap();
        assert!(payload.metadata.is_empty());
    }

    #[test]
    fn from_json_is_strict() {
        assert!(
            CallPayload::from_json(&json!({"to": "+14155550100", "scriptId": "a", "extra": 1}))
                .is_err()
        );
        assert!(CallPayload::from_json(&json!({"to": 14155550100u64, "scriptId": "a"})).is_err());
        assert!(CallPayload::from_json(&json!({"scriptId": "a"})).is_err());
        assert!(CallPayload::from_json(&json!("nope")).is_err());
    }
}
